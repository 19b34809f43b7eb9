"""The conformance kit: what any backend's TargetModel must do for speculative decoding to be
lossless on it, checked through the interface alone (models/backends/interface.py).

Each check compares logits (or a method's tokens) that must agree: a prefill plus decode steps
against one longer prefill, a chain verified in one call against the same tokens decoded one at
a time, a rolled-back cache against a fresh one, a token tree verified in one pass (then
compacted) against each path decoded as a chain, a row of a batch against the same row alone,
and every method's output against the backend's own target-only output. A backend that declares
batch_invariant must agree bit for bit; any other is held to the near-tie rule
(models/common/correctness.py): logits within the tolerance of each other, or a different token
only where the reference's top-2 margin is below it; every divergence is listed with its
position, its largest difference and the margin. Non-finite logits are always a mismatch.

Sequences stay within 64 tokens, so a block never leaves the CPU kernels' batch-invariant range.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import torch

from models.backends.interface import Cache, RowBlock, TargetModel
from models.common.correctness import HALF_PRECISION_TIE_TOLERANCE, compare, top2_margin
from models.common.errors import UserError
from models.common.ops import SKINNY_MAX_ROWS

EXACT, NEAR_TIE, MISMATCH, NOT_RUN = "exact", "near-tie", "mismatch", "not run"
SEQUENCE_ROWS = SKINNY_MAX_ROWS  # the longest block a check runs (the runner's largest traced block)
PROMPTS = (
    "The quick brown fox jumps over the lazy dog. The quick brown fox",
    "def add(a, b):\n    return a + b\n\ndef add(",
    "Speculative decoding drafts tokens and verifies them in one pass; speculative",
)


@dataclasses.dataclass
class CheckResult:
    """One check's verdicts: how many compared positions (or prompts) were exact, near ties or
    mismatches, with a note per divergence; `skipped` says why a check did not run."""

    check: str
    counts: dict[str, int] = dataclasses.field(
        default_factory=lambda: {EXACT: 0, NEAR_TIE: 0, MISMATCH: 0, NOT_RUN: 0})
    notes: list[str] = dataclasses.field(default_factory=list)
    skipped: str | None = None

    @property
    def ok(self) -> bool:
        return self.skipped is not None or self.counts[MISMATCH] == 0

    def add(self, verdict: str, note: str | None = None) -> None:
        self.counts[verdict] += 1
        if note is not None:
            self.notes.append(note)


@dataclasses.dataclass(frozen=True)
class Rule:
    """How two logit rows (reference, candidate) are judged for this backend."""

    exact: bool  # the backend declares batch_invariant: bit-identical or a mismatch
    tolerance: float = HALF_PRECISION_TIE_TOLERANCE

    @classmethod
    def of(cls, target: TargetModel) -> Rule:
        return cls(exact=target.capabilities.batch_invariant)

    def judge(self, reference: torch.Tensor, candidate: torch.Tensor) -> tuple[str, float]:
        """The verdict on two logit rows [V], and the reference's top-2 margin."""
        margin = top2_margin(reference)
        if not (torch.isfinite(reference).all() and torch.isfinite(candidate).all()):
            return MISMATCH, margin
        if torch.equal(reference, candidate):
            return EXACT, margin
        if self.exact:
            return MISMATCH, margin
        if int(reference.argmax()) == int(candidate.argmax()):
            close = float((reference - candidate).abs().max()) <= self.tolerance
            return (NEAR_TIE if close else MISMATCH), margin
        return (NEAR_TIE if margin < self.tolerance else MISMATCH), margin


def _judge_rows(result: CheckResult, rule: Rule, reference: torch.Tensor, candidate: torch.Tensor,
                where: Callable[[int], str]) -> None:
    """Judge each row; a note for every mismatch and every changed token, one line for rows that
    are merely close (the same token, logits within the tolerance)."""
    close, largest = 0, 0.0
    for i in range(reference.shape[0]):
        verdict, margin = rule.judge(reference[i], candidate[i])
        diff = float((reference[i] - candidate[i]).abs().max())
        if verdict == NEAR_TIE and int(reference[i].argmax()) == int(candidate[i].argmax()):
            close, largest = close + 1, max(largest, diff)
            result.add(verdict)
            continue
        note = None if verdict == EXACT else (
            f"{where(i)}: {verdict}, max |diff| {diff:.3g}, top-2 margin {margin:.4f}")
        result.add(verdict, note)
    if close:
        result.notes.append(f"{close} rows with the same token and logits within {largest:.3g} of the reference's")


