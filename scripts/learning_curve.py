#!/usr/bin/env python3
"""The speculators' learning curve: tau (chain and tree) and held-out accuracy against the
answer tokens the heads were trained on.

    python scripts/learning_curve.py --bench_file ../shared/data/spec_bench/question.jsonl --per_category 8

For each point (--points, answer tokens; "all" = every chunk, missing ones decoded first) and each
kind (--kinds): train with scripts/train_speculator.py --answer_tokens N (only the chunks it needs must exist),
score teacher-forced accuracy on the held-out chunk and on a training chunk
(scripts/speculator_accuracy.py; the gap says how much the head memorises), and
benchmark the head as a chain of --n_draft_tokens and as a tree (scripts/benchmark.py). Every
step's output is kept under --output_dir and skipped when present, so the run resumes after an
interruption. Writes curve.json, curve.md and curve.png there. Hours on the 2-core CPU.

A point's head already in --output_dir/heads/KIND-POINT is taken as it is: train one with other
settings (say fewer epochs on more data) by scripts/train_speculator.py --output there; the table
says each head's epochs.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from loguru import logger

from models.common.cli import (
    ArgumentParser, check_output_folder, prompt_context_arg, run_cli, write_atomic, write_json_atomic,
)
from models.common.errors import UserError
from models.llama.weights import DEFAULT_MODEL
from models.speculative.speculators import heads

SCRIPTS = Path(__file__).resolve().parent


def parse_args(argv=None):
    p = ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--points", default="250000,500000,1000000,all", help="answer tokens per point, or all")
    p.add_argument("--kinds", default="eagle,multi_projection")
    p.add_argument("--model", default=DEFAULT_MODEL)
    p.add_argument("--data_dir", default=None, help="the speculator data (default: data/speculator/MODEL)")
    p.add_argument("--work_dir", default=None, help="its hidden-state cache (default: .cache/train/MODEL)")
    p.add_argument("--output_dir", default="logs/learning_curve", help="heads, scores and benchmarks (resumable)")
    p.add_argument("--n_draft_tokens", type=int, default=5, help="chain length, and the tree's depth")
    p.add_argument("--tree_topk", type=int, default=4)
    p.add_argument("--tree_budget", type=int, default=16)
    p.add_argument("--bench_file", default=None, help="Spec-Bench question.jsonl")
    p.add_argument("--per_category", type=int, default=8)
    p.add_argument("--input_prompts", nargs="+", default=None, help="prompt files instead of --bench_file")
    p.add_argument("--max_generated_tokens", type=int, default=128)
    p.add_argument("--train_args", default="", help="extra train_speculator.py flags, e.g. '--epochs 2'")
    p.add_argument("--prompt_context", type=prompt_context_arg, default=None,
                   help="prompt positions each example keeps, in training and in scoring alike (default all)")
    return p.parse_args(argv)


def run_script(name: str, argv: list[str]) -> None:
    """Another script's main in this process; its failure is this run's, in one line."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"script_{name}", SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    code = module.main(argv)
    if code:
        raise UserError(f"{name}.py {' '.join(argv)} exited with {code}")


def overall_tau(bench_dir: Path) -> dict[str, dict[str, float]]:
    """config id -> {"tau", "speedup"} from a benchmark's summary.csv (the overall rows)."""
    import csv

    with open(bench_dir / "summary.csv", newline="") as f:
        return {row["config_id"]: {"tau": float(row["mean_accepted_tokens"]), "speedup": float(row["speedup"])}
                for row in csv.DictReader(f) if row["category"] == "overall"}


# teacher-forced accuracy on both splits: how far train exceeds held out says how much the head
# memorises rather than generalises (file suffix per split)
SPLITS = {"held_out": "", "train": "-train"}


def scored_steps(scores: dict) -> list[float]:
    """Top-1 by draft step, for the steps the head drafts (multi_projection's 4 heads score no fifth)."""
    return [a for a, n in zip(scores["top1"], scores["positions"]) if n]


