"""The draft/verify loop. Target-only decoding is the same loop with no proposer.

Each iteration: the proposer drafts a token tree (a chain is a tree with one branch); ONE
target forward over the last accepted token and the tree's nodes (ancestor mask, positions by
depth) yields the target's distribution after every node; an acceptance rule picks a
root-to-node path and the target's next token; the path's cache entries are moved into
consecutive slots and the rest dropped. The rules (verification.py, sampling.py):

- greedy (temperature 0): the longest path agreeing with the target's argmax; output equals
  target-only greedy decoding by construction;
- rejection (temperature > 0): recursive rejection sampling; output is distributed exactly as
  target-only sampling;
- coupled (temperature > 0): the target's token at each position is argmax(log p + Gumbel
  noise of (seed, prompt, position)); output equals target-only coupled sampling token for token.

The first token after prefill goes through the same rule on an empty tree, so target-only
decoding and speculation share one definition of "the target's token".

One loop (`Generator._run`) serves one prompt, static batches and continuous batching: each
sequence (`_Sequence`) has its own cache row, length, acceptance and stop, and every iteration
makes ONE target call over every unfinished sequence's block (a batch: flattened,
TargetModel.forward_rows; one prompt: the target's one-sequence call, which CUDA graphs replay).
Static batches take the next prompts when the whole batch is done; continuous batching gives a
freed row to the next prompt at once. Rows never change each other's numbers (batch-invariant
kernels), so a prompt's output is the same alone or in any batch.
"""

from __future__ import annotations

import dataclasses
import time
from collections import deque
from collections.abc import Callable

import torch
from loguru import logger

from models.common.errors import UserError
from models.common.metrics import Iteration, SequenceStats
from models.backends.interface import Cache, RowBlock, TargetModel
from models.speculative.batch_budget import BatchCost, RowHistory, nodes_to_verify
from models.speculative.budget import AutoBudget
from models.speculative.proposers.base import Proposer, ProposerContext
from models.speculative.sampling import ChainSampler, SamplingParams, SequenceRng
from models.speculative.tree import DraftTree, TreeSpec
from models.speculative.verification import COUPLED, GREEDY, rule_for


@dataclasses.dataclass
class GenerationResult:
    tokens: list[int]  # generated ids, prompt excluded, EOS included when it ended the sequence
    stats: SequenceStats  # per-iteration accepted/emitted counts give the per-token view
    # record_hidden: the target's final hidden state [prompt + generated - 1, D] at every position
    # but the last token's (never run through the target); [..., (n + 1) D] with n record_layers
    hidden: torch.Tensor | None = None


@dataclasses.dataclass
class BatchIteration:
    """One target call of a batch: what each of its rows emitted, and how long the call took."""

    rows: list[int]  # prompt index per active row
    emitted: list[int]  # tokens each row appended
    seconds: float
    # prompts that ended in it, or at their first token since the iteration before
    finished: list[int] = dataclasses.field(default_factory=list)
    iterations: list[Iteration] = dataclasses.field(default_factory=list)  # each row's, as in rows

    @property
    def tokens_per_s_per_user(self) -> float:
        return sum(self.emitted) / len(self.rows) / self.seconds if self.seconds else 0.0

    @property
    def throughput(self) -> float:
        return sum(self.emitted) / self.seconds if self.seconds else 0.0


@dataclasses.dataclass
class BatchResult:
    results: list[GenerationResult]  # in input order
    seconds: float  # wall time of the whole run (every prefill and target call)
    iterations: list[BatchIteration]

    @property
    def generated_tokens(self) -> int:
        return sum(r.stats.generated_tokens for r in self.results)

    @property
    def throughput_tokens_per_s(self) -> float:
        return self.generated_tokens / self.seconds if self.seconds else 0.0


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclasses.dataclass
class _Sequence:
    """One prompt being decoded: its tokens, cache (row), proposer, random stream and stats."""

    index: int  # the prompt's index in the run (its random stream under sampling)
    max_new_tokens: int
    cache: Cache
    proposer: Proposer | None
    rng: SequenceRng | None
    ctx: ProposerContext
    stats: SequenceStats
    out: list[int]
    history: RowHistory = dataclasses.field(default_factory=RowHistory)  # acceptance by budget (batches)
    hidden: list[torch.Tensor] = dataclasses.field(default_factory=list)  # record_hidden: kept rows in order
    # this iteration's draft
    tree: DraftTree | None = None
    budget: int = 0
    t_draft: float = 0.0

    @property
    def tokens(self) -> list[int]:
        return self.ctx.tokens

    def result(self) -> GenerationResult:
        if not self.hidden:
            return GenerationResult(self.out, self.stats)
        # rows past the end (drafts accepted beyond an EOS or the cap) are dropped
        positions = self.stats.prompt_tokens + len(self.out) - 1
        return GenerationResult(self.out, self.stats, torch.cat(self.hidden)[:positions])


