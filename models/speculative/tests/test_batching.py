"""Batches: every row's output equals the same prompt decoded alone, for target-only decoding and
every method (chains and trees, greedy and coupled sampling), in static batches and continuous
batching, through one target call per iteration."""

import pytest
import torch

from models.common.cpu_kernels import skinny_kernels
from models.common.errors import UserError
from models.common.metrics import summarize
from models.backends.interface import RowBlock, TargetModel
from models.llama.weights import load_model
from models.speculative.batch_budget import EXPLORE_EVERY, BatchCost, RowHistory, nodes_to_verify
from models.speculative.budget import VerifyCost
from models.speculative.engine import Engine, RunConfig
from models.speculative.proposers.prompt_lookup import PromptLookupProposer
from models.speculative.tests.test_sampling_e2e import speculators  # noqa: F401  (tiny eagle / multi_projection heads)

MODEL = "random:tiny-llama"
# unequal lengths, one that copies itself (accepted drafts) and one that does not
PROMPTS = [
    [1, *(b + 3 for b in b"the cat sat on the mat. the cat sat on the")],
    [1, *(b + 3 for b in b"zq")],
    [1, *(b + 3 for b in b"abc abc abc abc ab")],
    [1, *(b + 3 for b in b"0123456789 0123456789 01234")],
    [1, *(b + 3 for b in b"a longer prompt than the others, with a comma")],
]
MAX_NEW = 24


def config(**kw) -> RunConfig:
    base = dict(model=MODEL, instruct=False, max_generated_tokens=MAX_NEW, max_seq_len=128)
    return RunConfig(**{**base, **kw})


def solo_target_only(**kw) -> list[list[int]]:
    engine = Engine(config(method="target", **kw))
    return [engine.run(p, prompt_index=i).tokens for i, p in enumerate(PROMPTS)]


METHODS = {
    "target": dict(method="target"),
    "draft_model": dict(method="draft_model", draft_layers=3, n_draft_tokens=3),
    "draft_model_tree": dict(method="draft_model", draft_layers=3, tree_topk=2, tree_budget=6),
    "self_draft": dict(method="self_draft", draft_layers=2, n_draft_tokens=2),
    "prompt_lookup": dict(method="prompt_lookup", n_draft_tokens=4),
    "prompt_lookup_tree": dict(method="prompt_lookup", n_draft_tokens=4, tree_topk=3, tree_budget=8),
    "suffix": dict(method="suffix", n_draft_tokens=4, tree_topk=3, tree_budget=8),
    "eagle_tree": dict(method="eagle", target_layers=1, speculator="eagle", tree_topk=2, tree_budget=6),
    "multi_projection": dict(method="multi_projection", speculator="multi_projection", n_draft_tokens=3),
    "multi": dict(method="multi", proposers="multi_projection,prompt_lookup", speculator="multi_projection",
                  tree_topk=2, tree_budget=8),
}


def options(name: str, speculators) -> dict:
    opts = dict(METHODS[name])
    if "speculator" in opts:
        opts["speculator"] = speculators[opts["speculator"]]
    return opts


@pytest.fixture(scope="module")
def references() -> dict:
    return {layers: solo_target_only(target_layers=layers) for layers in (None, 1)}


@pytest.mark.parametrize("name", METHODS)
@pytest.mark.parametrize("batching", [dict(batch_size=2), dict(batch_size=8), dict(full_batch_size=3)],
                         ids=["static-2", "static-8", "continuous-3"])
def test_batched_rows_equal_solo_target_only(name, batching, speculators, references):
    opts = options(name, speculators)
    engine = Engine(config(**opts, **batching))
    result = engine.run_batch(PROMPTS)
    expected = references[opts.get("target_layers")]
    assert [r.tokens for r in result.results] == expected
    rows = engine.config.rows
    calls = len(result.iterations)
    assert all(len(it.rows) <= rows for it in result.iterations)
    # one target call per iteration for every active row: fewer calls than decoding them one by one
    solo_calls = summarize([r.stats for r in result.results])["target_calls"]
    assert calls < solo_calls or rows == 1
    assert result.generated_tokens == sum(len(t) for t in expected)


