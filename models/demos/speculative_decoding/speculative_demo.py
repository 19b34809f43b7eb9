"""Speculative decoding demo: a parametrized pytest, tt-metal style.

    pytest models/demos/speculative_decoding/speculative_demo.py --n_draft_tokens 4
    pytest models/demos/speculative_decoding/speculative_demo.py -k prompt-lookup --max_generated_tokens 128
    pytest models/demos/speculative_decoding/speculative_demo.py -k batch-8      # many users at once
    CI=true pytest models/demos/speculative_decoding/speculative_demo.py     # the ci-* ids only
    pytest models/demos/speculative_decoding/speculative_demo.py -k gemma3    # Gemma-3-270M (--with-gemma3)

Each configuration loads the target (and its draft), runs target-only greedy decoding and the
speculative method interleaved prompt by prompt, prints every iteration, the texts and a
summary, then fails if any output differs from target-only decoding (fp32: token for token;
bf16: only at a near-tie), if target-only output differs from its golden, or if a metric leaves
its band in perf_targets.yaml (with CI=true a CPU speed ratio fails only on a gross regression and
is otherwise reported; gate.py).

The batch-* and cb-* ids (test_batched_demo) decode the prompts, cycled to fill the rows, in
static batches or with continuous batching, by target-only and by the method, and target-only
one prompt at a time: every row must equal its solo run, and the log shows per iteration
`@ X tok/s/user (Y tok/s throughput)` as tt-metal's demos do.
"""

from __future__ import annotations

from pathlib import Path
from typing import NoReturn

import pytest
from loguru import logger

from models.common.correctness import compare, first_divergence
from models.common.errors import UserError
from models.common.metrics import break_even_tau, summarize
from models.demos.speculative_decoding.gate import Gate
from models.common.prompts import load_prompts
from models.speculative import options
from models.speculative.engine import DRAFT_MODEL_METHODS, SPECULATOR_METHODS, Engine, RunConfig
from models.common.mesh import MeshShape, run_on_mesh
from models.llama.packaged import PACKAGED_MODELS, installed as packaged_installed
from models.demos.speculative_decoding.demo_runs import (
    MeshParent, describe_proposer, measure, measure_batched, measure_batched_on_mesh, measure_on_mesh,
)
from models.speculative.verification import rule_for

DEMO_DIR = Path(__file__).resolve().parent
REPO_ROOT = DEMO_DIR.parents[2]
DEFAULT_PROMPTS = "sample_prompts/demo_prompts.json"
LOOKUP_PROMPTS = "sample_prompts/lookup_prompts.json"  # answers that copy their input


def resolve_prompts_path(value: str) -> Path:
    path = Path(value)
    if not path.is_absolute() and not path.exists() and (REPO_ROOT / path).exists():
        path = REPO_ROOT / path
    return path


def demo_config(request, mesh_device, params: dict) -> tuple[RunConfig, str]:
    """(the run configuration, the prompts file): each option its command-line value when given,
    else the parametrized one, else its default (models/speculative/options.py); the device, dtype
    and mesh are mesh_device's."""
    values = options.demo_values(request.config.getoption, params)
    prompts = values.pop("input_prompts")
    # --draft_model and --speculator serve the ids whose method reads them (RunConfig refuses them elsewhere)
    drafters = RunConfig(method=values["method"], proposers=values["proposers"]).drafters
    for name, readers in (("draft_model", DRAFT_MODEL_METHODS), ("speculator", SPECULATOR_METHODS)):
        if not drafters & set(readers):
            values[name] = None
    device = dict(device=str(mesh_device.torch_device), dtype=str(mesh_device.dtype).removeprefix("torch."),
                  mesh_shape=mesh_device.mesh)
    return RunConfig(**{**values, **device}), prompts


