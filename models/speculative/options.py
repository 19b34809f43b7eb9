"""Every run option declared once, as a field of RunOptions with its default, help and choices.

scripts/generate.py's flags, the demo's pytest options and its configuration, the benchmark's
sweep keys and the perf targets' match keys are all derived from these fields (the helpers
below), so a new option is one field here and cannot be missing from any of them.
RunConfig (models/speculative/engine.py) is RunOptions plus its validation.
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Callable, Iterator
from typing import Any

from models.backends.registry import BACKENDS, DEFAULT_BACKEND
from models.common.cli import bool01, tree_budget_arg
from models.llama.weights import DEFAULT_MODEL
from models.speculative.proposers.base import REGISTRY  # importing proposers.base fills it (the package's __init__)
from models.speculative.sampling import VERIFY_MODES

OPTION = "option"  # the metadata key of a field's Option
AUTO = "auto"
BATCH_DRAFTS = (AUTO, "all")
WEIGHT_FORMATS = ("fp32", "gguf")
DEFAULT_TREE_BUDGET = {"cpu": 16, "cuda": 32}  # nodes per target call for --tree_topk > 1


@dataclasses.dataclass(frozen=True)
class Option:
    """How one run option reads and where it goes; its default is the field's."""
    help: str | Callable[[], str]  # a callable: text built when a parser is (the method list)
    parse: Callable[[str], Any] = str  # a command-line value to the field's value
    choices: tuple | None = None
    match: bool = False  # a perf target's entry must match it (models/common/perf_targets.py)
    demo_flag: str | None = None  # the demo's pytest flag, where it is not --NAME
    demo: bool = True  # the demo takes it
    swept: bool = False  # the benchmark sweeps a comma list of its values
    per_method: bool = True  # a benchmark's method_options may set it (False: the decoding mode, sweep-wide)
    resolved: bool = False  # a script's flag defaults to None, which the script resolves ($MESH_DEVICE)
    # what a perf target's entry that leaves it out stands for, where not the default (entries
    # written before --weights existed measured fp32; runs now record the resolved format)
    entry_default: Any = None

    def text(self) -> str:
        return self.help() if callable(self.help) else self.help


def option(default: Any, help: str | Callable[[], str], **how: Any) -> Any:
    """A RunOptions field: its default and its Option."""
    return dataclasses.field(default=default, metadata={OPTION: Option(help, **how)})


TARGET = "target"  # target-only decoding: the method every other one is checked against


def _method_help() -> str:
    return f"{TARGET} (target-only decoding, the reference) or a speculative method: " + ", ".join(REGISTRY)


@dataclasses.dataclass
class RunOptions:
    model: str = option(DEFAULT_MODEL, "the target: smollm2-135m, gemma3-270m, a checkpoint folder, a .gguf, or random:PRESET",
                        match=True, demo_flag="--target_model")
    backend: str = option(DEFAULT_BACKEND, "the runtime that runs the target: " + ", ".join(
        f"{b.name} ({b.summary})" for b in BACKENDS.values()), choices=tuple(BACKENDS), match=True, swept=True,
        per_method=False)
    weights: str | None = option(None, "the weights as decoding reads them: fp32, or gguf (the GGUF's own Q8_0 / "
                                 "Q4_1 blocks, the same outputs from a fraction of the bytes: CPU, torch backend); "
                                 "default: the backend's own (torch: gguf for a GGUF target on the CPU in float32, "
                                 "else fp32; transformers fp32; llama_cpp gguf)",
                                 choices=WEIGHT_FORMATS, match=True, swept=True, per_method=False, entry_default="fp32")
    method: str = option("prompt_lookup", _method_help, match=True)
    n_draft_tokens: int = option(4, "draft tokens verified per target call (k)", parse=int, match=True, swept=True)
    draft_layers: int | None = option(None, "self_draft: target layers used to draft; draft_model: the draft's layers",
                                      parse=int, match=True)
    target_layers: int | None = option(None, "keep only the target's first N layers", parse=int, match=True)
    draft_model: str | None = option(None, "draft_model: the draft's model spec (default: the target's own, every "
                                     "draft accepted)", match=True)
    speculator: str | None = option(None, "multi_projection / eagle: trained speculator folder (default: the "
                                    "shipped one)", match=True)
    max_ngram_size: int = option(3, "prompt_lookup: longest n-gram matched", parse=int, match=True)
    tree_topk: int = option(1, "children per draft-tree node; 1 (default): a chain of --n_draft_tokens", parse=int,
                            match=True, swept=True)
    tree_depth: int | None = option(None, "draft-tree levels (default: --n_draft_tokens)", parse=int, match=True,
                                    swept=True)
    tree_budget: int | str | None = option(
        None, "tree nodes verified per target call, root excluded, or 'auto' (picked from this device's measured "
        "verify cost and the acceptance seen); default: "
        + ", ".join(f"{n} on {kind}" for kind, n in DEFAULT_TREE_BUDGET.items()),
        parse=tree_budget_arg, match=True, swept=True)
    proposers: str | None = option(None, "--method multi: comma-separated proposers whose trees are merged, e.g. "
                                   "eagle,prompt_lookup", match=True)
    max_seq_len: int = option(1024, "KV cache length: prompt and generated tokens", parse=int)
    prefill_seq_len: int | None = option(None, "prefill in chunks of this many tokens", parse=int)
    max_generated_tokens: int = option(128, "new tokens per prompt", parse=int, match=True, swept=True)
    batch_size: int = option(1, "static batches: this many prompts decoded together, the next ones when all are "
                             "done", parse=int, match=True)
    full_batch_size: int | None = option(None, "continuous batching with this many rows: a finished row takes the "
                                         "next prompt at once", parse=int, match=True)
    batch_drafts: str = option(AUTO, "with a batch: auto (default) verifies the drafts whose expected tokens pay for "
                               "their rows (from this device's measured verify cost), all verifies every draft",
                               choices=BATCH_DRAFTS, match=True)
    instruct: bool = option(True, "1: apply the chat template, 0: the raw prompt", parse=bool01, match=True)
    device: str = option("cpu", "cpu or cuda, or cpu:DPxTP / cuda:DPxTP for a mesh (default: $MESH_DEVICE, else "
                         "cpu)", resolved=True)
    dtype: str | None = option(None, "float32 or bfloat16 (default: float32 on cpu, bfloat16 on cuda)")
    temperature: float = option(0.0, "0 (default): greedy; > 0: sampling", parse=float, match=True, swept=True,
                                per_method=False)
    top_k: int = option(0, "sampling: the k most likely tokens (0: off)", parse=int, match=True, per_method=False)
    top_p: float = option(1.0, "sampling: the top-p nucleus (1: off)", parse=float, match=True, per_method=False)
    seed: int = option(0, "sampling: prompt i samples from the stream (seed, i)", parse=int, match=True,
                       per_method=False)
    verify: str | None = option(None, "sampling only: rejection (default; distributed as target-only sampling) or "
                                "coupled (Gumbel noise per position: equal to target-only sampling token for token)",
                                choices=VERIFY_MODES, match=True, swept=True, per_method=False)
    mesh_shape: str | None = option(None, "DPxTP mesh devices, one worker process each: the target sharded over TP, "
                                    "the prompts split over DP (default: the device's, cpu:1x2; else 1x1)")
    # the demo's mesh runs have no draft device group
    draft_mesh_shape: str | None = option(None, "--method draft_model: the draft on a device group of its own, of "
                                          "this DPxTP shape", demo=False)


