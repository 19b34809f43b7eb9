#!/usr/bin/env python3
"""Compare two scripts/benchmark.py folders: per configuration and category, tau and speedup over
target-only, BASE -> NEW, with a noise band estimated from the runs' own per-prompt pairs.

    python scripts/compare_runs.py logs/before/ logs/after/
    python scripts/compare_runs.py logs/before/ logs/after/ --json /tmp/comparison.json

Exit status: 0 no regression beyond the band; 1 a regression (slower beyond the band, tau down,
an output no longer equal to target-only's, a configuration missing from NEW, or target-only
slower against the transformers peers); 2 bad input (one line on stderr). The statistics are
described in models/benchmark/compare.py.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from loguru import logger  # noqa: E402

from models.benchmark.compare import compare, load_run, report, to_json  # noqa: E402
from models.common.cli import ArgumentParser, check_writable, run_cli, write_json_atomic  # noqa: E402


def parse_args(argv: list[str] | None = None):
    p = ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("base", help="the earlier run: a folder written by scripts/benchmark.py")
    p.add_argument("new", help="the run to judge against BASE (same sweep, same prompts)")
    p.add_argument("--json", default=None, help="also write the comparison to this JSON file")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    json_path = None if args.json is None else check_writable(args.json, "--json")
    base, new = load_run(args.base, "BASE"), load_run(args.new, "NEW")
    for given, log in ((args.base, base), (args.new, new)):
        if log.folder != Path(given):
            logger.info(f"newest finished sweep in {given}: {log.folder}")
    comparison = compare(base, new)
    sys.stdout.write(report(comparison))
    if json_path is not None:
        write_json_atomic(json_path, to_json(comparison))
    return 1 if comparison.regressions else 0


if __name__ == "__main__":
    run_cli(main)
