"""The conformance kit as tests: `pytest models/conformance --backend NAME --target_model M`
(default: the torch backend on a tiny random model, which CI runs). Each check is one test and
fails on any mismatch; the table of every check (exact, near-tie, mismatch, and where each
divergence is, with the target's top-2 margin) is printed after the run."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import pytest
import torch

from models.backends.registry import DEFAULT_BACKEND, backend
from models.common.device import open_device, requested_device_name
from models.common.errors import UserError
from models.conformance import kit
from models.llama.reference import HFReference
from models.speculative.engine import Engine, RunConfig
from models.speculative.proposers.base import REGISTRY

KIT_MODEL = "random:tiny-llama"
PROMPT_TOKENS = 24  # prompt + decode stay inside the CPU kernels' batch-invariant 64 rows
MAX_GENERATED = 24
TABLES: dict[tuple[str, str], str] = {}  # (backend, model) -> its table, printed by conftest.py


@dataclasses.dataclass
class Subject:
    """The backend and model under test, loaded once per run."""

    backend: str
    model: str
    device: str
    dtype: str | None
    target: object  # its TargetModel, as decoding calls it
    prompts: list[list[int]]
    reference: Callable[[list[int]], torch.Tensor] | None  # transformers' logits [T, V] on the same weights
    results: dict[str, kit.CheckResult] = dataclasses.field(default_factory=dict)

    def record(self, result: kit.CheckResult) -> kit.CheckResult:
        self.results[result.check] = result
        TABLES[(self.backend, self.model)] = kit.table(self.backend, self.model, self.target,
                                                      list(self.results.values()))
        return result


@pytest.fixture(scope="module")
def subject(request) -> Subject:
    name = request.config.getoption("--backend") or DEFAULT_BACKEND
    model = request.config.getoption("--target_model") or KIT_MODEL
    device_name = requested_device_name(request.config.getoption("--device"))
    try:
        impl = backend(name).implementation()
        weights = backend(name).weight_format(request.config.getoption("--weights"))
        device = open_device(device_name, request.config.getoption("--dtype"), weights=weights)
    except UserError as exc:  # asked for by name: a failure; the default's absence (no device): a skip
        if request.config.getoption("--backend"):
            pytest.fail(str(exc), pytrace=False)
        pytest.skip(str(exc))
    if device.mesh != "1x1" or ":" in device_name:
        pytest.skip(f"the kit checks one device; {device_name} is a mesh")
    loaded = impl.load(model, None, device)
    target = impl.runner(loaded.model, device, kit.SEQUENCE_ROWS)
    prompts = [loaded.tokenizer.encode(text, chat=False)[:PROMPT_TOKENS] for text in kit.PROMPTS]
    return Subject(name, model, device_name, request.config.getoption("--dtype"), target, prompts,
                   reference_logits(loaded))


def reference_logits(loaded) -> Callable[[list[int]], torch.Tensor] | None:
    """transformers' logits [T, V] on the loaded weights (fp32 on the CPU), or None where it cannot
    load them."""
    try:
        ref = (HFReference.for_random_loaded(loaded) if loaded.name.startswith("random:")
               else HFReference.for_loaded(loaded))
    except ValueError:
        return None
    return lambda tokens: ref.logits(torch.tensor([tokens]))[0]


def _assert(subject: Subject, result: kit.CheckResult) -> None:
    subject.record(result)
    assert result.ok, TABLES[(subject.backend, subject.model)]


def test_prefill_equals_the_reference_model(subject):
    """transformers' model on the same weights, where it loads them (a checkpoint folder, a GGUF
    converted to one, or a random:PRESET)."""
    if subject.reference is None:
        pytest.skip(f"transformers has no folder for {subject.model} to load")
    _assert(subject, kit.check_reference(subject.target, subject.reference, subject.prompts))


def test_prefill_then_decode_equals_one_prefill(subject):
    _assert(subject, kit.check_prefill_decode(subject.target, subject.prompts))


def test_chain_verify_equals_decode_steps(subject):
    _assert(subject, kit.check_chain_verify(subject.target, subject.prompts))


def test_rollback_then_redecode(subject):
    _assert(subject, kit.check_rollback(subject.target, subject.prompts))


def test_tree_in_one_pass_equals_each_path(subject):
    _assert(subject, kit.check_tree(subject.target, subject.prompts))


def test_row_batched_equals_row_alone(subject):
    _assert(subject, kit.check_batched_rows(subject.target, subject.prompts))


def method_configs(subject: Subject) -> dict[str, RunConfig]:
    """Every registered method (chains, and trees where they apply) on this backend and model."""
    base = RunConfig(model=subject.model, backend=subject.backend, device=subject.device, dtype=subject.dtype,
                     max_generated_tokens=MAX_GENERATED, max_seq_len=128, instruct=False)
    n_layers = subject.target.n_layers
    extra = {"self_draft": {"draft_layers": max(1, n_layers // 2)}, "multi": {"proposers": "prompt_lookup,suffix"}}
    configs = {m: dataclasses.replace(base, method=m, n_draft_tokens=3, **extra.get(m, {})) for m in REGISTRY}
    configs["prompt_lookup tree"] = dataclasses.replace(base, method="prompt_lookup", tree_topk=2, tree_depth=3,
                                                        tree_budget=6)
    configs["suffix batch"] = dataclasses.replace(base, method="suffix", n_draft_tokens=3, batch_size=2)
    return configs


def test_every_method_equals_target_only(subject):
    engines = {label: (lambda c=config: Engine(c)) for label, config in method_configs(subject).items()}
    result = kit.check_methods(engines, subject.prompts)
    _assert(subject, result)
    assert sum(result.counts.values()) > 0, "no method ran"