def _ids(target: TargetModel, tokens: list[int]) -> torch.Tensor:
    return torch.tensor([tokens], dtype=torch.int64, device=target.device)


def _feed(target: TargetModel, cache: Cache, tokens: list[int], one_at_a_time: bool) -> torch.Tensor:
    """Feed tokens after the cache's entries; logits [n, V] after each (one call, or one per token)."""
    if not one_at_a_time:
        return target(_ids(target, tokens), cache, cache.length)[0].float()
    return torch.cat([target(_ids(target, [t]), cache, cache.length)[0].float() for t in tokens])


def greedy_continuation(target: TargetModel, prompt: list[int], n: int) -> list[int]:
    cache = target.new_cache(len(prompt) + n + 1)
    logits = target(_ids(target, prompt), cache, 0, logits_for="last")[0, -1]
    out = []
    for _ in range(n):
        out.append(int(logits.argmax()))
        logits = target(_ids(target, out[-1:]), cache, cache.length)[0, -1]
    return out


def check_reference(target: TargetModel, reference: Callable[[list[int]], torch.Tensor],
                    prompts: list[list[int]]) -> CheckResult:
    """An anchor outside the backend: its logits over each prompt against another implementation's
    (transformers' on the same weights: reference(tokens) -> [T, V]), always under the near-tie
    rule. Every other check compares the backend with itself, which a degenerate model passes."""
    result, rule = CheckResult("prefill = reference model"), Rule(exact=False)
    for p, prompt in enumerate(prompts):
        logits = target(_ids(target, prompt), target.new_cache(len(prompt)), 0)[0].float()
        expected = reference(prompt).float().to(logits.device)
        _judge_rows(result, rule, expected, logits, lambda i, p=p: f"prompt {p}, position {i}")
    return result


def check_prefill_decode(target: TargetModel, prompts: list[list[int]], n_decode: int = 12) -> CheckResult:
    """Logits after each of a prefill's last token and n decode steps equal one longer prefill's."""
    result, rule = CheckResult("prefill + decode = one prefill"), Rule.of(target)
    for p, prompt in enumerate(prompts):
        tokens = prompt + greedy_continuation(target, prompt, n_decode)
        stepwise = target.new_cache(len(tokens))
        first = target(_ids(target, prompt), stepwise, 0, logits_for="last")[0].float()
        decoded = torch.cat([first, _feed(target, stepwise, tokens[len(prompt):], one_at_a_time=True)])[:-1]
        whole = target(_ids(target, tokens), target.new_cache(len(tokens)), 0)[0].float()[len(prompt) - 1 : -1]
        _judge_rows(result, rule, whole, decoded, lambda i, p=p: f"prompt {p}, position {len(prompt) + i}")
    return result


def check_chain_verify(target: TargetModel, prompts: list[list[int]], k: int = 5) -> CheckResult:
    """k tokens verified in one call after the prompt equal the same tokens decoded one at a time."""
    result, rule = CheckResult("chain verify = decode steps"), Rule.of(target)
    for p, prompt in enumerate(prompts):
        chain = greedy_continuation(target, prompt, k)
        logits = {}
        for one_at_a_time in (True, False):
            cache = target.new_cache(len(prompt) + k)
            target(_ids(target, prompt), cache, 0, logits_for="last")
            logits[one_at_a_time] = _feed(target, cache, chain, one_at_a_time)
        _judge_rows(result, rule, logits[True], logits[False], lambda i, p=p: f"prompt {p}, chain token {i}")
    return result