def demo_params(method: str, n_draft_tokens: int, draft_layers: int | None, max_generated_tokens: int,
                input_prompts: str, tree: tuple | None, sampling: tuple | None, target: dict | None = None) -> dict:
    """A CASES parametrization as option values (the rest take their defaults)."""
    tree_topk, tree_budget, proposers = tree or (1, None, None)
    temperature, verify, seed = sampling or (0.0, None, 0)
    return dict(method=method, n_draft_tokens=n_draft_tokens, draft_layers=draft_layers,
                max_generated_tokens=max_generated_tokens, input_prompts=input_prompts, tree_topk=tree_topk,
                tree_budget=tree_budget, proposers=proposers, temperature=temperature, verify=verify, seed=seed,
                **(target or {}))


def batch_params(method: str, n_draft_tokens: int, max_generated_tokens: int, input_prompts: str, batch_size: int,
                 full_batch_size: int | None, tree: tuple | None, batch_drafts: str) -> dict:
    """A BATCH_CASES parametrization as option values (the rest take their defaults)."""
    return {**demo_params(method, max(n_draft_tokens, 1), None, max_generated_tokens, input_prompts, tree, None),
            "batch_size": batch_size, "full_batch_size": full_batch_size, "batch_drafts": batch_drafts}


def fail(exc: UserError) -> NoReturn:
    """Fail the test with the error's one line. Raised from None: pytest.fail inside the except
    would chain the UserError as its context, and pytest prints the message twice."""
    raise pytest.fail.Exception(str(exc), pytrace=False) from None


def set_up(request, mesh_device, params: dict, gate: Gate):
    """(config, prompts file, engine, prompts, encoded prompts), the gate's files read; a user
    mistake fails the test in one line before any model loads (or, a bad model, as it loads). On
    a mesh the workers load the models and decode; here a MeshParent serves the tokenizer, the log
    and (only if outputs diverge) top-2 margins."""
    try:
        config, prompts_file = demo_config(request, mesh_device, params)
        if config.model in PACKAGED_MODELS and not packaged_installed(config.model):
            pytest.skip(f"{config.model} is not installed: {PACKAGED_MODELS[config.model].install}")
        config.validate()
        gate.load()
        prompts = load_prompts(resolve_prompts_path(prompts_file))
        engine = Engine(config, mesh_device) if config.mesh.size == 1 else MeshParent(config, mesh_device)
        return config, prompts_file, engine, prompts, engine.encode(prompts)
    except UserError as exc:
        fail(exc)


def on_mesh(config: RunConfig, here, there, *args):
    """here() on one device; there(mesh, config, *args) on every worker of a larger mesh, where a
    failing rank fails the test in one line."""
    shape = config.mesh
    if shape.size == 1:
        return here()
    try:
        return run_on_mesh(shape, there, config, *args, device_type=Engine.device_type(config))
    except UserError as exc:
        fail(exc)


def log_block(title: str, rows: dict) -> None:
    width = max(len(k) for k in rows)
    logger.info("\n".join([f"=== {title} ==="] + [f"  {k:<{width}} : {v}" for k, v in rows.items()]))


def case_id(request) -> str:
    """This run's id among CASES (the longest one its full parametrized id starts with)."""
    full = request.node.callspec.id
    ids = [c.id for c in CASES + BATCH_CASES]
    return max((i for i in ids if full == i or full.startswith(i + "-")), key=len, default=full)


def case(id: str, method: str, k: int, tokens: int, prompts: str, *, draft_layers: int | None = None,
         tree: tuple | None = None, sampling: tuple | None = None, target: dict | None = None, ci: bool = False):
    """One demo parametrization. tree: (topk, budget, proposers); sampling: (temperature, verify,
    seed); target: option values naming another target than the default (GEMMA3). ci: sized for a
    CI runner; with CI=true only these run (conftest.py)."""
    return pytest.param(method, k, draft_layers, tokens, prompts, tree, sampling, target, id=id,
                        marks=[pytest.mark.ci] if ci else [])


