"""The backend registry and the capability refusals: what a backend cannot do is refused in one
line before any decoding, and a backend that cannot run here says so instead of pretending."""

from __future__ import annotations

import dataclasses
import sys
import types

import pytest

from models.backends import registry, torch_backend
from models.backends.interface import Cache, TargetModel
from models.common.device import open_device
from models.common.errors import UserError
from models.speculative.engine import Engine, RunConfig

MODEL = "random:tiny-llama"


@pytest.mark.parametrize("name", ["ttnn", "qefficient"])
def test_hardware_backends_are_refused_in_one_line(name):
    with pytest.raises(UserError) as info:
        RunConfig(model=MODEL, backend=name).validate()
    text = str(info.value)
    assert text.startswith(f"--backend {name}:") and "not available here" in text and "\n" not in text


def test_unknown_backend_names_the_choices():
    choices = "torch, transformers, llama_cpp, ttnn, qefficient"
    with pytest.raises(UserError, match=f"unknown --backend 'tpu'; choose from {choices}"):
        registry.backend("tpu")


def test_torch_model_meets_the_interface():
    device = open_device("cpu")
    loaded = torch_backend.load(MODEL, None, device)
    runner = torch_backend.runner(loaded.model, device, 8)
    for model in (loaded.model, runner):
        assert isinstance(model, TargetModel)
        assert model.backend == "torch" and model.vocab_size == loaded.hf_config.vocab_size
    assert isinstance(loaded.model.new_cache(16, 2).row(1), Cache)
    assert runner.capabilities.traced is False and runner.capabilities.batch_invariant


@pytest.fixture
def limited_backend(monkeypatch):
    """install(**capabilities): a 'limited' backend, the torch model declaring those capabilities off."""
    def install(**missing: bool) -> None:
        module = types.ModuleType("limited_backend")
        module.load = torch_backend.load

        def runner(model, device, max_block):
            wrapped = torch_backend.runner(model, device, max_block)
            caps = dataclasses.replace(wrapped.capabilities, **missing)
            wrapped.__class__ = type("Limited", (type(wrapped),), {"capabilities": property(lambda self: caps),
                                                              "backend": "limited"})
            return wrapped

        module.runner = runner
        monkeypatch.setitem(sys.modules, "limited_backend", module)
        monkeypatch.setitem(registry.BACKENDS, "limited", registry.Backend("limited", "test", "limited_backend"))
    return install


@pytest.mark.parametrize("missing, options, needs", [
    ({"batch_rows": False}, {"batch_size": 2}, "--batch_size 2 needs several sequences in one call (batch_rows)"),
    ({"batch_rows": False}, {"full_batch_size": 3}, "--full_batch_size 3 needs several sequences"),
    ({"tree_masks": False}, {"tree_topk": 2, "tree_depth": 2, "tree_budget": 3}, "--tree_topk 2 needs token trees"),
    ({"tree_masks": False}, {"method": "multi", "proposers": "prompt_lookup,suffix"},
     "--method multi (its proposers' drafts merge into a tree) needs token trees verified in one pass"),
    ({"layer_skip": False}, {"method": "self_draft", "draft_layers": 2}, "--method self_draft needs a view on its "
                                                                         "first layers (layer_skip)"),
    # refused before the head loads: no eagle head is shipped for this model, which would say so instead
    ({"hidden_states": False}, {"method": "eagle"}, "--method eagle needs the target's hidden states"),
    ({"torch_weights": False}, {"method": "multi_projection"}, "--method multi_projection needs torch embedding"),
    ({"hidden_states": False}, {"method": "multi", "proposers": "eagle,prompt_lookup"},
     "--proposers eagle,prompt_lookup (its eagle) needs the target's hidden states"),
    ({"dtypes": ("bfloat16",)}, {}, "--dtype float32: backend 'limited' runs bfloat16"),
])
def test_a_missing_capability_is_refused_before_decoding(limited_backend, missing, options, needs):
    limited_backend(**missing)
    with pytest.raises(UserError) as info:
        Engine(RunConfig(model=MODEL, backend="limited", **{"method": "prompt_lookup", **options}))
    text = str(info.value)
    assert needs in text and "\n" not in text
    if "dtypes" not in missing:
        assert "which backend 'limited' does not provide; use --backend torch" in text


def test_a_backend_without_sharding_is_refused_on_a_tp_mesh(limited_backend):
    limited_backend()
    with pytest.raises(UserError, match="--backend limited has no tensor-parallel sharding; a tp 2 mesh needs "
                                        "--backend torch"):
        RunConfig(model=MODEL, backend="limited", device="cpu", mesh_shape="1x2").validate()
    RunConfig(model=MODEL, backend="torch", device="cpu", mesh_shape="1x2").validate()


def test_a_backend_with_every_capability_builds(limited_backend):
    limited_backend()
    engine = Engine(RunConfig(model=MODEL, backend="limited", method="self_draft", draft_layers=2))
    ids = [1, 2, 3, 1, 2, 3, 1, 2]
    assert engine.run(ids).tokens == engine.run(ids, baseline=True).tokens
