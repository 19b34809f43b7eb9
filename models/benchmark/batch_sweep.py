"""Throughput by batch size: where speculation stops paying when many users share the target.

    python scripts/benchmark.py --bench_file ../shared/data/spec_bench/question.jsonl --per_category 2 \
        --methods prompt_lookup,eagle --batch_sizes 1,2,4,8,16

For each batch size, target-only and every method decode ALL the prompts through
Generator.generate_batch (static batches of that size, or continuous batching with
--continuous 1), back to back in an order that rotates from one batch size to the next. Batching
raises target-only throughput by reading each weight once for many rows; drafts spend the same
spare compute, so past some batch size a method's throughput falls below target-only's: the
crossover. Every output must equal target-only's at the first batch size (greedy).

Writes batch_runs.jsonl (one line per configuration x batch size, as each finishes),
batch_reference.json (target-only's outputs at the first batch size: what every output is held
to), batch_summary.md (throughput table and crossovers) and done.json under the output folder.
An interrupted sweep resumes by batch size: one recorded for every configuration is skipped (its
configurations ran back to back, as the uninterrupted sweep's), one recorded in part runs again.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

from loguru import logger
from tqdm import tqdm

from models.benchmark.configurations import GREEDY_MODE, TARGET, Configuration, SweepPlan, _method_config
from models.benchmark.runlog import resume_lines
from models.benchmark.sweep import rotated
from models.common.cli import write_atomic, write_json_atomic
from models.common.device import Device
from models.common.errors import UserError
from models.common.metrics import summarize
from models.speculative.engine import AUTO, Engine
from models.speculative.generator import BatchResult

BATCH_RUNS, BATCH_SUMMARY, BATCH_REFERENCE = "batch_runs.jsonl", "batch_summary.md", "batch_reference.json"
WARMUP_TOKENS = 4


@dataclasses.dataclass
class BatchRow:
    config_id: str
    label: str
    batch_size: int
    continuous: bool
    prompts: int
    generated_tokens: int
    seconds: float
    throughput_tokens_per_s: float
    tokens_per_s_per_user: float  # tokens / (prefill + decode time) per row, token-weighted
    mean_accepted_tokens: float
    acceptance_rate: float
    target_calls: int  # batched target forwards
    ttft_s: float  # mean over requests (each one's own prefill)
    mismatches: int  # outputs that differ from target-only's


def build_engines(plan: SweepPlan, device: Device, max_batch: int) -> dict[Configuration, Engine]:
    """Target-only and each method at each draft shape (greedy, the first length), every engine
    sized for the largest batch (the memory check counts every row)."""
    if plan.modes != [GREEDY_MODE]:
        raise UserError("--batch_sizes measures greedy decoding; leave --temperature at 0")
    n = plan.lengths[0]
    if len(plan.lengths) > 1:
        raise UserError("--batch_sizes takes one --max_generated_tokens value")
    base = dataclasses.replace(plan.base, method=TARGET, max_generated_tokens=n, batch_size=max_batch)
    target = Engine(base, device, uses_baseline=False)
    engines = {Configuration(TARGET, 0, n): target}
    n_layers = target.model.n_layers
    for method in plan.methods:
        for shape in plan.draft_shapes():
            config = dataclasses.replace(_method_config(plan, method, shape, n_layers), batch_size=max_batch)
            if config.tree_budget == AUTO:
                raise UserError("--batch_sizes: --tree_budget auto tunes one sequence's trees; give a number")
            spec = config.tree_spec(device.torch_device.type)
            key = Configuration.of_spec(method, spec, n)
            if key not in engines:
                engines[key] = Engine(config, device, uses_baseline=False)
    return engines


def _row(config: Configuration, batch_size: int, continuous: bool, result: BatchResult,
         reference: list[list[int]] | None) -> BatchRow:
    summary = summarize([r.stats for r in result.results])
    outputs = [r.tokens for r in result.results]
    mismatches = 0 if reference is None else sum(a != b for a, b in zip(outputs, reference))
    return BatchRow(
        config_id=config.id, label=config.label(), batch_size=batch_size, continuous=continuous,
        prompts=len(outputs), generated_tokens=result.generated_tokens, seconds=round(result.seconds, 3),
        throughput_tokens_per_s=round(result.throughput_tokens_per_s, 2),
        tokens_per_s_per_user=round(summary["e2e_tokens_per_s"], 2),
        mean_accepted_tokens=round(summary["mean_accepted_tokens"], 4),
        acceptance_rate=round(summary["acceptance_rate"], 4), target_calls=len(result.iterations),
        ttft_s=round(summary["ttft_s"], 4), mismatches=mismatches,
    )


def resume_rows(folder: Path, config_ids: list[str]) -> tuple[list[BatchRow], list[list[int]] | None]:
    """An interrupted batch sweep's rows of the batch sizes every configuration ran, and the
    reference outputs they were held to (None: none recorded, so nothing is kept)."""
    path = folder / BATCH_REFERENCE
    if not path.is_file():
        (folder / BATCH_RUNS).unlink(missing_ok=True)  # rows without their reference cannot be checked
        return [], None
    rows = resume_lines(folder / BATCH_RUNS, lambda data: BatchRow(**data), lambda r: r.batch_size,
                        lambda r: r.config_id, config_ids, "batch size")
    return rows, json.loads(path.read_text(encoding="utf-8"))


def batch_sweep(engines: dict[Configuration, Engine], prompts: list[list[int]], batch_sizes: list[int],
                continuous: bool, output_dir: Path, done: list[BatchRow] | None = None,
                reference: list[list[int]] | None = None) -> list[BatchRow]:
    """Every configuration at every batch size over all prompts; rows appended to batch_runs.jsonl.
    done, reference: a resumed sweep's rows (their batch sizes are skipped) and reference outputs."""
    configs = list(engines)
    n = configs[0].max_generated_tokens
    rows: list[BatchRow] = list(done or [])
    todo = [(i, b) for i, b in enumerate(batch_sizes) if b not in {r.batch_size for r in rows}]
    with open(output_dir / BATCH_RUNS, "a", encoding="utf-8") as log, \
            tqdm(total=len(configs) * len(todo), desc="batch sweep", unit="run", file=sys.stderr) as bar:
        for i, batch_size in todo:
            order = rotated(configs, i)
            if reference is None:  # target-only first at the first size: it is the reference
                order = [configs[0]] + [c for c in order if c != configs[0]]
            for config in order:
                generator = engines[config].generator
                generator.generate_batch(prompts[:batch_size], WARMUP_TOKENS, batch_size)  # untimed
                generator.forget()
                result = generator.generate_batch(prompts, n, batch_size, continuous=continuous)
                if config.method == TARGET and reference is None:
                    reference = [r.tokens for r in result.results]
                    write_json_atomic(output_dir / BATCH_REFERENCE, reference)
                row = _row(config, batch_size, continuous, result, reference)
                if row.mismatches:
                    logger.error(f"{config.id} at batch {batch_size}: {row.mismatches} outputs differ from target-only")
                rows.append(row)
                log.write(json.dumps(dataclasses.asdict(row)) + "\n")
                log.flush()
                bar.set_postfix_str(f"{config.id} B={batch_size}: {row.throughput_tokens_per_s:.1f} tok/s")
                bar.update()
    return rows


