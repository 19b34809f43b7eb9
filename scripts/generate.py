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
over DP, outputs gathered in input order. See README "Mesh devices".
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from loguru import logger

from models.common.cli import ArgumentParser, bool01, check_writable, run_cli, tree_budget_arg, write_json_atomic
from models.common.device import open_device, requested_device_name
from models.common.metrics import summarize
from models.common.prompts import load_prompts
from models.common.mesh import run_on_mesh
from models.speculative.engine import BATCH_DRAFTS, METHODS, RunConfig
from models.speculative.mesh_runs import run_prompts
from models.speculative.sampling import VERIFY_MODES

STATS_KEYS = (
    "acceptance_rate", "mean_accepted_tokens", "target_calls", "generated_tokens", "decode_tokens_per_s",
    "ttft_s", "e2e_tokens_per_s", "per_position_acceptance", "proposed_tokens", "accepted_tokens",
    "mean_tree_nodes", "mean_tree_depth", "mean_branching", "accepted_by_source", "throughput_tokens_per_s",
)


def parse_args(argv: list[str] | None = None):
    d = RunConfig()
    p = ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--input_prompts", required=True, help="JSON list of {prompt, context?, max_length?}")
    p.add_argument("--output", required=True, help="where to write the JSON result")
    p.add_argument("--method", default=d.method, help=f"one of {', '.join(METHODS)}")
    p.add_argument("--model", default=d.model, help="smollm2-135m, a checkpoint folder, a .gguf, or random:PRESET")
    p.add_argument("--n_draft_tokens", type=int, default=d.n_draft_tokens)
    p.add_argument("--max_generated_tokens", type=int, default=d.max_generated_tokens)
    p.add_argument("--draft_layers", type=int, default=None)
    p.add_argument("--target_layers", type=int, default=None)
    p.add_argument("--draft_model", default=None, help="draft model for --method draft_model (default: the target)")
    p.add_argument("--speculator", default=None, help="multi_projection/eagle weights folder (default: shipped)")
    p.add_argument("--max_ngram_size", type=int, default=d.max_ngram_size)
    p.add_argument("--tree_topk", type=int, default=d.tree_topk,
                   help="children per draft node; 1 (default): a chain of --n_draft_tokens")
    p.add_argument("--tree_depth", type=int, default=None, help="draft tree levels (default: --n_draft_tokens)")
    p.add_argument("--tree_budget", type=tree_budget_arg, default=None,
                   help="tree nodes verified per target call, root excluded, or 'auto' (picked from this "
                        "device's measured verify cost and the acceptance seen); default: 16 on cpu, 32 on cuda")
    p.add_argument("--proposers", default=None, help="--method multi: proposers to merge, e.g. eagle,prompt_lookup")
    p.add_argument("--max_seq_len", type=int, default=d.max_seq_len)
    p.add_argument("--prefill_seq_len", type=int, default=None, help="prefill in chunks of this many tokens")
    p.add_argument("--batch_size", type=int, default=d.batch_size,
                   help="static batches: this many prompts decoded together, the next ones when all are done")
    p.add_argument("--full_batch_size", type=int, default=None,
                   help="continuous batching with this many rows: a finished row takes the next prompt at once")
    p.add_argument("--batch_drafts", default=d.batch_drafts, choices=BATCH_DRAFTS,
                   help="with a batch: auto (default) verifies the drafts whose expected tokens pay for their rows "
                        "(from this device's measured verify cost), all verifies every draft")
    p.add_argument("--instruct", type=bool01, default=d.instruct, help="1: apply the chat template")
    p.add_argument("--temperature", type=float, default=d.temperature, help="0 (default): greedy; > 0: sampling")
    p.add_argument("--top_k", type=int, default=d.top_k, help="sample from the k most likely tokens (0: off)")
    p.add_argument("--top_p", type=float, default=d.top_p, help="sample from the top-p nucleus (1: off)")
    p.add_argument("--seed", type=int, default=d.seed, help="prompt i samples from the stream (seed, i)")
    p.add_argument("--verify", default=None, choices=VERIFY_MODES,
                   help="sampling only: rejection (default; distributed as target-only sampling) or coupled "
                        "(Gumbel noise per position: equal to target-only sampling token for token)")
    p.add_argument("--device", default=None, help="cpu or cuda (default: $MESH_DEVICE, else cpu)")
    p.add_argument("--mesh_shape", default=d.mesh_shape,
                   help="DPxTP mesh devices, one worker process each: the target sharded over TP, the prompts "
                        "split over DP (default 1x1: this process)")
    p.add_argument("--draft_mesh_shape", default=None,
                   help="--method draft_model: the draft on a device group of its own, of this DPxTP shape")
    p.add_argument("--dtype", default=None, help="float32 or bfloat16 (default: float32 on cpu, bfloat16 on cuda)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    output = check_writable(args.output)
    prompts = load_prompts(args.input_prompts)
    config = RunConfig(
        model=args.model, method=args.method, n_draft_tokens=args.n_draft_tokens,
        draft_layers=args.draft_layers, target_layers=args.target_layers, draft_model=args.draft_model,
        speculator=args.speculator, max_ngram_size=args.max_ngram_size, max_seq_len=args.max_seq_len,
        tree_topk=args.tree_topk, tree_depth=args.tree_depth, tree_budget=args.tree_budget, proposers=args.proposers,
        prefill_seq_len=args.prefill_seq_len,
        max_generated_tokens=args.max_generated_tokens, batch_size=args.batch_size,
        full_batch_size=args.full_batch_size, batch_drafts=args.batch_drafts,
        instruct=args.instruct, device=requested_device_name(args.device), dtype=args.dtype,
        temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, seed=args.seed, verify=args.verify,
        mesh_shape=args.mesh_shape, draft_mesh_shape=args.draft_mesh_shape,
    )
    config.validate()
    device = open_device(config.device, config.dtype)  # a bad or missing device: one line, before any worker
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