GEMMA3 = {"model": "gemma3-270m", "instruct": False}  # a base model: no chat template
# Every other CPU id reads the default model's GGUF blocks (--weights gguf, the CPU default); these
# read its fp32 weights, held to the same golden outputs.
FP32 = {"weights": "fp32"}


CASES = [
    case("self-draft", "self_draft", 2, 48, DEFAULT_PROMPTS, draft_layers=24),
    case("prompt-lookup", "prompt_lookup", 4, 64, DEFAULT_PROMPTS),
    case("prompt-lookup-copying", "prompt_lookup", 4, 64, LOOKUP_PROMPTS),
    case("draft-model", "draft_model", 4, 41, DEFAULT_PROMPTS),
    case("multi-projection", "multi_projection", 4, 64, DEFAULT_PROMPTS),
    case("eagle", "eagle", 3, 64, DEFAULT_PROMPTS),
    case("tree-eagle", "eagle", 4, 64, DEFAULT_PROMPTS, tree=(4, 16, None)),
    case("tree-multi-projection", "multi_projection", 4, 64, DEFAULT_PROMPTS, tree=(4, 16, None)),
    case("tree-prompt-lookup-copying", "prompt_lookup", 6, 64, LOOKUP_PROMPTS, tree=(4, 24, None)),
    case("suffix", "suffix", 6, 64, LOOKUP_PROMPTS, tree=(4, 24, None)),
    case("multi-draft", "multi", 4, 64, DEFAULT_PROMPTS, tree=(4, 24, "eagle,prompt_lookup")),
    # Sampling at temperature 0.7, seed 1. coupled: equal to target-only sampling token for
    # token, asserted like greedy; rejection: distributed like it (acceptance golden, and the
    # same seed must give the same output twice).
    case("sampling-coupled-eagle", "eagle", 3, 64, DEFAULT_PROMPTS, sampling=(0.7, "coupled", 1)),
    case("sampling-rejection-eagle", "eagle", 3, 64, DEFAULT_PROMPTS, sampling=(0.7, "rejection", 1)),
    case("sampling-rejection-lookup", "prompt_lookup", 4, 64, LOOKUP_PROMPTS, sampling=(0.7, "rejection", 1)),
    # CI: a lossless sanity check (the draft is the target), a chain, a model-free tree, a
    # drafted tree and coupled sampling, 32 tokens each: about a minute together on the 2-core CPU.
    case("ci-draft-model", "draft_model", 4, 32, DEFAULT_PROMPTS, ci=True),
    case("ci-prompt-lookup-copying", "prompt_lookup", 4, 32, LOOKUP_PROMPTS, ci=True),
    case("ci-suffix", "suffix", 6, 32, LOOKUP_PROMPTS, tree=(4, 24, None), ci=True),
    case("ci-tree-eagle", "eagle", 4, 32, DEFAULT_PROMPTS, tree=(4, 16, None), ci=True),
    case("ci-sampling-coupled-draft-model", "draft_model", 4, 32, DEFAULT_PROMPTS, sampling=(0.7, "coupled", 1),
         ci=True),
    # Gemma-3-270M (bash scripts/setup.sh --with-gemma3; skipped where it is not installed): the
    # model-free methods and its own first layers, on the lean path like SmolLM2.
    case("gemma3-prompt-lookup-copying", "prompt_lookup", 4, 64, LOOKUP_PROMPTS, target=GEMMA3),
    case("gemma3-suffix", "suffix", 6, 64, LOOKUP_PROMPTS, tree=(4, 24, None), target=GEMMA3),
    case("gemma3-self-draft", "self_draft", 2, 48, DEFAULT_PROMPTS, draft_layers=6, target=GEMMA3),
    case("gemma3-tree-prompt-lookup", "prompt_lookup", 6, 64, DEFAULT_PROMPTS, tree=(4, 24, None), target=GEMMA3),
    case("ci-gemma3-suffix", "suffix", 6, 32, LOOKUP_PROMPTS, tree=(4, 24, None), target=GEMMA3, ci=True),
    # fp32 weights (--weights fp32): the same golden outputs as the GGUF's blocks, bit for bit.
    case("fp32-prompt-lookup-copying", "prompt_lookup", 4, 64, LOOKUP_PROMPTS, target=FP32),
    case("fp32-suffix", "suffix", 6, 64, LOOKUP_PROMPTS, tree=(4, 24, None), target=FP32),
    case("ci-fp32-suffix", "suffix", 6, 32, LOOKUP_PROMPTS, tree=(4, 24, None), target=FP32, ci=True),
]