@pytest.mark.parametrize("name", ["self_draft", "prompt_lookup_tree", "suffix"])
def test_gemma3_rows_equal_solo_target_only(name):
    """Gemma-3's local layers (window 24, which these rows pass) in continuous batches."""
    gemma = dict(model="random:tiny-gemma3:2")
    engine = Engine(config(**METHODS[name], **gemma, full_batch_size=3))
    assert [r.tokens for r in engine.run_batch(PROMPTS).results] == solo_target_only(**gemma)


def test_coupled_sampling_rows_equal_solo_coupled_target_only(speculators):
    sampling = dict(temperature=0.8, top_k=8, seed=3, verify="coupled")
    expected = solo_target_only(**sampling)
    for opts in (METHODS["target"], METHODS["draft_model_tree"], METHODS["prompt_lookup"]):
        engine = Engine(config(**opts, **sampling, batch_size=3))
        assert [r.tokens for r in engine.run_batch(PROMPTS).results] == expected, opts
    assert expected != solo_target_only()  # sampling did change the outputs


def test_a_prompt_joins_a_freed_row_mid_run():
    """Continuous batching: prompt 2 takes the row prompt 0 frees while prompt 1 is half done;
    every output equals its solo run, in input order."""
    engine = Engine(config(method="prompt_lookup", full_batch_size=2))
    caps = [3, 20, 12, 5]
    prompts = PROMPTS[:4]
    result = engine.generator.generate_batch(prompts, caps, 2, continuous=True)
    solo = [engine.generator.generate(p, cap, prompt_index=i).tokens for i, (p, cap) in enumerate(zip(prompts, caps))]
    assert [r.tokens for r in result.results] == solo
    assert [len(r.tokens) for r in result.results] == caps
    joined = next(i for i, it in enumerate(result.iterations) if 2 in it.rows)
    assert 1 in result.iterations[joined].rows and joined > 0  # prompt 1 was mid-run beside it
    assert 1 in result.iterations[joined - 1].rows and 0 in result.iterations[joined - 1].rows
    static = engine.generator.generate_batch(prompts, caps, 2, continuous=False)
    assert [r.tokens for r in static.results] == solo
    assert len(result.iterations) < len(static.iterations)  # no row idles until its batch ends


def test_fewer_prompts_than_the_batch_and_a_one_token_cap():
    engine = Engine(config(method="prompt_lookup", batch_size=8))
    result = engine.generator.generate_batch(PROMPTS[:3], [1, 4, 1], 8)
    assert [len(r.tokens) for r in result.results] == [1, 4, 1]
    assert sorted(i for it in result.iterations for i in it.finished) == [0, 1, 2]  # each reported once
    assert engine.generator._batch_cache.batch_size == 3  # sized by the rows used


TREE_DEPTHS = torch.tensor([0, 1, 1, 1, 2])
TREE_MASK = torch.tensor([[1, 0, 0, 0, 0], [1, 1, 0, 0, 0], [1, 0, 1, 0, 0], [1, 0, 0, 1, 0], [1, 1, 0, 0, 1]],
                         dtype=torch.bool)