# What a run reads besides its RunOptions (the engine never sees it), declared the same way.
RUN_INPUTS = {"input_prompts": Option("prompts file: a JSON list of {prompt, context?, max_length?}", match=True)}


def run_options() -> dict[str, Option]:
    """Every RunOptions field's Option, in field order; a field declared without one is a bug."""
    found = {}
    for f in dataclasses.fields(RunOptions):
        if OPTION not in f.metadata:
            raise TypeError(f"RunOptions.{f.name} is not declared with option(...)")
        found[f.name] = f.metadata[OPTION]
    return found


def defaults() -> dict[str, Any]:
    return {f.name: f.default for f in dataclasses.fields(RunOptions)}


def _all() -> Iterator[tuple[str, Option, Any]]:
    """(name, Option, default) of every option, run inputs last."""
    values = defaults()
    for name, opt in run_options().items():
        yield name, opt, values[name]
    for name, opt in RUN_INPUTS.items():
        yield name, opt, None


def add_arguments(parser: argparse.ArgumentParser, names: tuple[str, ...] | None = None) -> None:
    """A script's flag per RunOptions field (or per field in names): --NAME, its type, choices,
    default and help."""
    values = defaults()
    for name, opt in run_options().items():
        if names is None or name in names:
            default = None if opt.resolved else values[name]
            parser.add_argument(f"--{name}", type=opt.parse, default=default, choices=opt.choices, help=opt.text())


def from_args(args: argparse.Namespace) -> dict[str, Any]:
    """The RunOptions values a parser built by add_arguments read."""
    return {name: getattr(args, name) for name in run_options()}


def demo_options() -> dict[str, tuple[str, Option]]:
    """name -> (the demo's pytest flag, Option) for every option the demo takes."""
    return {name: (opt.demo_flag or f"--{name}", opt) for name, opt, _ in _all() if opt.demo}


def add_pytest_options(group) -> None:
    """The demo's pytest option per option it takes; None by default, so a demo tells "not
    given" from a given value (0 included) and falls back to its parametrized value."""
    for flag, opt in demo_options().values():
        group.addoption(flag, action="store", type=opt.parse, default=None, choices=opt.choices, help=opt.text())


def demo_values(getoption: Callable[[str], Any], params: dict[str, Any]) -> dict[str, Any]:
    """Each option the demo takes: its command-line value when given, else the parametrized one,
    else its default (a 0/1 flag as a bool)."""
    values = defaults()
    out = {}
    for name, (flag, opt) in demo_options().items():
        given = getoption(flag)
        value = given if given is not None else params.get(name, values.get(name))
        out[name] = bool(value) if opt.parse is bool01 else value
    return out


def match_keys() -> tuple[str, ...]:
    """The configuration keys a perf target's entry must match."""
    return tuple(name for name, opt, _ in _all() if opt.match)


def match_defaults() -> dict[str, Any]:
    """What an entry that leaves a match key out stands for: the option's default."""
    return {name: default if opt.entry_default is None else opt.entry_default
            for name, opt, default in _all() if opt.match}


def swept() -> tuple[str, ...]:
    """The benchmark's comma-list options that sweep a RunOptions field."""
    return tuple(name for name, opt in run_options().items() if opt.swept)


def sweep_wide() -> tuple[str, ...]:
    """Fields a benchmark sweep shares across its methods (the decoding mode): never per method."""
    return tuple(name for name, opt in run_options().items() if not opt.per_method)
