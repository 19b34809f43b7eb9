"""The configurations a sweep times, and a runner for each on one shared set of weights.

A configuration is a way of decoding (a suite method, or a transformers peer) at one draft shape
and one length. The shape is a chain of k draft tokens (tree_topk 1, the classic sweep) or a
token tree: topk children per node, `depth` levels, `budget` nodes verified per target call.
Suite methods run through Engine, so they are built and validated exactly as in the demo and
generate.py; the peers are transformers' own `generate` on the same weights (greedy, and greedy
with its prompt lookup), so the table says how the suite compares with the stock path, and, when
llama-cpp-python is installed, llama.cpp on the default model's GGUF (greedy and prompt lookup;
models.benchmark.llama_cpp_peer), which runs the quantized weights: its prompt lookup is held to
llama.cpp's own greedy output, not to the suite's fp32 target-only.

Sampling is a sweep dimension too: each configuration decodes at one (temperature, verify) mode,
greedy (temperature 0, ids exactly as before), or sampled with rejection or coupled verification
(ids end in -t0.7 or -t0.7c). Its reference is target-only at the same mode, the same prompt and
the same random stream (seed, prompt index): coupled output must equal it token for token, as
greedy output must; rejection output is only distributed as it, so a difference is no mismatch.
The peers decode greedily only (they sample with their own random numbers).

The loaded target is a sweep dimension too (Variant, one value per model axis: the backend and the
weight format): every suite configuration runs on each variant's own target and is compared with,
and timed against, that variant's own target-only. Ids and labels of the default variant read as
before; others end in "@transformers", "@gguf" (a format other than the backend's own). The peers
run once, beside the first variant's target-only.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable

import torch
from loguru import logger

from models.backends.interface import MissingCapability
from models.backends.registry import BACKENDS, DEFAULT_BACKEND
from models.benchmark import llama_cpp_peer
from models.common.device import Device
from models.common.errors import UserError
from models.common.metrics import SequenceStats
from models.llama.reference import HFReference
from models.llama.weights import LoadedModel
from models.speculative.engine import AUTO, METHODS, Engine, RunConfig
from models.speculative.generator import synchronize
from models.speculative.verification import COUPLED, GREEDY, REJECTION
from models.speculative.tree import TreeSpec

TARGET = "target"
HF_GREEDY = "hf_greedy"
HF_PROMPT_LOOKUP = "hf_prompt_lookup"
HF_PEERS = (HF_GREEDY, HF_PROMPT_LOOKUP)
LLAMA_GREEDY = "llama_cpp_greedy"
LLAMA_PROMPT_LOOKUP = "llama_cpp_prompt_lookup"
LLAMA_PEERS = (LLAMA_GREEDY, LLAMA_PROMPT_LOOKUP)
PEERS = HF_PEERS + LLAMA_PEERS
MULTI = "multi"  # merges several proposers' trees; cannot run without --proposers
SELF_DRAFT_FRACTION = 0.8  # self_draft's default: 24 of the default model's 30 layers
GREEDY_MODE = (0.0, GREEDY)  # (temperature, verify) of greedy decoding

Mode = tuple[float, str]  # (temperature, verify): (0.0, "greedy"), (0.7, "rejection"), (0.7, "coupled")
# RunOptions fields that pick which loaded target a configuration runs on: a field each in Variant,
# RunRecord and the summary's Row; a sweep times each variant's methods against its own target-only
MODEL_AXES = ("backend", "weights")


def own_weights(backend: str) -> str:
    """The weight format a backend runs when --weights is not given (its first; fp32 for a name it lacks)."""
    known = BACKENDS.get(backend)
    return known.weights[0] if known is not None else "fp32"


@dataclasses.dataclass(frozen=True)
class Variant:
    """Which loaded target a configuration runs on. The default one (the suite's default target)
    leaves ids and labels as they were before a sweep could hold several."""

    backend: str = DEFAULT_BACKEND
    weights: str | None = None  # None: the backend's own, resolved here (Variant() == Variant("torch", "fp32"))

    def __post_init__(self) -> None:
        if self.weights is None:
            object.__setattr__(self, "weights", own_weights(self.backend))

    @classmethod
    def of(cls, values: dict) -> Variant:
        """The variant a record, row or meta.json entry names (an axis it lacks, from an older log: its default)."""
        return cls(**{axis: values[axis] for axis in MODEL_AXES if values.get(axis) is not None})

    @property
    def own_format(self) -> bool:
        """Whether it reads its backend's own format (llama_cpp's is gguf: that variant reads 'llama_cpp')."""
        return self.weights == own_weights(self.backend)

    @property
    def text(self) -> str:
        """'torch', 'torch+gguf', 'transformers': how tables and labels name it."""
        return self.backend + ("" if self.own_format else f"+{self.weights}")

    @property
    def suffix(self) -> str:
        """'' for the default variant, else '@' and its non-default values ('@transformers', '@gguf')."""
        values = [self.backend] if self.backend != DEFAULT_BACKEND else []
        values += [] if self.own_format else [str(self.weights)]
        return "@" + "+".join(values) if values else ""

    def applied(self, config: RunConfig) -> RunConfig:
        return dataclasses.replace(config, **{axis: getattr(self, axis) for axis in MODEL_AXES})

    def on(self, device: Device) -> Device:
        """The sweep's device reading this variant's weights (the torch backend loads, and caches, by them)."""
        return dataclasses.replace(device, weights=self.weights)


def sampling_modes(temperatures: list[float], verifies: list[str] | None = None) -> list[Mode]:
    """The sweep's decoding modes in order: temperature 0 is greedy (verify does not apply); each
    temperature above 0 runs with each verify mode (default: rejection)."""
    modes = []
    for t in temperatures:
        modes += [GREEDY_MODE] if t == 0 else [(float(t), v) for v in verifies or [REJECTION]]
    return list(dict.fromkeys(modes))


def temperature_text(temperature: float) -> str:
    """'0.7', '1' (1.0): the shortest text that reads back as the same float, so ids stay unique."""
    text = repr(float(temperature))
    return text[:-2] if text.endswith(".0") else text


def mode_suffix(temperature: float, verify: str) -> str:
    """'' for greedy (ids as before sampling existed), '-t0.7' rejection, '-t0.7c' coupled."""
    if verify == GREEDY:
        return ""
    return f"-t{temperature_text(temperature)}" + ("c" if verify == COUPLED else "")


def mode_text(temperature: float, verify: str) -> str:
    """'greedy', 'T=0.7 rejection' or 'T=0.7 coupled'."""
    return GREEDY if verify == GREEDY else f"T={temperature_text(temperature)} {verify}"


def default_methods(with_multi: bool = False) -> list[str]:
    """Every speculative method the engine knows, read at run time so new ones join the sweep;
    multi only when proposers were given (without them it has nothing to merge)."""
    return [m for m in METHODS if m != TARGET and (with_multi or m != MULTI)]


def default_draft_layers(n_layers: int) -> int:
    return max(1, round(SELF_DRAFT_FRACTION * n_layers))


@dataclasses.dataclass(frozen=True)
class Configuration:
    method: str  # a suite method, or one of PEERS
    k: int  # a chain's draft tokens per target call, a tree's depth; 0 when nothing is drafted
    max_generated_tokens: int
    topk: int = 1  # children per node; > 1: a token tree of depth k
    budget: int | str = 0  # a tree's nodes verified per target call (root excluded), or "auto"; 0 for a chain
    temperature: float = 0.0  # 0: greedy
    verify: str = GREEDY  # greedy at temperature 0, else rejection or coupled
    variant: Variant = Variant()  # the loaded target it runs on (a peer: the one it is timed against)

    @classmethod
    def of_spec(cls, method: str, spec: TreeSpec, max_generated_tokens: int, auto: bool = False,
                mode: Mode = GREEDY_MODE, variant: Variant = Variant()) -> Configuration:
        """The configuration an engine with this draft shape runs (a chain's length is its budget;
        auto: the budget is tuned per iteration up to spec.budget) at this decoding mode."""
        if spec.is_chain:
            return cls(method, spec.budget, max_generated_tokens, temperature=mode[0], verify=mode[1],
                       variant=variant)
        return cls(method, spec.depth, max_generated_tokens, spec.topk, AUTO if auto else spec.budget, *mode,
                   variant)

    @property
    def mode(self) -> Mode:
        return (self.temperature, self.verify)

    @property
    def is_sampled(self) -> bool:
        return self.verify != GREEDY

    @property
    def is_peer(self) -> bool:
        return self.method in PEERS

    @property
    def is_tree(self) -> bool:
        return self.topk > 1

    @property
    def shape(self) -> tuple[int, int, int] | None:
        """(topk, depth, nodes per call): a chain of k is (1, k, k); None when nothing is drafted."""
        if not self.k:
            return None
        return (self.topk, self.k, self.budget) if self.is_tree else (1, self.k, self.k)

    @property
    def id(self) -> str:
        if self.is_tree:
            draft = f"-t{self.topk}d{self.k}b{self.budget}"
        else:
            draft = f"-k{self.k}" if self.k else ""
        return f"{self.method}{draft}-n{self.max_generated_tokens}{mode_suffix(*self.mode)}{self.variant.suffix}"

    @property
    def baseline_id(self) -> str:
        """Target-only at this length and decoding mode on the same target: the speedup's denominator,
        and the reference output (target-only sampling is what sampled speculation is held to)."""
        return Configuration(TARGET, 0, self.max_generated_tokens, temperature=self.temperature,
                             verify=self.verify, variant=self.variant).id

    @property
    def reference_id(self) -> str:
        """The configuration whose output this one's is compared with: target-only, except llama.cpp's
        prompt lookup, held to llama.cpp's own greedy decoding (quantized weights, other tokens)."""
        if self.method == LLAMA_PROMPT_LOOKUP:
            return Configuration(LLAMA_GREEDY, 0, self.max_generated_tokens, variant=self.variant).id
        return self.baseline_id

    @property
    def must_match(self) -> bool:
        """False where a difference from the reference is expected, not a bug: llama.cpp greedy
        runs the GGUF's quantized weights, target-only the fp32 checkpoint; rejection sampling is
        distributed as target-only sampling, not equal to it token for token."""
        return self.method != LLAMA_GREEDY and self.verify != REJECTION

    def label(self, with_length: bool = False, with_variant: bool = False) -> str:
        """'eagle tree 4x5/16', plus ' n=128' (with_length), ' T=0.7 coupled' (sampled) and
        ' on transformers' or ' on torch+gguf' (with_variant: a sweep of several targets; not on a peer, which
        runs once)."""
        if self.is_tree:
            text = f"{self.method} tree {self.topk}x{self.k}/{self.budget}"
        else:
            text = self.method + (f" k={self.k}" if self.k else "")
        text = f"{text} n={self.max_generated_tokens}" if with_length else text
        text = f"{text} {mode_text(*self.mode)}" if self.is_sampled else text
        return f"{text} on {self.variant.text}" if with_variant and not self.is_peer else text