def rows_and_alone(model: TargetModel) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """Three sequences' blocks (a chain, a tree, a decode step) in one flat forward_rows call,
    and each block's logits from forward for its sequence alone: (batched, alone in the same
    order, the rows' lengths after). Shared with the mesh's bit-exact test."""
    torch.manual_seed(0)
    prompts = [torch.randint(3, 300, (1, n)) for n in (7, 12, 4)]
    blocks = [torch.randint(3, 300, (1, n)) for n in (4, 5, 1)]
    trees = [False, True, False]
    alone = []
    for prompt, block, tree in zip(prompts, blocks, trees):
        cache = model.new_cache(64)
        model(prompt, cache, 0)
        shape = {"positions": TREE_DEPTHS + cache.length, "tree_mask": TREE_MASK} if tree else {}
        alone.append(model(block, cache, cache.length, **shape)[0])
    batch = model.new_cache(64, batch_size=4)
    rows = [batch.row(b) for b in (3, 0, 2)]
    row_blocks = []
    for prompt, block, tree, row in zip(prompts, blocks, trees, rows):
        model(prompt, row, 0)
        shape = (TREE_DEPTHS + row.length, TREE_MASK) if tree else ()
        row_blocks.append(RowBlock(row, block.shape[1], *shape))
    logits = model.forward_rows(torch.cat([b[0] for b in blocks]), row_blocks, batch)
    return logits, torch.cat(alone), [r.length for r in rows]


@pytest.mark.skipif(skinny_kernels() is None, reason="the batch-invariant CPU kernels are not available here")
def test_forward_rows_equals_one_sequence_forward_bit_for_bit():
    """The model level: three sequences' blocks (a chain, a tree, a decode step) in one flat call
    give each the logits it gets alone."""
    batched, alone, lengths = rows_and_alone(load_model(MODEL + ":5").model)
    assert torch.equal(batched, alone)
    assert lengths == [11, 17, 5]


@pytest.mark.skipif(skinny_kernels() is None, reason="the batch-invariant CPU kernels are not available here")
def test_one_token_rows_over_unequal_caches_equal_one_sequence_forward_bit_for_bit():
    """A batch's decode step: every row one token, so no mask is built and each row's own kv_len
    alone keeps it off the slots past its end (stale entries of a rejected block here, or
    another row's longer reach)."""
    model = load_model(MODEL + ":5").model
    torch.manual_seed(1)
    prompts = [torch.randint(3, 300, (1, n)) for n in (3, 11, 6)]
    rejected = torch.randint(3, 300, (1, 4))  # a block then rolled back: its entries stay, stale
    steps = torch.randint(3, 300, (len(prompts),))

    def fill(cache, prompt):
        model(prompt, cache, 0)
        model(rejected, cache, cache.length)
        cache.rollback(prompt.shape[1])

    alone = []
    for prompt, token in zip(prompts, steps):
        cache = model.new_cache(64)
        fill(cache, prompt)
        alone.append(model(token.view(1, 1), cache, cache.length)[0])
    batch = model.new_cache(64, batch_size=3)
    rows = [batch.row(b) for b in (1, 2, 0)]
    for prompt, row in zip(prompts, rows):
        fill(row, prompt)
    logits = model.forward_rows(steps, [RowBlock(row, 1) for row in rows], batch)
    assert torch.equal(logits, torch.cat(alone)), f"max difference {(logits - torch.cat(alone)).abs().max()}"
    assert [r.length for r in rows] == [4, 12, 7]


@pytest.mark.parametrize("kw, message", [
    (dict(batch_size=0), "--batch_size must be >= 1, got 0"),
    (dict(full_batch_size=0), "--full_batch_size must be >= 1, got 0"),
    (dict(full_batch_size=4, batch_size=2), "exclude each other"),
    (dict(batch_size=4, method="eagle", tree_topk=2, tree_budget="auto"), "with a batch give a number of nodes"),
    (dict(batch_size=4, batch_drafts="some"), "unknown --batch_drafts 'some'; choose from auto, all"),
])
def test_bad_batch_options_are_one_line(kw, message):
    with pytest.raises(UserError, match=message):
        config(**kw).validate()