def check_fits(prompt_len: int, max_new_tokens: int, max_seq_len: int) -> None:
    if prompt_len < 1:
        raise UserError("empty prompt: nothing to condition on")
    if max_new_tokens < 1:
        raise UserError(f"max_generated_tokens must be >= 1, got {max_new_tokens}")
    if prompt_len + max_new_tokens > max_seq_len:
        raise UserError(
            f"prompt ({prompt_len} tokens) + max_generated_tokens ({max_new_tokens}) exceeds "
            f"max_seq_len={max_seq_len}; raise --max_seq_len or shorten the prompt"
        )


def check_prompts_fit(prompts: list[list[int]], caps: list[int], max_seq_len: int) -> None:
    """check_fits for each prompt with its cap; the message names the first that does not fit."""
    for i, (prompt, cap) in enumerate(zip(prompts, caps, strict=True)):
        try:
            check_fits(len(prompt), cap, max_seq_len)
        except UserError as exc:
            raise UserError(f"prompt {i}: {exc}") from None


def eager_note(target, proposer: Proposer | None, record_hidden: bool) -> str | None:
    """Why a traced target runs this generator's calls eagerly, or None. The CUDA graphs
    (models.llama.trace) capture calls that return logits only; a call asking for hidden states
    runs eagerly, and a proposer that drafts from them asks on every call, so its whole run is
    eager: a silent slowdown (and an understated speedup) unless said."""
    if not target.capabilities.traced:
        return None
    if proposer is not None and proposer.uses_target_hidden:
        readers = [p.name for p in getattr(proposer, "proposers", ()) if p.uses_target_hidden]
        who = f"proposer {proposer.name}" + (f" (through {', '.join(readers)})" if readers else "")
        tail = "; target-only decoding stays traced, so the speedup over it is understated"
        return (f"{who} drafts from the target's hidden states, which the CUDA graphs do not return: "
                f"every target call of its decoding runs eagerly{tail}")
    if record_hidden:
        return ("recording hidden states (record_hidden) reads the target's hidden states, which the CUDA "
                "graphs do not return: every target call of this decoding runs eagerly")
    return None