@dataclasses.dataclass
class Outcome:
    tokens: list[int]
    seconds: float  # wall time of the whole call, the same clock for suite and peers
    stats: SequenceStats | None  # per-iteration records; None for peers, which expose none
    ttft_s: float | None = None  # a peer's own time to its first token, where it tells (llama.cpp)


Runner = Callable[..., Outcome]  # run(prompt_ids, max_new_tokens, prompt_index=0) -> Outcome


def suite_runner(engine: Engine, baseline: bool) -> Runner:
    """prompt_index picks the random stream (seed, prompt_index) when sampling."""
    generator = engine.baseline if baseline else engine.generator

    def run(prompt_ids: list[int], max_new_tokens: int, prompt_index: int = 0) -> Outcome:
        t0 = time.perf_counter()
        result = generator.generate(prompt_ids, max_new_tokens, None, prompt_index)
        synchronize(engine.device.torch_device)
        return Outcome(result.tokens, time.perf_counter() - t0, result.stats)

    # what the proposers (suffix) and the auto tree budget learnt from the warm-up sequence must
    # not steer the timed runs
    run.after_warm_up = None if baseline else engine.generator.forget
    return run


def peer_runner(decode: Callable[[list[int], int], tuple[list[int], float | None]], device: torch.device) -> Runner:
    """A peer's decode(prompt_ids, max_new_tokens) -> (tokens, its time to the first token or
    None), timed as a Runner (greedy: no random stream; peers expose no per-iteration records)."""

    def run(prompt_ids: list[int], max_new_tokens: int, prompt_index: int = 0) -> Outcome:
        synchronize(device)
        t0 = time.perf_counter()
        tokens, ttft = decode(prompt_ids, max_new_tokens)
        synchronize(device)
        return Outcome(tokens, time.perf_counter() - t0, None, ttft)

    return run