def test_a_batch_drafts_only_what_pays_for_its_rows():
    """Rows of 4-node chains, hand-built costs (a step of the rows, a draft row): a nearly free
    row (memory-bound) keeps every node; a dearer one only nodes worth more than the rows they
    add; a row as dear as the step's share of a token, none worth less than a whole token."""
    sure, never = RowHistory(), RowHistory()
    for _ in range(50):
        sure.observe([0, 1, 2, 3], 4)  # every draft accepted
        never.observe([], 4)  # none
    assert sure.worth(1) > 0.95 and never.worth(1) < 0.05
    assert nodes_to_verify([4, 4], [sure, never], 1.0, 0.0002) == [4, 4]
    assert nodes_to_verify([4, 4], [sure, never], 1.0, 0.1) == [4, 0]  # worth ~0 does not pay
    # a new sequence drafts on the prior: its first nodes (worth 0.6, 0.48) pay, the next (0.38, 0.31) not
    assert nodes_to_verify([4, 4], [sure, RowHistory()], 1.0, 0.1) == [4, 2]
    # a sequence whose first node is accepted tries a second it never verified
    first = RowHistory()
    for _ in range(10):
        first.observe([0], 1)
    assert first.worth(2) == pytest.approx(0.8 * first.worth(1)) and first.worth(1) > 0.9
    # a row left without drafts tries one node every EXPLORE_EVERY iterations
    bad, picks = RowHistory(), []
    for _ in range(50):
        bad.observe([], 4)
    for _ in range(2 * EXPLORE_EVERY):
        picks.append(nodes_to_verify([4], [bad], 1.0, 0.1)[0])
        if picks[-1]:
            bad.observe([], picks[-1])
    assert picks == ([0] * (EXPLORE_EVERY - 1) + [1]) * 2
    assert nodes_to_verify([4, 4], [sure, RowHistory()], 2.0, 1.0) == [0, 0]
    assert nodes_to_verify([0, 4], [sure, sure], 1.0, 0.05) == [0, 4]
    # nodes come best first across rows: the second row's nodes before the first row's third
    half = RowHistory()
    for _ in range(50):
        half.observe([0, 1], 4)  # the first two accepted, never the last two
    assert nodes_to_verify([4, 4], [half, sure], 1.0, 0.008) == [2, 4]


def test_trimmed_batches_still_equal_solo_and_verify_fewer_drafts():
    auto = Engine(config(**METHODS["prompt_lookup_tree"], batch_size=5))
    every = Engine(config(**METHODS["prompt_lookup_tree"], batch_size=5, batch_drafts="all"))
    assert auto.generator.batch_cost is not None and every.generator.batch_cost is None
    # a draft row a twentieth of a step: dear enough that some drafts do not pay
    auto.generator.batch_cost = BatchCost(VerifyCost({1: 1.0, 8: 1.0}), VerifyCost({1: 1.0, 21: 2.0}))
    got = {name: e.run_batch(PROMPTS) for name, e in (("auto", auto), ("all", every))}
    assert [r.tokens for r in got["auto"].results] == [r.tokens for r in got["all"].results]
    proposed = {name: summarize([r.stats for r in g.results])["proposed_tokens"] for name, g in got.items()}
    assert 0 < proposed["auto"] < proposed["all"]


@pytest.mark.parametrize("batching", ["alone", "static", "continuous"])
def test_each_sequence_ends_once_with_its_prompt_and_output(monkeypatch, batching):
    """Proposer.finish hears every sequence end, once, with its whole token list (prompt and
    output, a prompt done at its first token included): what a proposer learning across
    sequences (suffix) reads, instead of holding a reference into the generator's context."""
    ended = []
    monkeypatch.setattr(PromptLookupProposer, "finish", lambda self, tokens: ended.append(list(tokens)))
    engine = Engine(config(method="prompt_lookup", full_batch_size=2))
    caps, prompts = [1, 9, 5], PROMPTS[:3]
    if batching == "alone":
        outputs = [engine.generator.generate(p, cap, prompt_index=i).tokens for i, (p, cap) in enumerate(zip(prompts, caps))]
    else:
        run = engine.generator.generate_batch(prompts, caps, 2, continuous=batching == "continuous")
        outputs = [r.tokens for r in run.results]
    assert sorted(ended) == sorted(p + out for p, out in zip(prompts, outputs))
