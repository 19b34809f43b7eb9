"""The loop on a scripted target: exact counters, EOS inside a block, the length cap, rollback,
tree verification and cache compaction."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

from models.common.errors import UserError
from models.common.metrics import summarize
from models.backends.interface import Capabilities
from models.speculative.generator import Generator
from models.speculative.proposers.base import Proposer, ProposerContext
from models.speculative.tree import DraftTree, TreeSpec

V = 16
EOS = 0


class ScriptedCache:
    """A Cache (models/backends/interface.py) holding each slot's token and RoPE position."""

    batch_row = 0
    batch_size = 1

    def __init__(self, max_seq_len: int):
        self.entries = torch.zeros(max_seq_len, 2)  # [slot, (token, position)]
        self.max_seq_len = max_seq_len
        self.length = 0

    def row(self, b: int) -> ScriptedCache:
        return self

    def compact(self, start: int, keep: list[int]) -> None:
        self.entries[start : start + len(keep)] = self.entries[[start + k for k in keep]]
        self.rollback(start + len(keep))

    def rollback(self, length: int) -> None:
        assert 0 <= length <= self.length
        self.length = length

    def reset(self) -> None:
        self.length = 0


class ScriptedTarget:
    """A model whose greedy next token is rule(context). The context is read back from the KV
    cache (token ids and RoPE positions stored in it) and, inside a tree block, through the
    tree mask, so a wrong rollback, a wrong compaction or a wrong position shows up as a wrong
    token."""

    device = torch.device("cpu")
    backend = "scripted"
    capabilities = Capabilities(tree_masks=True, hidden_states=False, batch_rows=False, layer_skip=False,
                                traced=False, batch_invariant=True, torch_weights=False)

    def __init__(self, rule: Callable[[list[int]], int]):
        self.rule = rule
        self.calls = 0
        self.cache: ScriptedCache | None = None  # the last cache it wrote to (what a rollback left)

    def new_cache(self, max_seq_len: int) -> ScriptedCache:
        return ScriptedCache(max_seq_len)

    def __call__(self, tokens, cache, start, logits_for="all", positions=None, tree_mask=None):
        self.calls += 1
        self.cache = cache
        n = tokens.shape[1]
        assert start == cache.length and start + n <= cache.max_seq_len  # a block goes right after the live entries
        if positions is None:
            positions = start + torch.arange(n)
        if tree_mask is None:
            tree_mask = torch.ones(n, n, dtype=torch.bool).tril()
        cache.entries[start : start + n, 0] = tokens[0].float()
        cache.entries[start : start + n, 1] = positions.float()
        cache.length = start + n
        rows = range(n - 1, n) if logits_for == "last" else range(n)
        logits = torch.zeros(1, len(rows), V)
        for r, i in enumerate(rows):
            slots = list(range(start)) + [start + j for j in range(n) if tree_mask[i, j]]
            entries = cache.entries[slots]
            # every entry must sit at the position its order says, else the "model" is off by it
            shift = int((entries[:, 1] - torch.arange(len(slots))).abs().sum())
            logits[0, r, (self.rule(entries[:, 0].long().tolist()) + shift) % V] = 1.0
        return logits


class ScriptedProposer(Proposer):
    """Drafts a chain from draft(tokens, k), or any tree from tree(tokens, spec)."""

    def __init__(self, draft: Callable[[list[int], int], list[int]] | None = None, tree=None):
        self.draft = draft
        self.tree = tree
        self.asked: list[int] = []

    def propose(self, ctx: ProposerContext, spec: TreeSpec) -> DraftTree:
        self.asked.append(spec.depth)
        if self.tree is not None:
            return self.tree(list(ctx.tokens), spec)
        return DraftTree.chain(self.draft(list(ctx.tokens), spec.depth))


def counting_rule(context: list[int]) -> int:
    """Never EOS: 1, 2, ..., 15, 1, 2, ..."""
    return context[-1] % (V - 1) + 1


def mixing_rule(context: list[int]) -> int:
    """Never EOS; depends on every token of the context and on its length."""
    return (sum((j + 3) * t for j, t in enumerate(context)) + len(context)) % (V - 1) + 1


def oracle_for(rule):
    def draft(tokens, k):
        out = []
        for _ in range(k):
            out.append(rule(tokens + out))
        return out

    return draft


def run(rule, draft, k, max_new, prompt=(1, 2, 3), tree=None, spec=None):
    target = ScriptedTarget(rule)
    proposer = ScriptedProposer(draft, tree) if draft or tree else None
    gen = Generator(target, proposer, n_draft_tokens=k, tree=spec, max_seq_len=96, eos_token_ids=(EOS,))
    result = gen.generate(list(prompt), max_new)
    return result, target, proposer