@pytest.mark.demo
@pytest.mark.parametrize("device_params", [{"trace": True}], indirect=True)
@pytest.mark.parametrize("mesh_device", [None], indirect=True)
@pytest.mark.parametrize(
    "method, n_draft_tokens, draft_layers, max_generated_tokens, input_prompts, tree, sampling, target", CASES
)
def test_speculative_demo(
    request, mesh_device, device_params, method, n_draft_tokens, draft_layers, max_generated_tokens, input_prompts,
    tree, sampling, target,
):
    params = demo_params(method, n_draft_tokens, draft_layers, max_generated_tokens, input_prompts, tree, sampling,
                         target)
    gate = Gate.from_request(request)
    config, prompts_file, engine, prompts, encoded = set_up(request, mesh_device, params, gate)

    log_block("configuration", {
        **{k: v for k, v in config.describe().items() if k not in ("device", "dtype")},
        "input_prompts": prompts_file, "prompts": len(encoded), "device": mesh_device.describe(),
        "proposer": describe_proposer(engine),
        "draft tree": (
            "chain" if engine.spec.is_chain else f"top-{engine.spec.topk}, depth {engine.spec.depth}, "
            f"{engine.spec.budget} nodes per target call"
        ) + ("" if config.tree_budget or engine.spec.is_chain else f" (default for {mesh_device.type})"),
        "perf targets": str(gate.targets_path) + (" (updating)" if gate.update else ""),
    })

    # Warm-up (allocations, kernel loading, graph capture) outside the measurement, then
    # interleave target-only and the method prompt by prompt, alternating which goes first, so
    # drift hits both alike (on a mesh: on its workers, each dp submesh its share of the prompts).
    runs = on_mesh(config, lambda: measure(engine, encoded), measure_on_mesh, prompts)
    spec_results, base_results = runs.spec, runs.base

    exact = runs.exact  # bit for bit, or the near-tie rule
    one_device = config.mesh.size == 1  # a mesh's sums round otherwise: its goldens may differ at a near-tie
    decoding = rule_for(config.sampling, config.verify).name  # greedy, rejection or coupled
    bad = []
    if decoding == "rejection":
        # Rejection sampling is distributed as target-only sampling, not equal to it token for
        # token; what a run can assert is that its seed reproduces it.
        again = runs.again
        if again.tokens != spec_results[0].tokens:
            bad.append(f"prompt 0: a second run with seed {config.seed} differs at token "
                       f"{first_divergence(spec_results[0].tokens, again.tokens)}")
        for i, spec in enumerate(spec_results):
            logger.info(f"--- prompt {i} output (sampled, rejection) ---\n{engine.tokenizer.decode(spec.tokens)}")
    else:
        for i, (ids, spec, base) in enumerate(zip(encoded, spec_results, base_results)):
            comparison = compare(
                base.tokens, spec.tokens, exact=exact,
                margin_at=lambda prefix, ids=ids: engine.top2_margin_after(ids, prefix),
            )
            if not comparison.ok:
                bad.append(f"prompt {i}: {comparison.describe()}")
            logger.info(f"--- prompt {i} output ({comparison.describe()}) ---\n{engine.tokenizer.decode(spec.tokens)}")

    summary = summarize([r.stats for r in spec_results])
    base_summary = summarize([r.stats for r in base_results])
    speedup = base_summary["total_seconds"] / summary["total_seconds"]
    log_block(f"summary: {config.method} vs target-only, {mesh_device.describe()}", {
        "decoding": decoding if decoding == "greedy" else (
            f"{decoding} sampling, temperature {config.temperature}, top-k {config.top_k}, top-p {config.top_p}, "
            f"seed {config.seed}"),
        "acceptance rate": f"{summary['acceptance_rate']:.3f}",
        "mean accepted tokens / target call": f"{summary['mean_accepted_tokens']:.3f}",
        "break-even": (f"pays when tau > {break_even_tau(summary, base_summary):.2f}; measured "
                       f"{summary['mean_accepted_tokens']:.2f} (its draft + verify, in target-only decode steps)"),
        "per-position acceptance": " ".join(f"{a:.2f}" for a in summary["per_position_acceptance"]),
        "target calls": f"{summary['target_calls']} (target-only: {base_summary['target_calls']})",
        "tree nodes / depth / branching": (
            f"{summary['mean_tree_nodes']:.1f} / {summary['mean_tree_depth']:.2f} / {summary['mean_branching']:.2f}"
        ),
        **({"accepted paths by proposer": summary["accepted_by_source"]} if summary["accepted_by_source"] else {}),
        "generated tokens": summary["generated_tokens"],
        "TTFT": f"{summary['ttft_s'] * 1e3:.1f} ms (target-only: {base_summary['ttft_s'] * 1e3:.1f} ms)",
        "decode tok/s (iteration 0 excluded)": (
            f"{summary['decode_tokens_per_s']:.1f} (target-only: {base_summary['decode_tokens_per_s']:.1f})"
        ),
        "e2e tok/s": f"{summary['e2e_tokens_per_s']:.1f} (target-only: {base_summary['e2e_tokens_per_s']:.1f})",
        "speedup over target-only": (
            f"{speedup:.2f}x (total time of {len(encoded)} timed runs of each, interleaved, after a warm-up)"
        ),
    })

    measured = {
        "acceptance_rate": summary["acceptance_rate"], "mean_accepted_tokens": summary["mean_accepted_tokens"],
        "target_calls": summary["target_calls"], "speedup": speedup,
        "decode_tokens_per_s": summary["decode_tokens_per_s"], "e2e_tokens_per_s": summary["e2e_tokens_per_s"],
    }
    key = {"device": mesh_device.sku, "mesh": mesh_device.mesh, "dtype": str(mesh_device.dtype).removeprefix("torch."),
           "config": {**config.describe(), "input_prompts": prompts_file}}
    golden_failures = gate.golden_outputs(
        key, [b.tokens for b in base_results], exact=exact and one_device, allow_update=not bad and one_device,
        margin_at=lambda i, prefix: engine.top2_margin_after(encoded[i], prefix),
        describe_token=lambda t: repr(engine.tokenizer.decode([t])),
    )
    verdicts = gate.perf(case_id(request), key, measured, allow_update=not bad)
    gate.record(key, measured, verdicts, timed_runs=len(encoded), correct=not bad, golden_ok=not golden_failures)

    reference = {"greedy": "differs from target-only greedy decoding", "coupled": "differs from target-only "
                 "coupled sampling", "rejection": "is not reproducible from its seed"}[decoding]
    assert not bad, f"output {reference}: " + "; ".join(bad)
    assert not golden_failures, (
        "target-only output differs from its golden (the model, kernels or weights changed; "
        "re-baseline with --update_perf_targets if intended): " + "; ".join(golden_failures)
    )
    missed = [v.describe() for v in verdicts or [] if not v.ok]
    assert not missed, "perf target missed: " + "; ".join(missed)


