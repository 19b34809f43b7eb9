"""The llama.cpp backend: refused in one line where it cannot run; where llama-cpp-python is
installed, the default model's own Q4_1 GGUF through the conformance kit's checks and the
model-free methods against its own target-only output."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from models.backends import registry
from models.backends.llama_cpp_backend import gguf_of
from models.common.errors import UserError
from models.llama.packaged import installed

needs_llama_cpp = pytest.mark.skipif(
    importlib.util.find_spec("llama_cpp") is None or not installed("smollm2-135m"),
    reason="llama-cpp-python is not installed (bash scripts/setup.sh --with-llama-cpp)")


@pytest.mark.parametrize("spec", ["random:tiny-llama", "/no/such/model.gguf", "."])
def test_a_spec_that_is_no_gguf_is_one_line(spec):
    with pytest.raises(UserError, match="backend llama_cpp decodes a GGUF: give smollm2-135m or gemma3-270m"):
        gguf_of(spec)


def test_without_the_package_the_backend_says_how_to_add_it(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "llama_cpp" else real(name, *a))
    with pytest.raises(UserError, match="--backend llama_cpp: needs llama-cpp-python.*--with-llama-cpp"):
        registry.backend("llama_cpp").implementation()


@pytest.fixture(scope="module")
def target():
    from models.backends import llama_cpp_backend
    from models.common.device import open_device

    return llama_cpp_backend.load("smollm2-135m", None, open_device("cpu"))


@needs_llama_cpp
def test_rollback_and_a_second_cache_leave_every_cache_correct(target):
    """A chain verified then rolled back, and a third cache taking a context over, give the
    logits the same sequence gets decoded straight (llama.cpp's own rounding aside)."""
    model = target.model
    prompt = target.tokenizer.encode("The capital of France is", chat=True)
    straight = model.new_cache(64)
    model(torch.tensor([prompt]), straight, 0, logits_for="none")
    nxt = model(torch.tensor([[11]]), straight, len(prompt))[0, -1]

    cache = model.new_cache(64)
    model(torch.tensor([prompt]), cache, 0, logits_for="none")
    model(torch.tensor([[5, 6, 7]]), cache, len(prompt))  # a rejected chain
    others = [model.new_cache(64) for _ in range(2)]  # take both contexts over
    for other in others:
        model(torch.tensor([prompt[:3]]), other, 0, logits_for="none")
    cache.rollback(len(prompt))
    again = model(torch.tensor([[11]]), cache, len(prompt))[0, -1]
    assert int(again.argmax()) == int(nxt.argmax())
    assert float((again - nxt).abs().max()) < 0.05 * (1 + float(nxt.abs().max()))


@needs_llama_cpp
@pytest.mark.parametrize("method", ["prompt_lookup", "suffix"])
def test_model_free_methods_equal_llama_cpp_target_only(method):
    from models.common.correctness import compare
    from models.speculative.engine import Engine, RunConfig

    common = dict(model="smollm2-135m", backend="llama_cpp", max_generated_tokens=48, max_seq_len=256)
    prompts = ["Repeat this list exactly: red, green, blue, red, green, blue, red.",
               "def add(a, b):\n    return a + b\n\n# the same function, renamed to plus:\n"]
    base = Engine(RunConfig(method="target", **common))
    engine = Engine(RunConfig(method=method, n_draft_tokens=4, **common))
    for ids in (base.tokenizer.encode(p, chat=True) for p in prompts):
        expected = base.run(ids).tokens
        got = engine.run(ids)
        # llama.cpp rounds a verify block and a decode step differently: equal up to a near-tie
        comparison = compare(expected, got.tokens, exact=False,
                             margin_at=lambda prefix, ids=ids: base.top2_margin_after(ids, prefix))
        assert comparison.ok, comparison.describe()
        assert len(got.stats.iterations) < len(got.tokens) - 1  # drafts were accepted: fewer llama.cpp calls