def hf_runner(
    reference: HFReference, eos_token_ids: tuple[int, ...], device: torch.device, **generate_kwargs
) -> Runner:
    return peer_runner(lambda prompt_ids, max_new_tokens: (reference.greedy(
        prompt_ids, max_new_tokens, eos_token_id=list(eos_token_ids), **generate_kwargs), None), device)


def llama_cpp_runners(peer: llama_cpp_peer.LlamaCppPeer, ks: list[int], lengths: list[int],
                      max_ngram_size: int, variant: Variant = Variant()) -> dict[Configuration, Runner]:
    """llama.cpp greedy and prompt lookup at each k and length (a CPU peer), timed against variant's target-only."""
    cpu = torch.device("cpu")
    runners: dict[Configuration, Runner] = {}
    for n in lengths:
        for k in [0, *ks]:  # 0: greedy
            method = LLAMA_PROMPT_LOOKUP if k else LLAMA_GREEDY
            runners[Configuration(method, k, n, variant=variant)] = peer_runner(
                peer.decoder(k or None, max_ngram_size), cpu)
    return runners


def hf_reference(loaded: LoadedModel, device: Device) -> HFReference:
    """transformers' model on the very weights the suite loaded (a folder, or the random seed)."""
    if loaded.folder is not None:
        reference = HFReference.for_loaded(loaded, dtype=device.dtype)
    else:
        reference = HFReference.for_random_loaded(loaded)
    reference.model.to(device=device.torch_device, dtype=device.dtype)
    return reference


