"""Static KV cache: O(1) rollback, stale entries masked, explicit masks (chain, tree, static)."""

import dataclasses

import pytest
import torch

from models.common.errors import UserError
from models.llama.kv_cache import KVCache, cache_bytes_per_token
from models.llama.weights import load_model


@pytest.fixture(scope="module")
def model():
    return load_model("random:tiny-llama:11").model


def tokens(n, seed=0, vocab=320):
    return torch.randint(3, vocab, (1, n), generator=torch.Generator().manual_seed(seed))


def test_rollback_then_rewrite_equals_a_fresh_run(model):
    seq = tokens(30)
    fresh = model(seq, model.new_cache(64), 0)
    cache = model.new_cache(64)
    model(seq[:, :20], cache, 0)
    model(tokens(6, seed=9), cache, 20)  # "drafts" that get rejected
    cache.rollback(20)  # O(1): only the length moves
    assert cache.length == 20
    got = model(seq[:, 20:], cache, 20)
    assert torch.equal(got, fresh[:, 20:])


def test_rollback_is_only_a_length_change():
    cache = KVCache(2, 1, 8, 16)
    cache.k.fill_(1.0)
    cache.length = 10
    cache.rollback(4)
    assert cache.length == 4 and bool((cache.k == 1.0).all())  # nothing copied or cleared
    with pytest.raises(ValueError):
        cache.rollback(5)


def test_appends_are_checked_with_a_clear_message(model):
    cache = model.new_cache(16)
    model(tokens(14), cache, 0)
    with pytest.raises(UserError, match="exceeds max_seq_len=16"):
        model(tokens(3), cache, 14)
    with pytest.raises(ValueError, match="roll back first"):
        model(tokens(1), cache, 15)  # past the live entries: would attend to a stale slot
    cache.rollback(10)
    with pytest.raises(ValueError, match="roll back first"):
        model(tokens(1), cache, 12)  # a rollback one slot short would be caught, not read


def test_compact_moves_the_kept_rows_into_place():
    cache = KVCache(2, 1, 1, 16)
    cache.k[:, 0, 0, :, 0] = torch.arange(16, dtype=torch.float32)
    cache.v.copy_(-cache.k)
    cache.length = 12
    cache.compact(4, [0, 2, 5, 7])  # root at slot 4, accepted nodes at slots 6, 9, 11
    assert cache.length == 8
    assert cache.k[1, 0, 0, :8, 0].tolist() == [0, 1, 2, 3, 4, 6, 9, 11]
    assert cache.v[0, 0, 0, :8, 0].tolist() == [-0.0, -1, -2, -3, -4, -6, -9, -11]
    cache.compact(4, [0, 1])  # a chain prefix: nothing moves
    assert cache.length == 6 and cache.k[0, 0, 0, 5, 0] == 6


def test_view_shares_memory_and_has_its_own_length():
    cache = KVCache(4, 1, 8, 16)
    cache.length = 7
    view = KVCache.view(cache, 2)
    assert view.k.data_ptr() == cache.k.data_ptr() and view.n_layers == 2 and view.length == 7
    view.length = 9
    assert cache.length == 7


def test_static_start_equals_eager(model):
    """A tensor start (graph-capturable: whole cache, masked) gives the eager logits exactly."""
    seq = tokens(24, seed=2)
    eager_cache, static_cache = model.new_cache(48), model.new_cache(48)
    model(seq[:, :16], eager_cache, 0)
    model(seq[:, :16], static_cache, 0)
    static_cache.k[:, :, :, 16:] = 1e3  # stale garbage past the block must stay invisible
    static_cache.v[:, :, :, 16:] = 1e3
    for start, size in [(16, 5), (21, 1), (22, 2)]:
        block = seq[:, start : start + size]
        expected = model(block, eager_cache, start)
        got = model(block, static_cache, torch.tensor(start))
        assert torch.equal(got, expected)


def test_tree_mask_equals_separate_chains(model):
    """A two-branch tree verified in one pass gives each branch's chain logits."""
    prefix = tokens(10, seed=3)
    a, b = [7, 8, 9], [7, 20, 21]  # share the first node
    cache = model.new_cache(32)
    model(prefix, cache, 0)
    # nodes: 0:7  1:8  2:9  3:20  4:21 ; parents 0<-, 1<-0, 2<-1, 3<-0, 4<-3
    tree_tokens = torch.tensor([[7, 8, 9, 20, 21]])
    parents = [-1, 0, 1, 0, 3]
    mask = torch.zeros(5, 5, dtype=torch.bool)
    depth = []
    for i, p in enumerate(parents):
        mask[i, i] = True
        d, j = 0, p
        while j >= 0:
            mask[i, j] = True
            j, d = parents[j], d + 1
        depth.append(d)
    got = model(tree_tokens, cache, 10, positions=10 + torch.tensor(depth), tree_mask=mask)[0]
    for branch, nodes in [(a, [0, 1, 2]), (b, [0, 3, 4])]:
        c = model.new_cache(32)
        model(prefix, c, 0)
        chain = model(torch.tensor([branch]), c, 10)[0]
        torch.testing.assert_close(got[nodes], chain, atol=1e-5, rtol=1e-5)


def test_sliding_window_is_applied():
    mistral = load_model("random:tiny-mistral:1").model
    assert mistral.args.sliding_window == 48
    no_window = load_model("random:tiny-mistral:1").model
    kinds = tuple(dataclasses.replace(k, window=None) for k in no_window.args.attention_kinds)
    no_window.args = dataclasses.replace(no_window.args, attention_kinds=kinds)
    seq = tokens(60, seed=4)
    with_w = mistral(seq, mistral.new_cache(64), 0)
    without = no_window(seq, no_window.new_cache(64), 0)
    assert torch.equal(with_w[:, :48], without[:, :48])  # inside the window: the same
    assert not torch.allclose(with_w[:, 50:], without[:, 50:])  # beyond: early tokens dropped


def test_left_padded_batch_equals_separate_runs(model):
    """Prompts of unequal length in one batch: each row's logits equal its own unpadded run."""
    lengths = [5, 9, 12]
    rows = [tokens(n, seed=10 + n)[0] for n in lengths]
    width = max(lengths)
    batch = torch.zeros(len(rows), width, dtype=torch.int64)
    for b, r in enumerate(rows):
        batch[b, width - len(r):] = r
    pad = torch.tensor([width - n for n in lengths])
    cache = model.new_cache(32, batch_size=len(rows))
    got = model(batch, cache, 0, pad=pad)
    step = model(torch.tensor([[7], [8], [9]]), cache, width, pad=pad)  # one decode step
    for b, r in enumerate(rows):
        c = model.new_cache(32)
        alone = model(r[None], c, 0)[0]
        torch.testing.assert_close(got[b, pad[b]:], alone, atol=1e-4, rtol=1e-4)
        alone_step = model(torch.tensor([[7 + b]]), c, len(r))[0]
        torch.testing.assert_close(step[b], alone_step, atol=1e-4, rtol=1e-4)


def test_bytes_per_token_is_what_a_cache_allocates():
    cache = KVCache(3, 2, 16, 10, batch_size=2, dtype=torch.float32)
    per_token = cache_bytes_per_token(3, 2, 16, torch.float32)
    assert (cache.k.numel() + cache.v.numel()) * 4 == per_token * 10 * 2
