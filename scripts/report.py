#!/usr/bin/env python3
"""Build a self-contained HTML report (and PNG plots) from a scripts/benchmark.py folder.

    python scripts/report.py logs/20260101-120000/            # writes report.html and *.png there
    python scripts/report.py logs/                            # the newest finished sweep in logs/
    python scripts/report.py logs/20260101-120000/ --output /tmp/report.html

The page opens offline (inline CSS, JS and images): the Spec-Bench table, speedup vs k, tau and
speedup vs node budget (chains and token trees), per-depth acceptance, mean accepted tokens by
category, a sortable and filterable results table with each configuration's tree shape, and
every generation with accepted drafts in green and target tokens in red (hover: the iteration,
accepted/proposed and its tree's size).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from loguru import logger

from models.benchmark.compare import load_run
from models.benchmark.html_report import render
from models.benchmark.plots import PLOTS, draw_all
from models.benchmark.summary import summary_rows
from models.common.cli import ArgumentParser, check_writable, run_cli, write_atomic


def parse_args(argv: list[str] | None = None):
    p = ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("folder", help="a folder written by scripts/benchmark.py, or its parent (newest sweep)")
    p.add_argument("--output", default=None, help="HTML file to write (default: FOLDER/report.html)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    log = load_run(args.folder, "folder")  # every field of the type scripts/benchmark.py writes, or one line
    if log.folder != Path(args.folder):
        logger.info(f"newest finished sweep in {args.folder}: {log.folder}")
    output = check_writable(args.output or log.folder / "report.html")
    for name in PLOTS:  # the plots go beside the run log, whatever --output says
        check_writable(log.folder / name, "plot")
    rows = summary_rows(log.records)
    images = draw_all(rows)
    for name, png in images.items():
        write_atomic(log.folder / name, png)
    write_atomic(output, render(log, rows, images))
    logger.info(f"{len(log.records)} runs -> {output} (+ {', '.join(images)} in {log.folder})")
    return 0


if __name__ == "__main__":
    run_cli(main)