class Generator:
    def __init__(
        self,
        target: TargetModel,
        proposer: Proposer | None = None,
        *,
        n_draft_tokens: int = 0,
        tree: TreeSpec | None = None,
        max_seq_len: int = 1024,
        eos_token_ids: tuple[int, ...] = (),
        prefill_seq_len: int | None = None,
        sampling: SamplingParams | None = None,
        verify: str | None = None,
        record_hidden: bool = False,
    ):
        """tree: the shape of the drafts (default: a chain of n_draft_tokens).
        prefill_seq_len: prefill the prompt in chunks of this many tokens (fixed shapes for
        traces, bounded activation memory); None: one pass.
        sampling: temperature / top-k / top-p / seed (default greedy); verify: rejection (the
        default when sampling) or coupled.
        record_hidden: return the target's hidden states over each sequence (speculator training
        data, taken from the passes decoding already makes); set record_layers to record the
        outputs of those target layers beside the final state (TargetModel hidden_layers)."""
        if proposer is not None and tree is None and n_draft_tokens < 1:
            raise UserError(f"--n_draft_tokens must be >= 1 for speculative methods, got {n_draft_tokens}")
        self.target = target
        self.proposer = proposer
        self.spec = (tree or TreeSpec(1, n_draft_tokens, n_draft_tokens)) if proposer is not None else None
        self.max_seq_len = max_seq_len
        self.prefill_seq_len = prefill_seq_len
        self.eos = frozenset(eos_token_ids)
        self._cache: Cache | None = None  # one sequence's, allocated at first use
        self._batch_cache: Cache | None = None  # a batch's, sized by it
        self._row_proposers: list[Proposer] = []  # a batch row's proposer beyond row 0's
        self.auto_budget: AutoBudget | None = None  # set for --tree_budget auto
        self.batch_cost: BatchCost | None = None  # set for --batch_drafts auto: batches verify what pays
        self.sampling = sampling or SamplingParams()
        self.rule = rule_for(self.sampling, verify)  # the acceptance rule, picked once
        self.record_hidden = record_hidden
        self.record_layers: tuple[int, ...] = ()  # with record_hidden: layers recorded beside the final state
        if note := eager_note(target, proposer, record_hidden):
            logger.warning(note)

    @property
    def cache(self) -> Cache:
        if self._cache is None:
            self._cache = self.target.new_cache(self.max_seq_len)
        return self._cache

    def check_fits(self, prompt_len: int, max_new_tokens: int) -> None:
        check_fits(prompt_len, max_new_tokens, self.max_seq_len)

    def check_prompts_fit(self, prompts: list[list[int]], caps: list[int]) -> None:
        check_prompts_fit(prompts, caps, self.max_seq_len)

    @property
    def _wants_hidden(self) -> bool:
        return self.record_hidden or self._drafts_from_hidden

    @property
    def _drafts_from_hidden(self) -> bool:
        return self.proposer is not None and self.proposer.uses_target_hidden

    @property
    def _hidden_layers(self) -> tuple[int, ...]:
        """The target layers whose outputs join its final hidden state (an EAGLE-3 head's input). A
        proposer reading the final state alone takes its slice of whatever is recorded."""
        layers = self.proposer.hidden_layers if self._drafts_from_hidden else ()
        if not self.record_hidden:
            return layers
        if layers and layers != self.record_layers:
            raise UserError(f"the proposer reads target layers {layers} but the generator records "
                            f"{self.record_layers}; record what the proposer reads")
        return self.record_layers

    def _forward(self, cache: Cache, tokens: torch.Tensor, start: int, logits_for: str, **tree):
        """Target forward of one sequence; hidden states [T, D] too when the proposer drafts from them
        ([T, (n + 1) D] for a proposer reading n more layers)."""
        if not self._wants_hidden:
            return self.target(tokens, cache, start, logits_for=logits_for, **tree), None
        logits, hidden = self.target(tokens, cache, start, logits_for=logits_for, return_hidden=True,
                                     hidden_layers=self._hidden_layers, **tree)
        return logits, hidden[0]

    @property
    def verify(self) -> str:
        """This generator's decoding: greedy, rejection or coupled."""
        return self.rule.name

    def _prefill(self, cache: Cache, prompt: torch.Tensor):
        chunk = self.prefill_seq_len or prompt.shape[1]
        hiddens = []
        for lo in range(0, prompt.shape[1], chunk):
            logits, hidden = self._forward(cache, prompt[:, lo : lo + chunk], lo, "last")
            hiddens.append(hidden)
        return logits, torch.cat(hiddens) if self._wants_hidden else None

    def _begin(self, prompt: list[int], max_new_tokens: int, index: int, cache: Cache,
               proposer: Proposer | None, stream: int | None = None) -> _Sequence:
        """Prefill into `cache` and take the first token: the sequence is ready to decode.
        stream: its random stream under sampling (default: its index)."""
        device = self.target.device
        cache.reset()
        synchronize(device)
        t0 = time.perf_counter()
        rng = None if self.verify == GREEDY else SequenceRng(self.sampling.seed, index if stream is None else stream)
        logits, hidden = self._prefill(cache, torch.tensor([prompt], device=device))
        first = self.rule.accept(DraftTree.empty(device), logits[0, -1:], rng, len(prompt)).tokens[0]
        stats = SequenceStats(prompt_tokens=len(prompt), ttft_s=time.perf_counter() - t0)
        if proposer is not None:
            proposer.start(prompt, cache)
        ctx = ProposerContext(tokens=list(prompt) + [first], target_cache=cache,
                              target_hidden=hidden if self._drafts_from_hidden else None)
        if rng is not None:
            ctx.sampler = ChainSampler(self.sampling, rng, self.verify == COUPLED, len(ctx.tokens))
        seq = _Sequence(index, max_new_tokens, cache, proposer, rng, ctx, stats, [first])
        if self.record_hidden:
            seq.hidden.append(hidden)
        return seq

    def _end(self, seq: _Sequence) -> GenerationResult:
        """A sequence is over: its proposer learns from it (finish), and its result."""
        if seq.proposer is not None:
            seq.proposer.finish(list(seq.tokens))
        return seq.result()

    def _done(self, seq: _Sequence) -> bool:
        return seq.out[-1] in self.eos or len(seq.out) >= seq.max_new_tokens

    def _draft_spec(self, seq: _Sequence) -> TreeSpec | None:
        """The tree this iteration may draft: no deeper than the tokens left allow (the
        target's own token always fits); None when nothing is drafted."""
        remaining = seq.max_new_tokens - len(seq.out)
        if seq.proposer is None or remaining < 2:
            return None
        spec = self.spec.capped(remaining - 1)
        if self.auto_budget is not None:
            spec = dataclasses.replace(spec, budget=min(spec.budget, self.auto_budget.next_budget()))
        return spec

    def _draft(self, seq: _Sequence, spec: TreeSpec | None) -> None:
        """The proposer's tree within spec (none: an empty tree) and the node budget it was given."""
        t0 = time.perf_counter()
        device = self.target.device
        if seq.ctx.sampler is not None:
            seq.ctx.sampler.position = len(seq.tokens)
        if spec is None or spec.budget < 1:
            seq.tree, seq.budget = DraftTree.empty(device), 0
        else:
            seq.tree, seq.budget = seq.proposer.propose(seq.ctx, spec), spec.budget
            if self._drafts_from_hidden:  # read: the next proposal gets the states that come after
                seq.ctx.target_hidden = None
            synchronize(device)
        seq.t_draft = time.perf_counter() - t0

    def _block(self, seq: _Sequence) -> tuple[torch.Tensor, dict]:
        """[root, *tree] for the target, and the tree's positions and mask (none for a chain)."""
        device = self.target.device
        tree = seq.tree
        block = torch.cat([torch.tensor([seq.tokens[-1]], device=device), tree.tokens.to(device)])
        if tree.is_chain:
            return block, {}
        start = seq.cache.length
        return block, {"positions": tree.positions(start).to(device), "tree_mask": tree.attention_mask().to(device)}

    def _finish(self, seq: _Sequence, start: int, logits: torch.Tensor, hidden: torch.Tensor | None,
                t_iter: float) -> Iteration:
        """Accept on the target's logits [n + 1, V] for this sequence's block (stored at `start`),
        keep the accepted path's cache entries, extend the output and the statistics; the
        iteration's time runs from t_iter."""
        tree = seq.tree
        acceptance = self.rule.accept(tree, logits, seq.rng, len(seq.tokens))
        keep = [0] + [node + 1 for node in acceptance.path]
        seq.cache.compact(start, keep)
        kept = None if hidden is None else hidden[keep]
        if self._drafts_from_hidden:  # rows not yet consumed by the proposer are kept (a no-draft step)
            seq.ctx.target_hidden = kept if seq.ctx.target_hidden is None else torch.cat([seq.ctx.target_hidden, kept])
        if self.record_hidden:
            seq.hidden.append(kept)
        remaining = seq.max_new_tokens - len(seq.out)
        emitted = acceptance.tokens[:remaining]
        for i, tok in enumerate(emitted):
            if tok in self.eos:
                emitted = emitted[: i + 1]
                break
        seq.out.extend(emitted)
        seq.tokens.extend(emitted)
        accepted = min(acceptance.n_accepted, len(emitted))  # drafts past an EOS are not output
        it = Iteration(
            proposed=tree.n_nodes,
            accepted=accepted,
            emitted=len(emitted),
            seconds=time.perf_counter() - t_iter,
            draft_seconds=seq.t_draft,
            depth=tree.depth,
            source=tree.sources[acceptance.path[accepted - 1]] if tree.sources and accepted else None,
        )
        if self.auto_budget is not None and tree.n_nodes:
            self.auto_budget.observe(acceptance.path, seq.budget, it.seconds)
        if tree.n_nodes:
            seq.history.observe(acceptance.path, tree.n_nodes)
        seq.stats.iterations.append(it)
        return it

    @torch.inference_mode()
    def generate(
        self,
        prompt: list[int],
        max_new_tokens: int,
        on_iteration: Callable[[int, Iteration], None] | None = None,
        prompt_index: int = 0,
    ) -> GenerationResult:
        """One prompt: a batch of one through the same loop as any batch, in this generator's own
        one-sequence cache and through the target's one-sequence call (traced on CUDA).
        prompt_index: which prompt of a run this is; under sampling it picks the random stream
        (seed, prompt_index), so a run reproduces from its seed and repeated prompts differ."""
        self.check_fits(len(prompt), max_new_tokens)
        report = None
        if on_iteration is not None:
            def report(i: int, step: BatchIteration) -> None:
                on_iteration(i, step.iterations[0])
        run = self._run([prompt], [max_new_tokens], [self.cache], [self.proposer], continuous=False,
                        on_iteration=report, streams=[prompt_index], batched=False)
        return run.results[0]

    def forget(self) -> None:
        """Every row's proposer and the auto tree budget drop what earlier sequences taught (after
        a warm-up), so a timed run starts as a fresh engine would."""
        for proposer in [self.proposer, *self._row_proposers]:
            if proposer is not None:
                proposer.forget()
        if self.auto_budget is not None:  # the warm-up's iterations, acceptance and slow first calls
            self.auto_budget = AutoBudget(self.auto_budget.cost, self.auto_budget.max_budget)

    def _batch_rows(self, batch_size: int) -> tuple[list[Cache], list[Proposer | None]]:
        """The batch cache's rows (allocated when a larger batch first needs them) and a
        proposer per row (the generator's own for row 0, forks beyond)."""
        if self._batch_cache is None or self._batch_cache.batch_size < batch_size:
            self._batch_cache = None  # free the smaller one first
            self._batch_cache = self.target.new_cache(self.max_seq_len, batch_size)
        if self.proposer is None:
            return [self._batch_cache.row(b) for b in range(batch_size)], [None] * batch_size
        while len(self._row_proposers) < batch_size - 1:
            self._row_proposers.append(self.proposer.fork())
        proposers = [self.proposer, *self._row_proposers[: batch_size - 1]]
        return [self._batch_cache.row(b) for b in range(batch_size)], proposers

    @torch.inference_mode()
    def generate_batch(
        self,
        prompts: list[list[int]],
        max_new_tokens: int | list[int],
        batch_size: int,
        *,
        continuous: bool = False,
        on_iteration: Callable[[int, BatchIteration], None] | None = None,
        streams: list[int] | None = None,
    ) -> BatchResult:
        """Decode every prompt, batch_size at a time, with one target call per iteration for all
        unfinished rows. Static (continuous False): the next batch_size prompts start when the
        whole batch is done. Continuous: a finished row takes the next prompt at once (prefilled
        into that row while the others wait one iteration). Prompt i samples from (seed, i), or
        (seed, streams[i]) when given (a share of a larger run, as on a data-parallel mesh).
        max_new_tokens: one cap for all, or one per prompt."""
        if batch_size < 1:
            raise UserError(f"batch size must be >= 1, got {batch_size}")
        caps = max_new_tokens if isinstance(max_new_tokens, list) else [max_new_tokens] * len(prompts)
        if len(caps) != len(prompts):
            raise ValueError(f"{len(caps)} max_new_tokens for {len(prompts)} prompts")
        self.check_prompts_fit(prompts, caps)
        rows, proposers = self._batch_rows(min(batch_size, max(len(prompts), 1)))
        return self._run(prompts, caps, rows, proposers, continuous=continuous, on_iteration=on_iteration,
                         streams=streams, batched=True)

    def _run(self, prompts: list[list[int]], caps: list[int], rows: list[Cache], proposers: list[Proposer | None], *,
             continuous: bool, on_iteration: Callable[[int, BatchIteration], None] | None,
             streams: list[int] | None, batched: bool) -> BatchResult:
        """The one draft/verify loop: each iteration drafts for every unfinished row, verifies all
        their blocks in ONE target call, accepts per row and refills freed rows. batched: the rows
        share the batch cache (one forward_rows call, drafts limited by batch_cost); else one
        sequence in its own cache through the target's one-sequence call."""
        slots: list[_Sequence | None] = [None] * len(rows)
        queue = deque(enumerate(prompts))
        results: list[GenerationResult | None] = [None] * len(prompts)
        iterations: list[BatchIteration] = []
        done_at_first: list[int] = []  # reported with the next iteration
        device = self.target.device
        synchronize(device)
        t_run = time.perf_counter()
        while queue or any(s is not None for s in slots):
            if continuous or all(s is None for s in slots):
                for b in range(len(slots)):
                    while slots[b] is None and queue:  # a prompt done at its first token frees the row again
                        index, prompt = queue.popleft()
                        seq = self._begin(prompt, caps[index], index, rows[b], proposers[b],
                                          None if streams is None else streams[index])
                        if self._done(seq):
                            results[index] = self._end(seq)
                            done_at_first.append(index)
                        else:
                            slots[b] = seq
            active = [s for s in slots if s is not None]
            if not active:
                continue
            t_iter = time.perf_counter()
            specs = [self._draft_spec(seq) for seq in active]
            if batched and self.batch_cost is not None:  # only the drafts whose expected tokens pay for their rows
                sizes = [0 if spec is None else spec.budget for spec in specs]
                cost = self.batch_cost
                allowed = nodes_to_verify(sizes, [s.history for s in active], cost.steps(len(active)), cost.per_row)
                specs = [None if spec is None else spec.limited(n) for spec, n in zip(specs, allowed)]
            for seq, spec in zip(active, specs):
                self._draft(seq, spec)
            blocks = [self._block(seq) for seq in active]
            starts = [seq.cache.length for seq in active]
            logits, hidden = self._verify(active, blocks, starts, batched)
            its, lo = [], 0
            for seq, start, (block, _) in zip(active, starts, blocks):
                hi = lo + len(block)
                its.append(self._finish(seq, start, logits[lo:hi], None if hidden is None else hidden[lo:hi], t_iter))
                lo = hi
            seconds = time.perf_counter() - t_iter
            for it in its:  # every row waited for the whole call
                it.seconds = seconds
            iteration = BatchIteration([s.index for s in active], [it.emitted for it in its], seconds, done_at_first, its)
            done_at_first = []
            for b, seq in enumerate(slots):
                if seq is not None and self._done(seq):
                    results[seq.index] = self._end(seq)
                    iteration.finished.append(seq.index)
                    slots[b] = None
            iterations.append(iteration)
            if on_iteration is not None:
                on_iteration(len(iterations), iteration)
        synchronize(device)
        return BatchResult(results, time.perf_counter() - t_run, iterations)

    def _verify(self, active: list[_Sequence], blocks: list[tuple[torch.Tensor, dict]], starts: list[int],
                batched: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        """ONE target call over every active row's block: logits [N, V] (and hidden states [N, ...]),
        the rows' blocks in turn."""
        if not batched:
            (block, shape), seq = blocks[0], active[0]
            logits, hidden = self._forward(seq.cache, block.view(1, -1), starts[0], "all", **shape)
            return logits[0], hidden
        tokens = torch.cat([block for block, _ in blocks])
        row_blocks = [RowBlock(seq.cache, len(block), shape.get("positions"), shape.get("tree_mask"))
                      for seq, (block, shape) in zip(active, blocks)]
        out = self.target.forward_rows(tokens, row_blocks, self._batch_cache, return_hidden=self._wants_hidden,
                                       hidden_layers=self._hidden_layers)
        return out if self._wants_hidden else (out, None)
