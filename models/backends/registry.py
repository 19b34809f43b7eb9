"""The backends a run can pick with --backend, and why one is not available here.

A backend turns a model spec into a LoadedModel whose model is a TargetModel
(models/backends/interface.py), and wraps the model that decodes in its runner (CUDA graphs for
torch). Backends for hardware this machine lacks are listed so that asking for one says so in one
line instead of pretending.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
from collections.abc import Callable
from typing import Any

from models.common.errors import UserError

DEFAULT_BACKEND = "torch"


@dataclasses.dataclass(frozen=True)
class Backend:
    name: str
    summary: str  # one line for --help and the docs
    # implements load(spec, n_layers, device, tp), runner(model, device, max_block) and load_tokenizer(spec)
    module: str | None
    why_unavailable: Callable[[], str | None] = lambda: None  # None: usable on this machine
    tensor_parallel: bool = False  # load() shards the model over a mesh's tp group
    weights: tuple[str, ...] = ("fp32",)  # the weight formats it runs (--weights), its default first
    # the format it runs when --weights is not given, for (model, device, dtype, tp); None: its first
    default_weights: Callable[[str, str, str | None, int], str] | None = None

    def weight_format(self, requested: str | None, model: str | None = None, device: str = "cpu",
                      dtype: str | None = None, tp: int = 1) -> str:
        """--weights as this backend runs it: when not given, its default for this target and
        device (without a model: its first format); one a backend lacks is one line."""
        if requested is None:
            if self.default_weights is None or model is None:
                return self.weights[0]
            return self.default_weights(model, device, dtype, tp)
        if requested not in self.weights:
            raise UserError(f"--weights {requested}: backend {self.name} runs {' or '.join(self.weights)}")
        return requested

    def check(self) -> None:
        """One line when this backend cannot run here."""
        why = self.why_unavailable()
        if why is not None:
            raise UserError(f"--backend {self.name}: {why}")

    def implementation(self) -> Any:
        self.check()
        return importlib.import_module(self.module)


def _missing(package: str, what: str) -> Callable[[], str | None]:
    """Unavailable (with what it needs) unless `package` imports; even then no implementation is
    shipped yet, so it says that instead of pretending."""
    def why() -> str | None:
        if importlib.util.find_spec(package) is None:
            return f"needs {what} and the {package} package, which this machine does not have: not available here"
        return f"the {package} package is installed, but this suite has no {package} backend yet: not available here"
    return why


def _needs_llama_cpp() -> str | None:
    if importlib.util.find_spec("llama_cpp") is None:
        return ("needs llama-cpp-python, which is not installed: bash scripts/setup.sh --with-llama-cpp "
                "(the llama-cpp extra; it builds llama.cpp, about 9 minutes on 2 cores)")
    return None


def _torch_default_weights(model: str, device: str, dtype: str | None, tp: int) -> str:
    """gguf wherever it runs: a GGUF target on the CPU in float32, unsharded, with the CPU kernels
    built. There it is the faster format at every row count a call verifies (decode 2.6x, 8 rows
    1.8x, 64 rows 1.6x on SmolLM2, docs/weights.md), with the same outputs bit for bit. fp32 elsewhere."""
    from models.common.cpu_kernels import skinny_kernels
    from models.llama.weights import has_gguf

    on_cpu = device.strip().lower().split(":")[0] == "cpu"
    if on_cpu and dtype in (None, "float32") and tp == 1 and has_gguf(model) and skinny_kernels() is not None:
        return "gguf"
    return "fp32"


BACKENDS: dict[str, Backend] = {b.name: b for b in (
    Backend(DEFAULT_BACKEND, "the lean torch model: batch-invariant CPU kernels, CUDA graphs, every capability",
            "models.backends.torch_backend", tensor_parallel=True, weights=("fp32", "gguf"),
            default_weights=_torch_default_weights),
    Backend("transformers", "any Hugging Face causal LM through AutoModelForCausalLM: one model call per "
            "sequence, eager, held to the near-tie rule", "models.backends.transformers_backend"),
    Backend("llama_cpp", "a GGUF decoded by llama.cpp's own kernels (llama-cpp-python): chains, one sequence, "
            "CPU, held to the near-tie rule", "models.backends.llama_cpp_backend", _needs_llama_cpp, weights=("gguf",)),
    Backend("ttnn", "Tenstorrent devices through ttnn", None, _missing("ttnn", "a Tenstorrent device")),
    Backend("qefficient", "Qualcomm Cloud AI 100 through QEfficient", None,
            _missing("QEfficient", "a Qualcomm Cloud AI 100 card")),
)}


def backend(name: str) -> Backend:
    if name not in BACKENDS:
        raise UserError(f"unknown --backend {name!r}; choose from {', '.join(BACKENDS)}")
    return BACKENDS[name]