def crossover(rows: list[BatchRow], config_id: str) -> int | None:
    """The smallest batch size at which the configuration's throughput is below target-only's."""
    target = {r.batch_size: r.throughput_tokens_per_s for r in rows if r.config_id.startswith(TARGET + "-")}
    for r in sorted((r for r in rows if r.config_id == config_id), key=lambda r: r.batch_size):
        if r.batch_size in target and r.throughput_tokens_per_s < target[r.batch_size]:
            return r.batch_size
    return None


def summary_markdown(rows: list[BatchRow], meta: dict) -> str:
    sizes = sorted({r.batch_size for r in rows})
    ids = list(dict.fromkeys(r.config_id for r in rows))
    by = {(r.config_id, r.batch_size): r for r in rows}
    label = {r.config_id: r.label for r in rows}
    kind = "continuous batching over B rows" if rows and rows[0].continuous else "static batches of B"
    lines = [
        f"# Throughput by batch size ({kind})", "",
        f"`{meta['command']}`", "",
        f"{meta['device']} ({meta['cpu']}, {meta['cpu_count']} cores), {meta['model']}, "
        f"{len(meta['prompts'])} prompts, "
        f"{rows[0].generated_tokens if rows else 0} tokens by target-only; started {meta['started']}.", "",
        "Throughput in tok/s (all rows together); in brackets the speedup over target-only at the same B.", "",
        "| configuration | " + " | ".join(f"B={b}" for b in sizes) + " | crossover |",
        "|---|" + "---:|" * len(sizes) + "---:|",
    ]
    target_id = ids[0]
    for cid in ids:
        cells = []
        for b in sizes:
            r = by.get((cid, b))
            if r is None:
                cells.append("")
                continue
            t = by.get((target_id, b))
            ratio = f" ({r.throughput_tokens_per_s / t.throughput_tokens_per_s:.2f}x)" if t and cid != target_id else ""
            cells.append(f"{r.throughput_tokens_per_s:.1f}{ratio}")
        at = crossover(rows, cid)
        cross = "" if cid == target_id else (f"B={at}" if at else f"none up to {sizes[-1]}")
        lines.append(f"| {label[cid]} | " + " | ".join(cells) + f" | {cross} |")
    lines += ["", "Per user (tok/s per row, prefill included), tau (tokens per row per target call), "
              "batched target calls:", "",
              "| configuration | B | tok/s/user | tau | target calls | TTFT ms | mismatches |",
              "|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r.label} | {r.batch_size} | {r.tokens_per_s_per_user:.1f} | {r.mean_accepted_tokens:.2f} | "
                     f"{r.target_calls} | {r.ttft_s * 1e3:.0f} | {r.mismatches} |")
    base = {r.batch_size: r for r in rows if r.config_id == target_id}
    if 1 in base:
        one = base[1].throughput_tokens_per_s
        lines += ["", "Target-only throughput over batch 1: " + ", ".join(
            f"B={b}: {base[b].throughput_tokens_per_s / one:.2f}x" for b in sizes if b in base)]
        lines += ["", "Target-only decode-phase throughput over batch 1 (tokens after each prompt's first over the "
                  "time left after prefills, which run one prompt at a time): " + ", ".join(
                      f"B={b}: {decode_rate(base[b]) / decode_rate(base[1]):.2f}x" for b in sizes if b in base)]
    return "\n".join(lines) + "\n"


def decode_rate(row: BatchRow) -> float:
    """Tokens after each prompt's first over the run's time less its prefills (TTFT per request)."""
    decode_s = row.seconds - row.prompts * row.ttft_s
    return (row.generated_tokens - row.prompts) / decode_s if decode_s > 0 else 0.0


def write_summary(rows: list[BatchRow], meta: dict, output_dir: Path) -> str:
    text = summary_markdown(rows, meta)
    write_atomic(output_dir / BATCH_SUMMARY, text)
    write_json_atomic(output_dir / "done.json", {"runs": len(rows), "mismatches": sum(r.mismatches for r in rows)})
    return text