def check_rollback(target: TargetModel, prompts: list[list[int]], n_decode: int = 6, keep: int = 2) -> CheckResult:
    """Decode, roll back to `keep` generated tokens, decode other tokens: the same logits as a fresh
    cache that never saw the rolled-back ones (same call shapes)."""
    result, rule = CheckResult("rollback then redecode"), Rule.of(target)
    for p, prompt in enumerate(prompts):
        generated = greedy_continuation(target, prompt, n_decode)
        others = [(t + 1) % target.vocab_size for t in generated[keep:]]  # tokens the cache never held
        cache = target.new_cache(len(prompt) + 2 * n_decode)
        target(_ids(target, prompt), cache, 0, logits_for="last")
        _feed(target, cache, generated, one_at_a_time=True)
        cache.rollback(len(prompt) + keep)
        after = _feed(target, cache, others, one_at_a_time=True)
        fresh = target.new_cache(len(prompt) + 2 * n_decode)
        target(_ids(target, prompt), fresh, 0, logits_for="last")
        _feed(target, fresh, generated[:keep], one_at_a_time=True)
        reference = _feed(target, fresh, others, one_at_a_time=True)
        _judge_rows(result, rule, reference, after,
                    lambda i, p=p: f"prompt {p}, position {len(prompt) + keep + i} after rollback")
    return result


# A small tree under the root r (block row 0): r -> a, r -> b, a -> c, b -> d, c -> e.
TREE_PARENTS = (-1, 0, 0, 1, 2, 3)  # block row -> parent row (-1: the root)