def batch_case(id: str, method: str, k: int, tokens: int, prompts: str, *, batch_size: int = 1,
               full_batch_size: int | None = None, tree: tuple | None = None, drafts: str = "auto",
               ci: bool = False):
    """One batched demo parametrization: static batches of batch_size, or continuous batching
    over full_batch_size rows (then twice as many prompts as rows, so rows are reused). drafts:
    auto verifies the drafts that pay for their rows by this machine's measured verify cost, so
    its counters follow that measurement; all (every draft) keeps them fixed, as CI needs."""
    return pytest.param(method, k, tokens, prompts, batch_size, full_batch_size, tree, drafts, id=id,
                        marks=[pytest.mark.ci] if ci else [])


BATCH_CASES = [
    batch_case("batch-8-target", "target", 0, 64, DEFAULT_PROMPTS, batch_size=8),
    batch_case("batch-8-prompt-lookup-copying", "prompt_lookup", 4, 64, LOOKUP_PROMPTS, batch_size=8),
    batch_case("batch-8-tree-eagle", "eagle", 4, 64, DEFAULT_PROMPTS, batch_size=8, tree=(4, 16, None)),
    batch_case("cb-8-prompt-lookup-copying", "prompt_lookup", 4, 64, LOOKUP_PROMPTS, full_batch_size=8),
    batch_case("batch-8-prompt-lookup-copying-all", "prompt_lookup", 4, 64, LOOKUP_PROMPTS, batch_size=8,
               drafts="all"),
    batch_case("ci-batch-4-prompt-lookup-copying", "prompt_lookup", 4, 32, LOOKUP_PROMPTS, batch_size=4, drafts="all",
               ci=True),
]


