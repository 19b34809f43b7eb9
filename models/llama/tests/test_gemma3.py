"""Gemma-3 on the lean path: its local layers' sliding window under trees and batches, its config
checks, and (where installed) the real Gemma-3-270M against transformers.

Parity on random weights (prefill, cached decode, first layers) runs with every preset in
test_hf_parity.py; method equality in models/speculative/tests (test_equality, test_trees,
test_batching).
"""

from __future__ import annotations

import pytest
import torch

from models.backends.interface import RowBlock
from models.common.errors import UserError
from models.llama.config import args_from_hf_config
from models.llama.packaged import installed
from models.llama.reference import HFReference
from models.llama.tests.test_hf_parity import greedy_through_cache
from models.llama.weights import load_model, random_hf_config

PRESET = "random:tiny-gemma3:1"  # window 24, local layers 0 and 2, global 1 and 3


def tokens(n: int, seed: int) -> torch.Tensor:
    return torch.randint(3, 320, (1, n), generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def model():
    return load_model(PRESET).model


def test_layers_of_two_kinds_each_with_its_rope_base_and_window(model):
    args = model.args
    assert args.layer_kinds == (1, 0, 1, 0)  # GEMMA3_LAYER_TYPES: full_attention = 0, sliding_attention = 1
    full, local = args.attention_kinds
    assert (full.window, local.window) == (None, 24) and args.sliding_window == 24
    assert full.inv_freq[1] < local.inv_freq[1]  # RoPE base 1e6 against 1e4
    assert args.attn_scale == 24**-0.5 and args.embed_scale == 64**0.5
    assert model.truncated(1).args.layer_kinds == (1,)


def test_a_tree_past_the_window_equals_each_path_decoded_alone(model):
    """The window counts back from a node's RoPE position (where it sits once accepted), not from
    its slot in the verify block: deep branches at slots far past their positions still see the
    keys their chain decode sees, bit for bit (fp32, CPU)."""
    prefix = tokens(40, seed=2)  # past the window (24)
    a, b = [11, 12, 13, 14], [21, 22, 23]
    tree = a + b
    parents = [-1, 0, 1, 2, -1, 4, 5]  # two branches from the root's next token
    depth, mask = [], torch.zeros(len(tree), len(tree), dtype=torch.bool)
    for i, p in enumerate(parents):
        mask[i, i] = True
        if p >= 0:
            mask[i] |= mask[p]
        depth.append(0 if p < 0 else depth[p] + 1)
    cache = model.new_cache(64)
    model(prefix, cache, 0)
    got = model(torch.tensor([tree]), cache, 40, positions=40 + torch.tensor(depth), tree_mask=mask)[0]
    for branch, nodes in ((a, [0, 1, 2, 3]), (b, [4, 5, 6])):
        chain_cache = model.new_cache(64)
        model(prefix, chain_cache, 0)
        assert torch.equal(got[nodes], model(torch.tensor([branch]), chain_cache, 40)[0])


def test_rows_of_unequal_lengths_in_one_call_equal_each_alone(model):
    """forward_rows: a row past the window, one inside it and a tree, flattened into one call."""
    lengths, news = [30, 10, 45], [1, 3, 4]
    batch = model.new_cache(64, batch_size=3)
    alone = []
    blocks, flat = [], []
    tree_mask = torch.tensor([[1, 0, 0, 0], [1, 1, 0, 0], [1, 0, 1, 0], [1, 0, 1, 1]], dtype=torch.bool)
    for r, (n, k) in enumerate(zip(lengths, news)):
        prefix, new = tokens(n, seed=r), tokens(k, seed=10 + r)
        row = batch.row(r)
        model(prefix, row, 0)
        solo = model.new_cache(64)
        model(prefix, solo, 0)
        tree = r == 2
        kw = dict(positions=n + torch.tensor([0, 1, 1, 2]), tree_mask=tree_mask) if tree else {}
        alone.append(model(new, solo, n, **kw)[0])
        blocks.append(RowBlock(row, k, **kw))
        flat.append(new[0])
    got = model.forward_rows(torch.cat(flat), blocks, batch)
    assert torch.equal(got, torch.cat(alone))


@pytest.mark.parametrize("field, value, message", [
    ("final_logit_softcapping", 30.0, "soft-capping is not supported"),
    ("use_bidirectional_attention", True, "bidirectional"),
    ("hidden_activation", "relu", "hidden_activation='relu'"),
])
def test_what_the_lean_path_lacks_is_one_line(field, value, message):
    config = random_hf_config("tiny-gemma3")
    setattr(config, field, value)
    with pytest.raises(UserError, match=message):
        args_from_hf_config(config)


@pytest.mark.skipif(not installed("gemma3-270m"), reason="gemma3-270m: bash scripts/setup.sh --with-gemma3")
def test_gemma3_270m_matches_transformers():
    """The real weights: logits within fp32 noise of transformers' Gemma-3, and greedy decoding
    through the cache token for token its generate."""
    loaded = load_model("gemma3-270m")
    lean, ref = loaded.model, HFReference.for_loaded(loaded)
    prompt = loaded.tokenizer.encode("The capital of France is")
    ids = torch.tensor([prompt])
    torch.testing.assert_close(lean(ids, lean.new_cache(64), 0), ref.logits(ids), atol=2e-3, rtol=1e-4)
    assert greedy_through_cache(lean, ids, 16) == ref.greedy(prompt, 16)