def tree_mask(parents: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """Ancestor mask [n, n] (self included) and depths [n] of a tree given by parent rows."""
    n = len(parents)
    mask = torch.zeros(n, n, dtype=torch.bool)
    depth = torch.zeros(n, dtype=torch.int64)
    for i, parent in enumerate(parents):
        mask[i, i] = True
        if parent >= 0:
            mask[i] |= mask[parent]
            depth[i] = depth[parent] + 1
    return mask, depth


def path_to(row: int, parents: tuple[int, ...]) -> list[int]:
    path = []
    while row >= 0:
        path.append(row)
        row = parents[row]
    return path[::-1]


def check_tree(target: TargetModel, prompts: list[list[int]]) -> CheckResult:
    """A tree verified in one pass: each node's logits equal its path decoded as a chain; after
    keeping one path (compact) the next token's logits equal the chain's."""
    result, rule = CheckResult("tree in one pass = each path"), Rule.of(target)
    if not target.capabilities.tree_masks:
        result.skipped = "the backend verifies chains only (tree_masks not declared)"
        return result
    mask, depth = tree_mask(TREE_PARENTS)
    for p, prompt in enumerate(prompts):
        root = greedy_continuation(target, prompt, 1)[0]
        block = [root] + [(root + 7 * i) % target.vocab_size for i in range(1, len(TREE_PARENTS))]
        start = len(prompt)
        cache = target.new_cache(start + 2 * len(block))
        target(_ids(target, prompt), cache, 0, logits_for="last")
        tree_logits = target(_ids(target, block), cache, start, positions=(start + depth).to(target.device),
                             tree_mask=mask.to(target.device))[0].float()
        leaf = len(TREE_PARENTS) - 1
        for row in range(len(block)):
            chain = [block[r] for r in path_to(row, TREE_PARENTS)]
            fresh = target.new_cache(start + len(chain) + 1)
            target(_ids(target, prompt), fresh, 0, logits_for="last")
            reference = _feed(target, fresh, chain, one_at_a_time=False)[-1:]
            _judge_rows(result, rule, reference, tree_logits[row : row + 1],
                        lambda i, p=p, row=row: f"prompt {p}, tree node {row}")
            if row == leaf:  # keep the deepest path, then decode one more token after it
                keep = path_to(leaf, TREE_PARENTS)
                cache.compact(start, keep)
                nxt = int(reference[-1].argmax())
                after = _feed(target, cache, [nxt], one_at_a_time=True)
                reference_next = _feed(target, fresh, [nxt], one_at_a_time=True)
                _judge_rows(result, rule, reference_next, after, lambda i, p=p: f"prompt {p}, token after compaction")
    return result


def check_batched_rows(target: TargetModel, prompts: list[list[int]]) -> CheckResult:
    """Sequences of different lengths in one forward_rows call (a decode step, a chain, a tree):
    each row's logits equal the same block run alone."""
    result, rule = CheckResult("row batched = row alone"), Rule.of(target)
    if not target.capabilities.batch_rows:
        result.skipped = "the backend runs one sequence per call (batch_rows not declared)"
        return result
    shapes = [(1, None), (3, None), (3, (-1, 0, 0))]  # (block length, tree parents) per row
    if not target.capabilities.tree_masks:
        shapes[2] = (3, None)
    rows = min(len(prompts), len(shapes))
    batch = target.new_cache(max(len(p) for p in prompts) + 4, batch_size=rows)
    blocks, tokens, alone = [], [], []
    for b in range(rows):
        prompt, (n, parents) = prompts[b], shapes[b]
        block = greedy_continuation(target, prompt, n)
        positions, mask = None, None
        if parents is not None:
            mask, depth = tree_mask(parents)
            positions, mask = (len(prompt) + depth).to(target.device), mask.to(target.device)
        row = batch.row(b)
        target(_ids(target, prompt), row, 0, logits_for="last")
        blocks.append(RowBlock(row, n, positions, mask))
        tokens.extend(block)
        single = target.new_cache(len(prompt) + n)
        target(_ids(target, prompt), single, 0, logits_for="last")
        tree = {} if parents is None else {"positions": positions, "tree_mask": mask}
        alone.append(target(_ids(target, block), single, len(prompt), **tree)[0].float())
    batched = target.forward_rows(torch.tensor(tokens, device=target.device), blocks, batch).float()
    lo = 0
    for b, reference in enumerate(alone):
        _judge_rows(result, rule, reference, batched[lo : lo + len(reference)],
                    lambda i, b=b: f"row {b} (block of {len(alone[b])}), token {i}")
        lo += len(reference)
    return result


def check_methods(engines: dict[str, Callable[[], object]], prompts: list[list[int]]) -> CheckResult:
    """Every method's tokens equal the backend's own target-only tokens (near ties allowed where
    the backend is not batch-invariant). engines: label -> a function building that method's
    Engine (models.speculative.engine), so an unbuildable method is reported, not fatal."""
    result = CheckResult("method = target-only")
    for label, build in engines.items():
        try:
            engine = build()
        except UserError as exc:  # a method this backend or model cannot run (a capability, no speculator)
            result.add(NOT_RUN, f"{label}: not run ({' '.join(str(exc).split())[:160]})")
            continue
        except Exception as exc:  # noqa: BLE001 (a backend that breaks a method: a mismatch, with its cause)
            result.add(MISMATCH, f"{label}: failed to build ({type(exc).__name__}: {' '.join(str(exc).split())[:160]})")
            continue
        exact = engine.model.capabilities.batch_invariant
        references = [engine.run(ids, baseline=True).tokens for ids in prompts]
        if engine.config.rows > 1:
            candidates = [r.tokens for r in engine.run_batch(prompts).results]
        else:
            candidates = [engine.run(ids).tokens for ids in prompts]
        for p, (ids, reference, candidate) in enumerate(zip(prompts, references, candidates)):
            verdict = compare(reference, candidate, exact=exact,
                              margin_at=lambda prefix, ids=ids, e=engine: e.top2_margin_after(ids, prefix))
            if verdict.equal:
                result.add(EXACT)
            else:
                result.add(NEAR_TIE if verdict.ok else MISMATCH, f"{label}, prompt {p}: {verdict.describe()}")
    return result


def table(backend: str, model: str, target: TargetModel, results: list[CheckResult]) -> str:
    """One table per backend: check, exact, near-tie, mismatch, then every divergence's note."""
    caps = target.capabilities
    rule = "bit-exact required" if caps.batch_invariant else "near-tie rule"
    lines = [f"conformance: backend {backend}, model {model}, {str(target.dtype).removeprefix('torch.')} ({rule})",
             f"capabilities: {', '.join(caps.declared()) or 'none'}",
             "(logit checks count positions, the method check prompts)",
             f"{'check':34} {EXACT:>6} {NEAR_TIE:>9} {MISMATCH:>9} {NOT_RUN:>8}"]
    for r in results:
        if r.skipped:
            lines.append(f"{r.check:34} skipped: {r.skipped}")
        else:
            c = r.counts
            lines.append(f"{r.check:34} {c[EXACT]:>6} {c[NEAR_TIE]:>9} {c[MISMATCH]:>9} {c[NOT_RUN]:>8}")
    lines += [f"  {r.check}: {note}" for r in results for note in r.notes]
    return "\n".join(lines)