def test_all_drafts_accepted_counts_exactly():
    base, _, _ = run(counting_rule, None, 0, 13)
    spec, target, _ = run(counting_rule, oracle_for(counting_rule), 3, 13)
    assert spec.tokens == base.tokens
    s = summarize([spec.stats])
    assert s["acceptance_rate"] == 1.0
    assert s["target_calls"] == 3  # 12 tokens after the first, 4 per call
    assert s["mean_accepted_tokens"] == 4.0
    assert target.calls == 1 + 3  # prefill + verifications


def test_wrong_drafts_cost_nothing_in_correctness():
    def wrong(tokens, k):
        return [(counting_rule(tokens) + 1) % V or 1] * k

    base, _, _ = run(counting_rule, None, 0, 10)
    spec, _, _ = run(counting_rule, wrong, 4, 10)
    assert spec.tokens == base.tokens
    s = summarize([spec.stats])
    assert s["accepted_tokens"] == 0
    assert s["target_calls"] == 9


def test_partial_acceptance_rolls_back_the_cache():
    """The rule reads the whole cached context and its length, so one stale entry left behind
    (a rollback one slot too long) or one accepted entry dropped (one too short) changes the
    next token; the cache ends holding exactly the prompt and every output token but the last."""
    def half_right(tokens, k):  # first draft right, second wrong, rest whatever
        good = oracle_for(mixing_rule)(tokens, k)
        return good[:1] + [(t + 5) % V for t in good[1:]]

    prompt = (1, 2, 3)
    base, _, _ = run(mixing_rule, None, 0, 20, prompt)
    spec, target, _ = run(mixing_rule, half_right, 4, 20, prompt)
    assert spec.tokens == base.tokens  # a bad rollback would feed stale tokens to the rule
    assert all(it.accepted == 1 for it in spec.stats.iterations[:-1]) and len(spec.stats.iterations) > 5
    assert target.cache.length == len(prompt) + len(spec.tokens) - 1


def test_eos_inside_an_accepted_block_ends_generation_there():
    def eos_after_four(context):
        return EOS if context[-1] == 4 else context[-1] % (V - 1) + 1

    base, _, _ = run(eos_after_four, None, 0, 30, prompt=(1,))
    spec, _, _ = run(eos_after_four, oracle_for(eos_after_four), 4, 30, prompt=(1,))
    assert base.tokens == [2, 3, 4, EOS]
    assert spec.tokens == base.tokens
    # drafts [3, 4, EOS, 1] all match the target, but nothing after EOS was emitted
    (it,) = spec.stats.iterations
    assert (it.accepted, it.emitted) == (3, 3)  # the draft after EOS is never output, so not counted


def test_eos_as_first_token_stops_after_prefill():
    spec, target, _ = run(lambda c: EOS, oracle_for(lambda c: EOS), 4, 10)
    assert spec.tokens == [EOS]
    assert target.calls == 1


def test_length_cap_shrinks_the_last_proposal_and_is_exact():
    spec, _, proposer = run(counting_rule, oracle_for(counting_rule), 4, 8)
    assert len(spec.tokens) == 8
    assert proposer.asked == [4, 1]  # 7 to go: 5 from the first call, then 2 = 1 draft + bonus


def test_fewer_or_no_drafts_are_fine():
    base, _, _ = run(counting_rule, None, 0, 12)
    spec, _, _ = run(counting_rule, lambda t, k: oracle_for(counting_rule)(t, k)[: len(t) % 3], 4, 12)
    assert spec.tokens == base.tokens


def test_prompt_plus_generation_must_fit_max_seq_len():
    gen = Generator(ScriptedTarget(counting_rule), None, max_seq_len=8, eos_token_ids=(EOS,))
    with pytest.raises(UserError, match="exceeds max_seq_len=8"):
        gen.generate([1, 2, 3], 6)


def test_speculative_generator_needs_a_positive_k():
    with pytest.raises(UserError, match="n_draft_tokens must be >= 1"):
        Generator(ScriptedTarget(counting_rule), ScriptedProposer(lambda t, k: []), n_draft_tokens=0)