@dataclasses.dataclass(frozen=True)
class Shape:
    """One draft shape the sweep asks for, before a method's options and the device resolve it:
    topk 1 is a chain of `depth` tokens; topk > 1 a tree (budget None: the device's default)."""

    topk: int
    depth: int
    budget: int | None = None


def sweep_shapes(ks: list[int], topks: list[int], depths: list[int] | None = None,
                 budgets: list[int] | None = None) -> list[Shape]:
    """topk 1: a chain at each k (the classic sweep, same ids); each topk > 1 x depth (default:
    the k values) x budget (default: the device's) is one tree."""
    shapes: list[Shape] = []
    for topk in topks:
        if topk == 1:
            shapes += [Shape(1, k) for k in ks]
        else:
            shapes += [Shape(topk, d, b) for d in depths or ks for b in budgets or [None]]
    return list(dict.fromkeys(shapes))


@dataclasses.dataclass
class SweepPlan:
    """What to build: the knobs every engine shares, and which methods, shapes and lengths to time."""

    base: RunConfig  # model, device, dtype, max_seq_len, instruct, max_ngram_size, draft_model, top_k, top_p, seed
    methods: list[str]
    ks: list[int]
    lengths: list[int]
    draft_layers: int | None = None  # self_draft; None: SELF_DRAFT_FRACTION of the target
    method_options: dict[str, dict] = dataclasses.field(default_factory=dict)
    hf_peers: bool = True
    explicit: set[str] = dataclasses.field(default_factory=set)  # methods the user asked for by name or option;
    # any other (a default) that cannot be built here, e.g. no shipped speculator, is skipped with a warning
    shapes: list[Shape] | None = None  # None: a chain at each k
    proposers: str | None = None  # multi's --proposers
    llama_cpp_peers: bool = False  # llama.cpp greedy and prompt lookup (the default model's GGUF, CPU)
    modes: list[Mode] = dataclasses.field(default_factory=lambda: [GREEDY_MODE])  # (temperature, verify)
    variants: list[Variant] | None = None  # the targets every method runs on; None: base's own

    def draft_shapes(self) -> list[Shape]:
        return self.shapes if self.shapes is not None else sweep_shapes(self.ks, [1])

    def targets(self) -> list[Variant]:
        return self.variants or [Variant(**{axis: getattr(self.base, axis) for axis in MODEL_AXES})]


@dataclasses.dataclass
class Built:
    target: Engine  # the first variant's target-only decoding: the tokenizer, and what the peers are timed against
    runners: dict[Configuration, Runner]
    peer_meta: dict = dataclasses.field(default_factory=dict)  # e.g. {"llama_cpp": {"gguf": ..., ...}}
    targets: dict[Variant, Engine] = dataclasses.field(default_factory=dict)  # each variant's target-only
    not_run: dict[Configuration, str] = dataclasses.field(default_factory=dict)  # skipped on a variant: why


def mode_config(base: RunConfig, mode: Mode) -> RunConfig:
    """base at this decoding mode (verify None for greedy, as RunConfig wants it)."""
    temperature, verify = mode
    return dataclasses.replace(base, temperature=temperature, verify=None if verify == GREEDY else verify)


def _method_config(plan: SweepPlan, method: str, shape: Shape, n_layers: int, mode: Mode = GREEDY_MODE,
                   variant: Variant | None = None) -> RunConfig:
    """The engine's RunConfig: the shared knobs, this target, shape and mode, then the method's own options
    (which win)."""
    base = variant.applied(plan.base) if variant is not None else plan.base
    config = dataclasses.replace(
        mode_config(base, mode), method=method, n_draft_tokens=shape.depth,
        max_generated_tokens=max(plan.lengths), proposers=plan.proposers if method == MULTI else None,
    )
    if shape.topk > 1:
        config = dataclasses.replace(config, tree_topk=shape.topk, tree_depth=shape.depth, tree_budget=shape.budget)
    if method == "self_draft":
        config.draft_layers = plan.draft_layers or default_draft_layers(n_layers)
    return dataclasses.replace(config, **plan.method_options.get(method, {}))


