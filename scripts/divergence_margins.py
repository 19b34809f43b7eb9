"""How near a tie the target was wherever speculation changed a benchmark run's greedy output.

    python scripts/divergence_margins.py logs/spec_bench_llama_cpp_cpu

For every run of a finished sweep whose tokens differ from its reference (a suite method from the
suite's target-only; llama.cpp's own prompt lookup from llama.cpp greedy, when the sweep's
backend is llama_cpp, whose target-only is llama.cpp greedy), the target's top-2 logit margin at
the first differing token, computed by the run's own backend (in a sweep of several, each run's)
on the prompt and the tokens both agree on. A divergence under the near-tie tolerance
(models/common/correctness.py) is one a rounding difference between a verify block and a decode
step can flip; one above it would be a bug. Prints one line per configuration and writes
divergences.json beside the sweep's logs.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from loguru import logger  # noqa: E402
from tqdm import tqdm  # noqa: E402

from models.backends.registry import backend as backend_named  # noqa: E402
from models.benchmark.runlog import backends_of, read_run_log  # noqa: E402
from models.common.cli import run_cli, write_atomic  # noqa: E402
from models.common.correctness import HALF_PRECISION_TIE_TOLERANCE  # noqa: E402
from models.common.device import open_device  # noqa: E402
from models.common.errors import UserError  # noqa: E402
from models.speculative.engine import METHODS, top2_margin_after  # noqa: E402

OUTPUT = "divergences.json"
LLAMA_LOOKUP, LLAMA_GREEDY = "llama_cpp_prompt_lookup", "llama_cpp_greedy"


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run_dir", type=Path, help="a finished scripts/benchmark.py --output_dir")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    log = read_run_log(args.run_dir)  # a finished sweep, or one line saying why not
    folder, meta, records = log.folder, log.meta, log.records
    options = meta.get("options", {})
    backends = backends_of(meta)
    prompts = {p["index"]: p for p in meta["prompts"]}
    instruct = bool(int(options.get("instruct", 1)))
    diverged = [r for r in records if not r.matches_target_only and r.first_mismatch is not None
                and (r.method in METHODS or (r.method == LLAMA_LOOKUP and r.backend == "llama_cpp"))]
    targets = {}  # (backend, weights) -> its loaded target: each run's margin is its own target's
    rows = []
    for r in tqdm(diverged, desc="margins", unit="run"):
        key = (r.backend, r.weights)
        if key not in targets:
            targets[key] = backend_named(r.backend).implementation().load(meta["model"], None,
                                                                          open_device("cpu", weights=r.weights))
        loaded = targets[key]
        prompt = prompts[r.prompt_index]
        ids = loaded.tokenizer.encode(prompt["text"], chat=instruct)
        if len(ids) != prompt["prompt_tokens"]:
            raise UserError(f"prompt {r.prompt_index} encodes to {len(ids)} tokens, the sweep recorded "
                            f"{prompt['prompt_tokens']}: not the tokenizer or template the sweep used")
        margin = top2_margin_after(loaded.model, ids, r.output_ids[: r.first_mismatch])
        rows.append({"config_id": r.config_id, "backend": r.backend, "prompt_index": r.prompt_index,
                     "category": r.category,
                     "first_mismatch": r.first_mismatch, "top2_margin": round(margin, 4),
                     "near_tie": margin < HALF_PRECISION_TIE_TOLERANCE})
    runs_by_config: dict[str, int] = {}
    for r in records:
        runs_by_config[r.config_id] = runs_by_config.get(r.config_id, 0) + 1
    for config_id in sorted({row["config_id"] for row in rows}):
        mine = [row for row in rows if row["config_id"] == config_id]
        near = sum(row["near_tie"] for row in mine)
        print(f"{config_id}: {len(mine)} of {runs_by_config[config_id]} prompts diverge; {near} at a near-tie "
              f"(top-2 margin < {HALF_PRECISION_TIE_TOLERANCE}), largest margin {max(r['top2_margin'] for r in mine)}")
    write_atomic(folder / OUTPUT, json.dumps({"backend": ",".join(backends), "model": meta["model"],
                                              "tolerance": HALF_PRECISION_TIE_TOLERANCE, "divergences": rows},
                                             indent=1) + "\n")
    logger.info(f"{len(rows)} divergences -> {folder / OUTPUT}")
    return 0


if __name__ == "__main__":
    run_cli(main)