def fill_rows(encoded: list[list[int]], rows: int, continuous: bool) -> list[list[int]]:
    """The prompts cycled to fill every row (twice over with continuous batching)."""
    n = max(len(encoded), 2 * rows if continuous else rows)
    return [encoded[i % len(encoded)] for i in range(n)]


@pytest.mark.demo
@pytest.mark.parametrize("device_params", [{"trace": True}], indirect=True)
@pytest.mark.parametrize("mesh_device", [None], indirect=True)
@pytest.mark.parametrize(
    "method, n_draft_tokens, max_generated_tokens, input_prompts, batch_size, full_batch_size, tree, batch_drafts",
    BATCH_CASES,
)
def test_batched_demo(
    request, mesh_device, device_params, method, n_draft_tokens, max_generated_tokens, input_prompts, batch_size,
    full_batch_size, tree, batch_drafts,
):
    params = batch_params(method, n_draft_tokens, max_generated_tokens, input_prompts, batch_size, full_batch_size,
                          tree, batch_drafts)
    gate = Gate.from_request(request)
    if MeshShape.parse(mesh_device.mesh).dp > 1:
        pytest.skip("a batch is one submesh's work: batched ids run on DPxTP meshes with DP 1")
    if batch_drafts == "auto" and method != "target" and mesh_device.mesh != "1x1":
        pytest.skip("--batch_drafts auto times one device; on a mesh the -all ids verify every draft")
    config, prompts_file, engine, _, distinct = set_up(request, mesh_device, params, gate)
    continuous = config.full_batch_size is not None
    encoded = fill_rows(distinct, config.rows, continuous)
    log_block("configuration", {
        **{k: v for k, v in config.describe().items() if k not in ("device", "dtype")},
        "input_prompts": f"{prompts_file} ({len(distinct)} prompts, cycled to {len(encoded)})",
        "device": mesh_device.describe(),
        "batching": (f"continuous, {config.full_batch_size} rows" if continuous
                     else f"static batches of {config.batch_size}"),
        "proposer": describe_proposer(engine),
    })

    runs = on_mesh(config, lambda: measure_batched(engine, encoded), measure_batched_on_mesh, encoded)
    solo, base, spec = runs.solo, runs.base, runs.spec
    solo_seconds = sum(r.stats.ttft_s + r.stats.decode_seconds for r in solo)

    exact = runs.exact  # bit for bit, or the near-tie rule
    one_device = config.mesh.size == 1
    bad = []
    for which, result in (("batched target-only", base), (f"batched {config.method}", spec)):
        for i, (ids, got, want) in enumerate(zip(encoded, result.results, solo)):
            comparison = compare(want.tokens, got.tokens, exact=exact,
                                 margin_at=lambda prefix, ids=ids: engine.top2_margin_after(ids, prefix))
            if not comparison.ok:
                bad.append(f"{which}, prompt {i}: {comparison.describe()}")
    for i, r in enumerate(spec.results[: len(distinct)]):
        logger.info(f"--- prompt {i} output ---\n{engine.tokenizer.decode(r.tokens)}")

    summary = summarize([r.stats for r in spec.results])
    per_row = [summarize([r.stats])["mean_accepted_tokens"] for r in spec.results]
    speedup = base.seconds / spec.seconds
    batch_speedup = base.throughput_tokens_per_s * solo_seconds / sum(r.stats.generated_tokens for r in solo)
    ttfts = [r.stats.ttft_s * 1e3 for r in spec.results]
    solo_rate = sum(r.stats.generated_tokens for r in solo) / solo_seconds
    log_block(f"summary: {config.method}, {len(encoded)} prompts in rows of {config.rows}, {mesh_device.describe()}", {
        "throughput": (f"{spec.throughput_tokens_per_s:.1f} tok/s (batched target-only "
                       f"{base.throughput_tokens_per_s:.1f}, one at a time {solo_rate:.1f})"),
        "tok/s/user": f"{summary['e2e_tokens_per_s']:.1f}",
        "TTFT per request": f"mean {sum(ttfts) / len(ttfts):.1f} ms, max {max(ttfts):.1f} ms",
        "target calls (batched)": f"{len(spec.iterations)} (target-only: {len(base.iterations)}; rows decoded: "
                                  f"{summary['target_calls']})",
        "acceptance rate": f"{summary['acceptance_rate']:.3f}",
        "mean accepted tokens / row per call": f"{summary['mean_accepted_tokens']:.3f} (per row: "
                                               + " ".join(f"{t:.2f}" for t in per_row) + ")",
        "speedup over batched target-only": f"{speedup:.2f}x",
        "batched target-only over one at a time": f"{batch_speedup:.2f}x",
    })

    measured = {"speedup": speedup, "batch_speedup": batch_speedup,
                "throughput_tokens_per_s": spec.throughput_tokens_per_s}
    if config.batch_drafts == "all" or config.method == options.TARGET:  # auto: counters follow this machine's cost curves
        measured.update(acceptance_rate=summary["acceptance_rate"], target_calls=summary["target_calls"],
                        mean_accepted_tokens=summary["mean_accepted_tokens"])
    key = {"device": mesh_device.sku, "mesh": mesh_device.mesh, "dtype": str(mesh_device.dtype).removeprefix("torch."),
           "config": {**config.describe(), "input_prompts": prompts_file}}
    golden_failures = gate.golden_outputs(
        key, [r.tokens for r in solo[: len(distinct)]], exact=exact and one_device, allow_update=not bad and one_device,
        margin_at=lambda i, prefix: engine.top2_margin_after(encoded[i], prefix),
        describe_token=lambda t: repr(engine.tokenizer.decode([t])),
    )
    verdicts = gate.perf(case_id(request), key, measured, allow_update=not bad)
    gate.record(key, measured, verdicts, timed_runs=2, correct=not bad,  # measure_batched: two rounds
                golden_ok=not golden_failures)
    assert not bad, "a batched output differs from its prompt decoded alone: " + "; ".join(bad)
    assert not golden_failures, "target-only output differs from its golden: " + "; ".join(golden_failures)
    missed = [v.describe() for v in verdicts or [] if not v.ok]
    assert not missed, "perf target missed: " + "; ".join(missed)
