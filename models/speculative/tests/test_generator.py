"""The loop on a scripted target: exact counters, EOS inside a block, the length cap, rollback."""

from collections.abc import Callable

import pytest
import torch

from models.common.errors import UserError
from models.common.metrics import summarize
from models.llama.kv_cache import KVCache
from models.speculative.generator import Generator
from models.speculative.proposers.base import Proposer, ProposerContext

V = 16
EOS = 0


class ScriptedTarget:
    """A model whose greedy next token is rule(context). The context is read back from the KV
    cache (token ids stored in it), so a wrong rollback shows up as a wrong token."""

    device = torch.device("cpu")

    def __init__(self, rule: Callable[[list[int]], int]):
        self.rule = rule
        self.calls = 0

    def new_cache(self, max_seq_len: int) -> KVCache:
        return KVCache(1, 1, 1, max_seq_len)

    def __call__(self, tokens, cache, start, logits_for="all"):
        self.calls += 1
        n = tokens.shape[1]
        cache.k[0, 0, 0, start : start + n, 0] = tokens[0].float()
        cache.length = start + n
        rows = range(n - 1, n) if logits_for == "last" else range(n)
        logits = torch.zeros(1, len(rows), V)
        for r, i in enumerate(rows):
            context = cache.k[0, 0, 0, : start + i + 1, 0].long().tolist()
            logits[0, r, self.rule(context)] = 1.0
        return logits


class ScriptedProposer(Proposer):
    def __init__(self, draft: Callable[[list[int], int], list[int]]):
        self.draft = draft
        self.asked: list[int] = []

    def propose(self, ctx: ProposerContext, k: int) -> torch.Tensor:
        self.asked.append(k)
        return torch.tensor(self.draft(list(ctx.tokens), k), dtype=torch.int64)


def counting_rule(context: list[int]) -> int:
    """Never EOS: 1, 2, ..., 15, 1, 2, ..."""
    return context[-1] % (V - 1) + 1


def oracle_for(rule):
    def draft(tokens, k):
        out = []
        for _ in range(k):
            out.append(rule(tokens + out))
        return out

    return draft


def run(rule, draft, k, max_new, prompt=(1, 2, 3)):
    target = ScriptedTarget(rule)
    proposer = ScriptedProposer(draft) if draft else None
    gen = Generator(target, proposer, n_draft_tokens=k, max_seq_len=64, eos_token_ids=(EOS,))
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
    def half_right(tokens, k):  # first draft right, second wrong, rest whatever
        good = oracle_for(counting_rule)(tokens, k)
        return good[:1] + [(t + 5) % V for t in good[1:]]

    base, _, _ = run(counting_rule, None, 0, 20)
    spec, _, _ = run(counting_rule, half_right, 4, 20)
    assert spec.tokens == base.tokens  # a bad rollback would feed stale tokens to the rule
    assert all(it.accepted == 1 for it in spec.stats.iterations[:-1])


def test_eos_inside_an_accepted_block_ends_generation_there():
    def eos_after_four(context):
        return EOS if context[-1] == 4 else context[-1] % (V - 1) + 1

    base, _, _ = run(eos_after_four, None, 0, 30, prompt=(1,))
    spec, _, _ = run(eos_after_four, oracle_for(eos_after_four), 4, 30, prompt=(1,))
    assert base.tokens == [2, 3, 4, EOS]
    assert spec.tokens == base.tokens
    # drafts [3, 4, EOS, 1] were all accepted, but nothing after EOS was emitted
    (it,) = spec.stats.iterations
    assert (it.accepted, it.emitted) == (4, 3)


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