def plot(points: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for kind in sorted({p["kind"] for p in points}):
        mine = sorted((p for p in points if p["kind"] == kind), key=lambda p: p["answer_tokens"])
        xs = [p["answer_tokens"] for p in mine]
        for shape, style in (("chain", "-o"), ("tree", "--s")):
            ax.plot(xs, [p[shape]["tau"] for p in mine], style, label=f"{kind} {shape}")
    ax.set_xscale("log")
    ax.set_xlabel("answer tokens trained on")
    ax.set_ylabel("tau (mean accepted tokens per target call)")
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    tmp = path.with_name(path.stem + ".tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    tmp.replace(path)


def table(points: list[dict]) -> str:
    lines = ["| kind | answer tokens | epochs | train top-1 by step | held-out top-1 by step | chain tau / speedup "
             "| tree tau / speedup |", "|---|---:|---:|---|---|---:|---:|"]
    for p in sorted(points, key=lambda p: (p["kind"], p["answer_tokens"])):
        train, held_out = (" ".join(f"{a:.0%}" for a in p[key]) for key in ("train_top1", "held_out_top1"))
        lines.append(f"| {p['kind']} | {p['answer_tokens']:,} | {p['epochs']:g} | {train} | {held_out} "
                     f"| {p['chain']['tau']:.2f} / {p['chain']['speedup']:.2f}x "
                     f"| {p['tree']['tau']:.2f} / {p['tree']['speedup']:.2f}x |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    args = parse_args(argv)
    kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
    for kind in kinds:
        if kind not in heads.KINDS:
            raise UserError(f"unknown kind {kind!r} in --kinds; choose from {', '.join(heads.KINDS)}")
    points = []
    for value in args.points.split(","):
        value = value.strip()
        if value != "all" and (not value.isdigit() or int(value) < 1):
            raise UserError(f"--points takes answer-token counts or 'all', got {value!r}")
        points.append(value)
    if any(flag.startswith("--prompt_context") for flag in args.train_args.split()):
        raise UserError("give --prompt_context to learning_curve.py itself, not in --train_args: "
                        "the accuracy scores must keep the same prompt positions as training")
    if (args.bench_file is None) == (args.input_prompts is None):
        raise UserError("give one of --bench_file (Spec-Bench) or --input_prompts")
    out = check_output_folder(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    common = ["--model", args.model] + (["--data_dir", args.data_dir] if args.data_dir else []) + (
        ["--work_dir", args.work_dir] if args.work_dir else []) + (
        ["--prompt_context", str(args.prompt_context)] if args.prompt_context else [])

    results = []
    for point in points:
        for kind in kinds:
            name = f"{kind}-{point}"
            head = out / "heads" / name
            if not (head / heads.CONFIG_FILE).exists():
                logger.info(f"--- training {name} ---")
                budget = [] if point == "all" else ["--answer_tokens", point]
                run_script("train_speculator", ["--kind", kind, "--output", str(head), *common, *budget,
                                                *args.train_args.split()])
            scores = {split: out / "accuracy" / f"{name}{suffix}.json" for split, suffix in SPLITS.items()}
            for split, path in scores.items():
                if not path.exists():
                    path.parent.mkdir(parents=True, exist_ok=True)
                    run_script("speculator_accuracy", ["--speculator", str(head), *common, "--split", split,
                                                       "--output", str(path)])
            bench = out / "bench" / name
            if not (bench / "done.json").exists():
                logger.info(f"--- benchmarking {name} ---")
                config = out / "bench" / f"{name}.config.json"
                config.parent.mkdir(parents=True, exist_ok=True)
                write_json_atomic(config, {"method_options": {kind: {"speculator": str(head)}}})
                prompts = (["--bench_file", args.bench_file, "--per_category", str(args.per_category)]
                           if args.bench_file else ["--input_prompts", *args.input_prompts])
                # an interrupted benchmark resumes from the prompts it recorded (the same arguments)
                run_script("benchmark", [
                    "--config", str(config), "--methods", kind, "--model", args.model, *prompts,
                    "--n_draft_tokens", str(args.n_draft_tokens), "--tree_topk", f"1,{args.tree_topk}",
                    "--tree_depth", str(args.n_draft_tokens), "--tree_budget", str(args.tree_budget),
                    "--max_generated_tokens", str(args.max_generated_tokens), "--hf_peers", "0",
                    "--llama_cpp_peers", "0", "--output_dir", str(bench)])
            trained = json.loads((head / heads.CONFIG_FILE).read_text())["training"]
            taus = overall_tau(bench)
            k, n = args.n_draft_tokens, args.max_generated_tokens
            chain = taus[f"{kind}-k{k}-n{n}"]
            tree = taus[f"{kind}-t{args.tree_topk}d{k}b{args.tree_budget}-n{n}"]
            results.append({"kind": kind, "point": point, "answer_tokens": trained["answer_tokens"],
                            "epochs": all_runs(trained, lambda t: t["train"]["epochs"]),
                            "train_seconds": all_runs(trained, lambda t: t["seconds"].get(f"train_{kind}")),
                            "train_top1": scored_steps(json.loads(scores["train"].read_text())),
                            "held_out_top1": scored_steps(json.loads(scores["held_out"].read_text())),
                            "chain": chain, "tree": tree})
    write_json_atomic(out / "curve.json", results)
    write_atomic(out / "curve.md", table(results))
    plot(results, out / "curve.png")
    print(table(results))
    return 0


def all_runs(training: dict, figure) -> float | None:
    """A head's figure summed over its training runs: one trained further from another
    (train_speculator.py --init_from) counts the earlier run's passes and seconds too."""
    earlier = training.get("init_from", {}).get("training")
    mine, before = figure(training), all_runs(earlier, figure) if earlier else 0
    return None if mine is None or before is None else mine + before


if __name__ == "__main__":
    run_cli(main)