def build(plan: SweepPlan, device: Device) -> Built:
    """Load each variant's target once and build every configuration's runner on it (engines share
    weights): per variant, target-only once per decoding mode, then per method, shape and mode; the
    peers once, at greedy only, beside the first variant's target-only."""
    lengths = plan.lengths
    runners: dict[Configuration, Runner] = {}
    targets: dict[Variant, Engine] = {}
    not_run: dict[Configuration, str] = {}
    for variant in plan.targets():
        for mode in plan.modes:
            engine = Engine(dataclasses.replace(mode_config(variant.applied(plan.base), mode), method=TARGET,
                                                max_generated_tokens=max(lengths)), variant.on(device))
            targets.setdefault(variant, engine)
            for n in lengths:
                runners[Configuration(TARGET, 0, n, temperature=mode[0], verify=mode[1],
                                      variant=variant)] = suite_runner(engine, True)
        for method in plan.methods:
            _build_method(plan, method, variant, targets[variant].model.n_layers, variant.on(device), runners,
                          not_run)
    _check_explicit_ran(plan, runners, not_run)
    primary = plan.targets()[0]
    target = targets[primary]
    if plan.hf_peers and GREEDY_MODE in plan.modes:
        reference = hf_reference(target.target, device)
        eos, torch_device = target.tokenizer.eos_token_ids, device.torch_device
        for n in plan.lengths:
            runners[Configuration(HF_GREEDY, 0, n, variant=primary)] = hf_runner(reference, eos, torch_device)
            for k in plan.ks:
                runners[Configuration(HF_PROMPT_LOOKUP, k, n, variant=primary)] = hf_runner(
                    reference, eos, torch_device, prompt_lookup_num_tokens=k,
                    max_matching_ngram_size=plan.base.max_ngram_size,
                )
    peer_meta = {}
    if plan.llama_cpp_peers and GREEDY_MODE in plan.modes:
        peer = llama_cpp_peer.open_peer(plan.base.max_seq_len + max(plan.ks), target.tokenizer.eos_token_ids,
                                        target.model.vocab_size)
        runners.update(llama_cpp_runners(peer, plan.ks, plan.lengths, plan.base.max_ngram_size, primary))
        peer_meta["llama_cpp"] = peer.meta()
    return Built(target, runners, peer_meta, targets, not_run)


def _build_method(plan: SweepPlan, method: str, variant: Variant, n_layers: int, device: Device,
                  runners: dict[Configuration, Runner], not_run: dict[Configuration, str]) -> None:
    """One method's runners on one target at every shape and mode. A method whose options fix its shape
    (e.g. {"eagle": {"n_draft_tokens": 5}}) runs at that shape only: shapes that resolve to one already
    built are not built twice. A default method that cannot run here is skipped with a warning; in a
    sweep of several targets, a shape one target's backend cannot run (a tree, a trained head) is
    skipped on that target alone, in one line, and listed in not_run."""
    several = len(plan.targets()) > 1
    for shape in plan.draft_shapes():
        for mode in plan.modes:
            config = _method_config(plan, method, shape, n_layers, mode, variant)
            auto = config.tree_budget == AUTO
            spec = config.tree_spec(device.torch_device.type)
            first = Configuration.of_spec(method, spec, plan.lengths[0], auto, mode, variant)
            if first in runners or first in not_run:
                continue
            try:
                engine = Engine(config, device)
            except UserError as exc:
                if several and isinstance(exc, MissingCapability):
                    logger.info(f"not run on {variant.text}: {first.label()} ({exc})")
                    not_run.update({Configuration.of_spec(method, spec, n, auto, mode, variant): str(exc)
                                    for n in plan.lengths})
                    continue
                if method in plan.explicit:
                    raise UserError(f"{first.label()}: {exc}") from None
                logger.warning(f"skipping {method} (a default method that cannot run here): {exc}")
                return
            for n in plan.lengths:
                config_n = Configuration.of_spec(method, engine.spec, n, auto, mode, variant)
                runners[config_n] = suite_runner(engine, False)


def _check_explicit_ran(plan: SweepPlan, runners: dict[Configuration, Runner],
                        not_run: dict[Configuration, str]) -> None:
    """A method asked for by name that no target of the sweep can run is an error, not an empty row."""
    for method in plan.methods:
        skipped = [c for c in not_run if c.method == method]
        if method in plan.explicit and skipped and not any(c.method == method for c in runners):
            raise UserError(f"{skipped[0].label()}: no backend of this sweep can run it ({not_run[skipped[0]]})")
