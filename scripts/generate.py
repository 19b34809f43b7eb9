#!/usr/bin/env python3
"""Generate with one method over a prompts file and write ids, text and stats as JSON.

    python scripts/generate.py --input_prompts sample_prompts/demo_prompts.json \
        --method prompt_lookup --n_draft_tokens 4 --max_generated_tokens 128 --output out.json

`--method target` is target-only decoding on the same model code: the reference. Under greedy
decoding (the default) and `--verify coupled` sampling every other method's output_ids equal
it; under `--verify rejection` (the default when `--temperature` > 0) they are distributed as
it. Prompt i samples from the stream (--seed, i): a run reproduces from its seed.

    python scripts/generate.py --input_prompts sample_prompts/demo_prompts.json --method eagle \
        --temperature 0.7 --top_p 0.9 --seed 1 --verify coupled --output out.json

Many users at once: `--batch_size B` decodes B prompts together (the next B when all are done),
`--full_batch_size S` keeps S rows busy (continuous batching: a finished row takes the next
prompt). One target call per iteration serves every row; each output equals its solo run.

Several devices: `--mesh_shape DPxTP` starts one worker process per mesh device (torch.distributed,
gloo on the CPU, NCCL on CUDA): the target and a draft model sharded over TP, the prompts split
over DP, outputs gathered in input order. See docs/meshes.md.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from loguru import logger

from models.common.cli import ArgumentParser, check_writable, run_cli, write_json_atomic
from models.common.device import requested_device_name
from models.common.metrics import summarize
from models.common.prompts import load_prompts
from models.common.mesh import run_on_mesh
from models.speculative import options
from models.speculative.engine import RunConfig
from models.speculative.mesh_runs import run_prompts
from models.speculative.options import RUN_INPUTS

STATS_KEYS = (
    "acceptance_rate", "mean_accepted_tokens", "target_calls", "generated_tokens", "decode_tokens_per_s",
    "ttft_s", "e2e_tokens_per_s", "per_position_acceptance", "proposed_tokens", "accepted_tokens",
    "mean_tree_nodes", "mean_tree_depth", "mean_branching", "accepted_by_source", "throughput_tokens_per_s",
)


def build_parser() -> ArgumentParser:
    """The prompts and output files, and a flag per run option (models/speculative/options.py)."""
    p = ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--input_prompts", required=True, help=RUN_INPUTS["input_prompts"].text())
    p.add_argument("--output", required=True, help="where to write the JSON result")
    options.add_arguments(p)
    return p


def parse_args(argv: list[str] | None = None):
    return build_parser().parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    output = check_writable(args.output)
    prompts = load_prompts(args.input_prompts)
    config = RunConfig(**{**options.from_args(args), "device": requested_device_name(args.device)})
    device = config.prepare()  # a bad value or a missing device: one line, before any worker
    run = run_on_mesh(config.mesh, run_prompts, config, prompts, device_type=device.type, draft_shape=config.draft_mesh)
    results = run.result
    records = [{"index": i, "output_ids": r.tokens, "text": text}
               for i, (r, text) in enumerate(zip(results.results, run.texts))]
    summary = summarize([r.stats for r in results.results])
    stats = {key: summary[key] for key in STATS_KEYS if key in summary}
    stats["throughput_tokens_per_s"] = results.throughput_tokens_per_s
    if config.mesh.tp > 1:  # what the mesh costs: rank 0's wall time in collectives
        stats["collective_seconds"] = run.collective_seconds
    config_out = {**config.describe(), "device": run.device, "input_prompts": args.input_prompts, "tree": run.tree}
    if run.proposer is not None:
        config_out["proposer"] = run.proposer
    write_json_atomic(output, {"config": config_out, "prompts": records, "stats": stats})
    logger.info(
        f"acceptance {stats['acceptance_rate']:.3f}, mean accepted {stats['mean_accepted_tokens']:.2f}, "
        f"decode {stats['decode_tokens_per_s']:.1f} tok/s/user, {stats['throughput_tokens_per_s']:.1f} tok/s "
        f"throughput -> {output}"
    )
    return 0


if __name__ == "__main__":
    run_cli(main)
