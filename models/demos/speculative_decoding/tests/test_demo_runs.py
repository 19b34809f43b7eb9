"""measure_batched: two rounds of its three phases, the second in reverse order, each phase keeping
its faster round, so that load landing on one phase does not move the ratios between phases; and
the demo's parent on a mesh, which loads no model unless a divergence needs a margin."""

from types import SimpleNamespace

import pytest

from models.backends import torch_backend
from models.common.device import open_device
from models.common.prompts import Prompt
from models.demos.speculative_decoding.demo_runs import MeshParent, describe_proposer, measure_batched
from models.speculative.engine import RunConfig


class FakeEngine:
    """Records the order of the timed phases; each call takes the next scripted wall time."""

    def __init__(self, seconds: dict[str, list[float]], tokens: dict[str, list[list[int]]] | None = None):
        """seconds and tokens: per phase, what each of its calls takes and decodes (tokens: [1, 2])."""
        self.seconds = {k: list(v) for k, v in seconds.items()}
        self.tokens = tokens or {}
        self.calls: list[str] = []
        self.proposer = object()
        self.config = SimpleNamespace(method="fake")
        self.generator = SimpleNamespace(forget=lambda: self.calls.append("forget"))
        self.model = SimpleNamespace(capabilities=SimpleNamespace(batch_invariant=True))

    def warm_up(self, ids):
        self.calls.append("warm_up")

    def _next(self, phase: str) -> tuple[float, list[int]]:
        self.calls.append(phase)
        per_call = self.tokens.get(phase)
        return self.seconds[phase].pop(0), (per_call.pop(0) if per_call else [1, 2])

    def run(self, ids, baseline, prompt_index):
        seconds, tokens = self._next("solo")
        return SimpleNamespace(tokens=tokens, stats=SimpleNamespace(ttft_s=0.0, decode_seconds=seconds))

    def run_batch(self, encoded, baseline=False, on_iteration=None):
        seconds, tokens = self._next("base" if baseline else "spec")
        return SimpleNamespace(seconds=seconds, results=[SimpleNamespace(tokens=tokens) for _ in encoded])


def test_two_rounds_the_second_reversed_each_phase_keeping_its_faster_round():
    # one prompt: solo is one call per round; the load lands on round 1's batched target-only
    # and on round 2's method
    engine = FakeEngine({"solo": [1.0, 1.2], "base": [3.0, 0.5], "spec": [0.25, 2.0]})
    runs = measure_batched(engine, [[7, 8]], log=False)
    assert engine.calls == ["warm_up", "solo", "base", "spec", "forget", "spec", "base", "solo"]
    assert runs.solo[0].stats.decode_seconds == 1.0
    assert (runs.base.seconds, runs.spec.seconds) == (0.5, 0.25)


def test_rounds_that_decode_different_tokens_fail():
    engine = FakeEngine({"solo": [1.0, 1.0], "base": [1.0, 1.0], "spec": [1.0, 1.0]},
                        tokens={"spec": [[1, 2], [1, 3]]})
    with pytest.raises(AssertionError, match="batched method: the two timed rounds decoded different tokens"):
        measure_batched(engine, [[7, 8]], log=False)


def test_the_parent_of_a_mesh_run_loads_no_model_until_a_margin_is_needed(monkeypatch):
    loads = []
    real = torch_backend.load
    monkeypatch.setattr(torch_backend, "load", lambda *a, **k: loads.append(a[0]) or real(*a, **k))
    config = RunConfig(model="random:tiny-llama", method="prompt_lookup", device="cpu", mesh_shape="1x2",
                       instruct=False)
    parent = MeshParent(config, open_device("cpu"))
    ids = parent.encode([Prompt("hello hello")])
    assert ids == [parent.tokenizer.encode("hello hello")] and len(ids[0]) > 2
    assert parent.spec.is_chain and "built on each mesh worker" in describe_proposer(parent)
    assert loads == []  # the tokenizer alone
    assert parent.top2_margin_after(ids[0], []) > 0
    assert loads == ["random:tiny-llama"]  # now, once
    parent.top2_margin_after(ids[0], [5])
    assert loads == ["random:tiny-llama"]