@pytest.mark.parametrize("k", [1, 3, 5])
def test_a_rule_over_the_whole_context_catches_rollback_and_positions(k):
    """With a rule that reads every cached token and position, partial acceptance must leave
    exactly the accepted context in the cache (a rollback one slot short changes the tokens)."""
    def half_right(tokens, k):
        good = oracle_for(mixing_rule)(tokens, k)
        return good[: len(tokens) % (k + 1)] + [(t % (V - 2)) + 1 for t in good[len(tokens) % (k + 1):]]

    base, _, _ = run(mixing_rule, None, 0, 40)
    spec, _, _ = run(mixing_rule, half_right, k, 40)
    assert spec.tokens == base.tokens
    assert len(set(base.tokens)) > 5  # the rule really mixes


def test_the_scripted_target_notices_a_short_rollback(monkeypatch):
    """The check above can fail: roll back one slot short and the output changes."""
    real = ScriptedCache.compact

    def short(self, start, keep):
        real(self, start, keep)
        self.length -= 1 if len(keep) > 1 else 0

    base, _, _ = run(mixing_rule, None, 0, 30)
    monkeypatch.setattr(ScriptedCache, "compact", short)
    spec, _, _ = run(mixing_rule, oracle_for(mixing_rule), 3, 30)
    assert spec.tokens != base.tokens


def tree_with_answer_on(branch: int, width: int, depth: int, rule, wrong_tail: bool = False):
    """A proposer drafting `width` chains of `depth` under the root, merged (first tokens
    differ); only chain `branch` follows the rule. Node order interleaves levels, as a real
    tree does, so compaction must gather non-adjacent slots."""
    def tree(tokens, spec):
        d = min(depth, spec.depth)
        good = oracle_for(rule)(tokens, d)
        chains = []
        for b in range(width):
            if b == branch:
                chain = list(good)
                if wrong_tail and d > 1:
                    chain[-1] = chain[-1] % (V - 1) + 1
            else:
                chain = [(good[0] + b + (b >= branch)) % (V - 1) + 1] + good[1:]
            chains.append(chain)
        toks, parents = [], []
        last = [-1] * width
        for level in range(d):
            for b in range(width):
                toks.append(chains[b][level])
                parents.append(last[b])
                last[b] = len(toks) - 1
        return DraftTree(torch.tensor(toks), tuple(parents))
    return tree


@pytest.mark.parametrize("branch, width, depth", [(0, 3, 4), (2, 3, 4), (1, 4, 2), (3, 4, 5)])
def test_tree_accepts_the_right_branch_and_compacts_the_cache(branch, width, depth):
    base, _, _ = run(mixing_rule, None, 0, 41)
    spec, target, _ = run(mixing_rule, None, depth, 41, tree=tree_with_answer_on(branch, width, depth, mixing_rule),
                          spec=TreeSpec(width, depth, width * depth))
    assert spec.tokens == base.tokens
    s = summarize([spec.stats])
    assert s["mean_accepted_tokens"] == pytest.approx(40 / s["target_calls"])
    assert all(it.accepted == min(depth, 40 - sum(x.emitted for x in spec.stats.iterations[:i]) - 1)
               for i, it in enumerate(spec.stats.iterations))
    assert spec.stats.iterations[0].proposed == width * depth and spec.stats.iterations[0].depth == depth


def test_tree_partial_path_is_exact():
    base, _, _ = run(mixing_rule, None, 0, 30)
    spec, _, _ = run(mixing_rule, None, 4, 30, tree=tree_with_answer_on(1, 3, 4, mixing_rule, wrong_tail=True),
                     spec=TreeSpec(3, 4, 12))
    assert spec.tokens == base.tokens
    assert all(it.accepted == 3 for it in spec.stats.iterations[:-1])


def test_eos_inside_an_accepted_tree_path_ends_generation_there():
    def eos_after_four(context):
        return EOS if context[-1] == 4 else context[-1] % (V - 1) + 1

    base, _, _ = run(eos_after_four, None, 0, 30, prompt=(1,))
    spec, _, _ = run(eos_after_four, None, 4, 30, prompt=(1,), tree=tree_with_answer_on(1, 2, 4, eos_after_four),
                     spec=TreeSpec(2, 4, 8))
    assert spec.tokens == base.tokens == [2, 3, 4, EOS]
    (it,) = spec.stats.iterations
    assert (it.accepted, it.emitted) == (3, 3)


def test_tree_depth_is_capped_by_the_tokens_left():
    spec, _, proposer = run(mixing_rule, None, 4, 8, tree=tree_with_answer_on(0, 2, 4, mixing_rule),
                            spec=TreeSpec(2, 4, 8))
    assert len(spec.tokens) == 8
    assert proposer.asked == [4, 1]
