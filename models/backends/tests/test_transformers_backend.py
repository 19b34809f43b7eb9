"""The transformers backend declares only what it does: token trees off where a model's own
check disagrees (ALiBi) or a sliding window would need to be in the mask, recurrent layers
refused, random:PRESET cut to its first layers as the torch backend cuts it."""

from __future__ import annotations

import pytest
import torch
import transformers
from transformers import AutoModelForCausalLM

from models.backends import registry, torch_backend, transformers_backend
from models.backends.transformers_backend import HFTarget
from models.common.device import open_device
from models.common.errors import UserError
from models.conformance import kit
from models.speculative.engine import Engine, RunConfig


def tiny(name: str, **kw) -> tuple:
    config = getattr(transformers, name)(**kw)
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config), config


@pytest.mark.parametrize("name, kw", [
    ("BloomConfig", dict(vocab_size=100, hidden_size=32, n_layer=2, n_head=4)),  # raises on a 4-D mask
    ("MptConfig", dict(vocab_size=100, d_model=32, n_layers=2, n_heads=4, max_seq_len=128)),  # ALiBi by slot
])
def test_a_model_whose_trees_disagree_with_its_paths_declares_chains(name, kw):
    target = HFTarget(*tiny(name, **kw), name)
    assert not target.capabilities.tree_masks


def test_a_model_whose_trees_agree_declares_them():
    target = HFTarget(*tiny("GPTNeoXConfig", vocab_size=100, hidden_size=32, num_hidden_layers=2,
                            num_attention_heads=4, intermediate_size=64), "neox")
    assert target.capabilities.tree_masks


def test_sliding_window_layers_verify_chains_and_trees_are_refused():
    loaded = transformers_backend.load("random:tiny-mistral", None, open_device("cpu"))
    assert not loaded.model.capabilities.tree_masks
    assert kit.check_tree(loaded.model, [[1, 2, 3]]).skipped
    with pytest.raises(UserError, match="--tree_topk 2 needs token trees verified in one pass"):
        Engine(RunConfig(model="random:tiny-mistral", backend="transformers", tree_topk=2, tree_budget=4))


def test_recurrent_layers_are_refused_in_one_line():
    model, config = tiny("Lfm2Config", vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, layer_types=["conv", "full_attention"])
    with pytest.raises(UserError) as info:
        HFTarget(model, config, "lfm2-folder")
    assert "lfm2 has recurrent or linear-attention layers" in str(info.value) and "\n" not in str(info.value)


def test_random_first_layers_are_the_torch_backends_first_layers():
    device = open_device("cpu")
    ids = torch.tensor([[1, 5, 9, 13, 17, 21]])
    for n_layers in (None, 2):
        ours = torch_backend.load("random:tiny-llama", n_layers, device).model
        theirs = transformers_backend.load("random:tiny-llama", n_layers, device).model
        a = ours(ids, ours.new_cache(8), 0)[0]
        b = theirs(ids, theirs.new_cache(8), 0)[0]
        assert float((a - b).abs().max()) < 1e-4, n_layers


@pytest.mark.parametrize("name", list(registry.BACKENDS))
def test_every_available_backend_implements_load_runner_and_tokenizer(name):
    entry = registry.BACKENDS[name]
    if entry.why_unavailable() is not None:
        pytest.skip(entry.why_unavailable())
    module = entry.implementation()
    assert callable(module.load) and callable(module.runner) and callable(module.load_tokenizer)


PROMPTS = [[1, *(b + 3 for b in text)] for text in (b"the cat sat on the mat. the cat sat on", b"zq",
                                                      b"abc abc abc abc ab", b"0123456789 0123456789 012")]


@pytest.mark.parametrize("batching", [dict(batch_size=2), dict(full_batch_size=3)], ids=["static-2", "continuous-3"])
@pytest.mark.parametrize("method", [dict(method="prompt_lookup"), dict(method="suffix", tree_topk=3, tree_budget=8)],
                         ids=["prompt_lookup", "suffix-tree"])
def test_batched_rows_equal_each_row_alone(batching, method):
    """Each row its own cache and call: the batch decodes every prompt as target-only alone does."""
    common = dict(model="random:tiny-llama", backend="transformers", instruct=False, max_generated_tokens=20,
                  max_seq_len=96)
    solo = Engine(RunConfig(method="target", **common))
    expected = [solo.run(p).tokens for p in PROMPTS]
    engine = Engine(RunConfig(**method, **batching, batch_drafts="all", **common))
    assert [r.tokens for r in engine.run_batch(PROMPTS).results] == expected


def test_the_kits_batched_row_check_runs():
    target = transformers_backend.load("random:tiny-llama", None, open_device("cpu")).model
    result = kit.check_batched_rows(target, PROMPTS)
    assert not result.skipped and result.counts[kit.MISMATCH] == 0 and sum(result.counts.values()) == 7
