"""Speculative decoding demo: a parametrized pytest, tt-metal style.

    pytest models/demos/speculative_decoding/speculative_demo.py --n_draft_tokens 4
    pytest models/demos/speculative_decoding/speculative_demo.py -k prompt-lookup --max_generated_tokens 128

Each configuration loads the target (and its draft), runs target-only greedy decoding and the
speculative method interleaved prompt by prompt, prints every iteration, the texts and a
summary, then fails if any output differs from target-only decoding (fp32: token for token;
bf16: only at a near-tie) or a metric misses its entry in perf_targets.json.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from loguru import logger

from models.common.correctness import compare
from models.common.errors import UserError
from models.common.metrics import Iteration, summarize
from models.common.perf_targets import check, find_target, load_targets
from models.common.prompts import load_prompts
from models.speculative.engine import Engine, RunConfig

DEMO_DIR = Path(__file__).resolve().parent
REPO_ROOT = DEMO_DIR.parents[2]
PERF_TARGETS = DEMO_DIR / "perf_targets.json"
DEFAULT_PROMPTS = "sample_prompts/demo_prompts.json"
LOOKUP_PROMPTS = "sample_prompts/lookup_prompts.json"  # answers that copy their input
WARMUP_TOKENS = 4


def resolve_prompts_path(value: str) -> Path:
    path = Path(value)
    if not path.is_absolute() and not path.exists() and (REPO_ROOT / path).exists():
        path = REPO_ROOT / path
    return path


def demo_config(request, mesh_device, params: dict) -> RunConfig:
    """The parametrized values, each overridden by its command-line option when given."""
    opt = request.config.getoption
    values = {key: (opt(f"--{key}") if opt(f"--{key}") is not None else value) for key, value in params.items()}
    return RunConfig(
        model=opt("--target_model") or RunConfig.model,
        method=values["method"],
        n_draft_tokens=values["n_draft_tokens"],
        draft_layers=values["draft_layers"],
        target_layers=values["target_layers"],
        draft_model=opt("--draft_model"),
        speculator=opt("--speculator"),
        max_ngram_size=values["max_ngram_size"],
        tree_topk=values["tree_topk"],
        tree_depth=values["tree_depth"],
        tree_budget=values["tree_budget"],
        proposers=values["proposers"],
        max_seq_len=values["max_seq_len"],
        max_generated_tokens=values["max_generated_tokens"],
        batch_size=values["batch_size"],
        instruct=bool(values["instruct"]),
        device=str(mesh_device.torch_device),
        dtype=str(mesh_device.dtype).removeprefix("torch."),
    ), values["input_prompts"]


def log_block(title: str, rows: dict) -> None:
    width = max(len(k) for k in rows)
    logger.info("\n".join([f"=== {title} ==="] + [f"  {k:<{width}} : {v}" for k, v in rows.items()]))


@pytest.mark.parametrize("device_params", [{"trace": True}], indirect=True)
@pytest.mark.parametrize("mesh_device", [None], indirect=True)
@pytest.mark.parametrize(
    "method, n_draft_tokens, draft_layers, max_generated_tokens, input_prompts, tree",
    [
        ("self_draft", 2, 24, 48, DEFAULT_PROMPTS, None),
        ("prompt_lookup", 4, None, 64, DEFAULT_PROMPTS, None),
        ("prompt_lookup", 4, None, 64, LOOKUP_PROMPTS, None),
        ("draft_model", 4, None, 41, DEFAULT_PROMPTS, None),
        ("multi_projection", 4, None, 64, DEFAULT_PROMPTS, None),
        ("eagle", 3, None, 64, DEFAULT_PROMPTS, None),
        ("eagle", 4, None, 64, DEFAULT_PROMPTS, (4, 16, None)),
        ("multi_projection", 4, None, 64, DEFAULT_PROMPTS, (4, 16, None)),
        ("prompt_lookup", 6, None, 64, LOOKUP_PROMPTS, (4, 24, None)),
        ("suffix", 6, None, 64, LOOKUP_PROMPTS, (4, 24, None)),
        ("multi", 4, None, 64, DEFAULT_PROMPTS, (4, 24, "eagle,prompt_lookup")),
    ],
    ids=["self-draft", "prompt-lookup", "prompt-lookup-copying", "draft-model", "multi-projection", "eagle",
         "tree-eagle", "tree-multi-projection", "tree-prompt-lookup-copying", "suffix", "multi-draft"],
)
def test_speculative_demo(
    request, mesh_device, device_params, method, n_draft_tokens, draft_layers, max_generated_tokens, input_prompts,
    tree,
):
    tree_topk, tree_budget, proposers = tree or (1, None, None)
    params = dict(
        method=method, n_draft_tokens=n_draft_tokens, draft_layers=draft_layers,
        tree_topk=tree_topk, tree_depth=None, tree_budget=tree_budget, proposers=proposers,
        max_generated_tokens=max_generated_tokens, target_layers=None, max_ngram_size=3,
        max_seq_len=1024, batch_size=1, instruct=1, input_prompts=input_prompts,
    )
    try:
        config, prompts_file = demo_config(request, mesh_device, params)
        config.validate()
        prompts = load_prompts(resolve_prompts_path(prompts_file))
        engine = Engine(config, mesh_device)
        encoded = engine.encode(prompts)
    except UserError as exc:
        pytest.fail(str(exc), pytrace=False)

    log_block("configuration", {
        **{k: v for k, v in config.describe().items() if k not in ("device", "dtype")},
        "input_prompts": prompts_file, "prompts": len(prompts), "device": mesh_device.describe(),
        "proposer": engine.proposer.describe() if engine.proposer else "none (target only)",
        "draft tree": (
            "chain" if engine.spec.is_chain else f"top-{engine.spec.topk}, depth {engine.spec.depth}, "
            f"{engine.spec.budget} nodes per target call"
        ) + ("" if config.tree_budget or engine.spec.is_chain else f" (default for {mesh_device.type})"),
    })

    # Warm-up (allocations, traces) outside the measurement, then interleave target-only and
    # the method prompt by prompt, alternating which goes first, so drift hits both alike.
    engine.baseline.generate(encoded[0], WARMUP_TOKENS)
    engine.generator.generate(encoded[0], WARMUP_TOKENS)
    spec_results, base_results = [], []
    for i, ids in enumerate(encoded):
        def log_iteration(n: int, it: Iteration) -> None:
            shape = "" if it.depth is None or it.proposed == it.depth else f" (tree: {it.proposed} nodes, depth {it.depth})"
            logger.info(
                f"Iteration {n}: {it.seconds * 1e3:.1f} ms @ {it.emitted / it.seconds:.1f} tok/s, "
                f"accepted {it.accepted}/{it.proposed} draft tokens{shape}"
            )

        order = ("spec", "base") if i % 2 else ("base", "spec")
        for which in order:
            if which == "base":
                base_results.append(engine.run(ids, baseline=True))
            else:
                logger.info(f"--- prompt {i}: {config.method} ---")
                spec_results.append(engine.run(ids, on_iteration=log_iteration))

    comparisons = []
    exact = mesh_device.dtype.itemsize == 4
    for i, (ids, spec, base) in enumerate(zip(encoded, spec_results, base_results)):
        comparison = compare(
            base.tokens, spec.tokens, exact=exact,
            margin_at=lambda prefix, ids=ids: engine.top2_margin_after(ids, prefix),
        )
        comparisons.append(comparison)
        logger.info(f"--- prompt {i} output ({comparison.describe()}) ---\n{engine.tokenizer.decode(spec.tokens)}")

    summary = summarize([r.stats for r in spec_results])
    base_summary = summarize([r.stats for r in base_results])
    speedup = base_summary["total_seconds"] / summary["total_seconds"]
    log_block(f"summary: {config.method} vs target-only, {mesh_device.describe()}", {
        "acceptance rate": f"{summary['acceptance_rate']:.3f}",
        "mean accepted tokens / target call": f"{summary['mean_accepted_tokens']:.3f}",
        "per-position acceptance": " ".join(f"{a:.2f}" for a in summary["per_position_acceptance"]),
        "target calls": f"{summary['target_calls']} (target-only: {base_summary['target_calls']})",
        "tree nodes / depth / branching": (
            f"{summary['mean_tree_nodes']:.1f} / {summary['mean_tree_depth']:.2f} / {summary['mean_branching']:.2f}"
        ),
        **({"accepted paths by proposer": summary["accepted_by_source"]} if summary["accepted_by_source"] else {}),
        "generated tokens": summary["generated_tokens"],
        "TTFT": f"{summary['ttft_s'] * 1e3:.1f} ms (target-only: {base_summary['ttft_s'] * 1e3:.1f} ms)",
        "decode tok/s": (
            f"{summary['decode_tokens_per_s']:.1f} (target-only: {base_summary['decode_tokens_per_s']:.1f})"
        ),
        "e2e tok/s": f"{summary['e2e_tokens_per_s']:.1f} (target-only: {base_summary['e2e_tokens_per_s']:.1f})",
        "speedup over target-only": f"{speedup:.2f}x (same run, interleaved)",
    })

    bad = [f"prompt {i}: {c.describe()}" for i, c in enumerate(comparisons) if not c.ok]
    assert not bad, "output differs from target-only greedy decoding: " + "; ".join(bad)

    match_config = {**config.describe(), "input_prompts": prompts_file}
    target = find_target(load_targets(PERF_TARGETS), mesh_device.type, match_config)
    if target is None:
        logger.warning("no perf target matches this configuration: correctness checked, metrics not gated")
        return
    failures = check(target, summary, speedup, engine.spec.depth)
    assert not failures, f"perf target {target.id!r} missed: " + "; ".join(failures)
    logger.info(f"perf target {target.id!r} met")
