"""The traced path's logic (static buffers, capture position, cache length) on the CPU, with a
stand-in graph that reruns the captured call the way a CUDA graph replays it."""

import torch

from models.llama.trace import TracedModel
from models.llama.weights import load_model
from models.speculative.generator import Generator
from models.speculative.proposers.draft_model import DraftModelProposer


def test_replayed_steps_equal_eager_steps_and_keep_the_cache_intact():
    model = load_model("random:tiny-llama:61").model
    traced = TracedModel(model, traced=True, max_block=4, graph="replay")
    seq = torch.randint(3, 320, (1, 40), generator=torch.Generator().manual_seed(0))
    eager_cache, traced_cache = model.new_cache(64), model.new_cache(64)
    model(seq[:, :20], eager_cache, 0)
    traced(seq[:, :20], traced_cache, 0)  # prefill (start 0) runs eagerly
    pos = 20
    for size in [1, 4, 1, 3, 1, 1, 4, 2]:  # decode and verify blocks, each shape captured once
        block = seq[:, pos : pos + size]
        expected = model(block, eager_cache, pos)
        got = traced(block, traced_cache, pos)
        assert torch.equal(got, expected)
        assert traced_cache.length == pos + size
        pos += size
    assert traced.n_graphs == 4
    # capturing wrote only past the live entries: the cached prefix is what eager wrote
    assert torch.equal(traced_cache.k[:, :, :, :pos], eager_cache.k[:, :, :, :pos])


def test_generation_through_traces_equals_eager():
    loaded = load_model("random:tiny-llama:62")
    model, eos = loaded.model, loaded.tokenizer.eos_token_ids
    prompt = loaded.tokenizer.encode("traces replay the same numbers")
    eager = Generator(model, None, max_seq_len=128, eos_token_ids=eos).generate(prompt, 30).tokens
    traced = TracedModel(model, traced=True, max_block=5, graph="replay")
    draft = TracedModel(load_model("random:tiny-llama:62", n_layers=2).model, traced=True, max_block=2,
                        graph="replay")
    proposer = DraftModelProposer(draft, 128, target_vocab_size=model.args.vocab_size)
    spec = Generator(traced, proposer, n_draft_tokens=4, max_seq_len=128, eos_token_ids=eos)
    assert spec.generate(prompt, 30).tokens == eager
    assert Generator(traced, None, max_seq_len=128, eos_token_ids=eos).generate(prompt, 30).tokens == eager


def test_outputs_can_be_kept_and_graphs_go_with_their_cache():
    """A returned tensor is the caller's: the next replay of that shape does not overwrite it.
    Graphs are keyed by the cache object and dropped with it (a graph pins its cache's memory)."""
    import gc

    model = load_model("random:tiny-llama:63").model
    traced = TracedModel(model, traced=True, max_block=2, graph="replay")
    cache = model.new_cache(32)
    traced(torch.tensor([[5, 6, 7]]), cache, 0)
    first = traced(torch.tensor([[8]]), cache, 3)
    kept = first.clone()
    traced(torch.tensor([[9]]), cache, 4)
    assert torch.equal(first, kept)
    assert traced.n_graphs == 1
    other = model.new_cache(32)
    traced(torch.tensor([[5, 6, 7]]), other, 0)
    traced(torch.tensor([[8]]), other, 3)
    assert traced.n_graphs == 2
    del cache
    gc.collect()
    assert traced.n_graphs == 1


def test_tree_blocks_replay_with_their_positions_and_mask():
    """A token tree verified through a graph (positions and ancestor mask as inputs) gives the
    eager logits, for trees of several shapes sharing one block length."""
    from models.speculative.tree import DraftTree

    model = load_model("random:tiny-llama:64").model
    traced = TracedModel(model, traced=True, max_block=6, graph="replay")
    seq = torch.randint(3, 320, (1, 20), generator=torch.Generator().manual_seed(1))
    eager_cache, traced_cache = model.new_cache(64), model.new_cache(64)
    model(seq, eager_cache, 0)
    traced(seq, traced_cache, 0)
    for parents in [(-1, -1, 0, 1, 1), (-1, 0, 0, 2, -1), (-1, 0, 1, 2, 3)]:
        tree = DraftTree(torch.randint(3, 320, (5,), generator=torch.Generator().manual_seed(len(parents))), parents)
        block = torch.cat([torch.tensor([7]), tree.tokens])[None]
        shape = {"positions": tree.positions(20) if not tree.is_chain else 20 + torch.arange(6),
                 "tree_mask": tree.attention_mask() if not tree.is_chain else torch.ones(6, 6, dtype=torch.bool).tril()}
        expected = model(block, eager_cache, 20, **shape)
        got = traced(block, traced_cache, 20, **shape)
        assert torch.equal(got, expected)
        eager_cache.rollback(20)
        traced_cache.rollback(20)
    assert traced.n_graphs == 1  # one tree graph for block length 6
