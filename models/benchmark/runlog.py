"""The run log: the folder a sweep writes and the report reads.

    meta.json     the sweep's options, device, versions and configurations (written first)
    runs.jsonl    one line per (configuration, prompt), appended prompt by prompt
    summary.csv   per configuration x category and overall (written at the end, atomically)
    summary.md    the Spec-Bench style table and the full summary
    done.json     written last: a folder without it is a sweep that did not finish

Each line keeps what the report needs and nothing it would have to recompute from a model:
output ids and their strings, the draft shape (tree_topk, tree_depth, tree_budget; a chain of k
is 1, k, k), and the per-iteration counts that tell drafts from target tokens (tree nodes,
depth and, for multi-draft, the proposer whose branch was accepted). Logs written before token
trees (no shape, no depth/source per iteration) still load: their drafts are chains. Each line
also says how it decoded (temperature, verify, top_k, top_p, seed); logs from before sampling
load as greedy.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from models.common.cli import write_json_atomic
from models.common.errors import UserError
from models.common.metrics import Iteration, SequenceStats

META, RUNS, SUMMARY_CSV, SUMMARY_MD, DONE = "meta.json", "runs.jsonl", "summary.csv", "summary.md", "done.json"


@dataclasses.dataclass
class RunRecord:
    config_id: str
    method: str
    k: int
    max_generated_tokens: int
    prompt_index: int
    run_order: int  # position among this prompt's runs (the order rotates from prompt to prompt)
    category: str
    source: str
    question_id: int | str | None
    prompt_tokens: int
    output_ids: list[int]
    token_strings: list[str]
    total_s: float  # wall time of the call
    ttft_s: float | None  # None for transformers peers
    iterations: list[dict] | None  # Iteration fields per verification call; None for peers
    matches_target_only: bool
    first_mismatch: int | None  # first position where the output differs from target-only
    # the draft shape; None where nothing is drafted (target-only, transformers greedy) or in an
    # older log (a chain of k); a chain of k is 1, k, k
    tree_topk: int | None = None
    tree_depth: int | None = None
    tree_budget: int | str | None = None  # nodes verified per target call (root excluded), or "auto"
    # decoding: greedy (temperature 0; older logs, without these fields, were all greedy), or
    # sampled at temperature with top_k / top_p, prompt i drawing from the stream (seed, i), and
    # verified by rejection (distributed as target-only sampling) or coupled (equal to it)
    temperature: float = 0.0
    verify: str = "greedy"  # greedy, rejection or coupled
    top_k: int = 0  # 0: off
    top_p: float = 1.0  # 1: off
    seed: int = 0

    @property
    def generated_tokens(self) -> int:
        return len(self.output_ids)

    def stats(self) -> SequenceStats | None:
        if self.iterations is None:
            return None
        its = [Iteration(**it) for it in self.iterations]
        return SequenceStats(prompt_tokens=self.prompt_tokens, ttft_s=self.ttft_s or 0.0, iterations=its)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), ensure_ascii=False)


def iteration_dicts(stats: SequenceStats | None) -> list[dict] | None:
    return None if stats is None else [dataclasses.asdict(it) for it in stats.iterations]


def first_mismatch(output: list[int], reference: list[int]) -> int | None:
    for i, (a, b) in enumerate(zip(output, reference, strict=False)):
        if a != b:
            return i
    return None if len(output) == len(reference) else min(len(output), len(reference))


def prepare_output_dir(path: Path) -> Path:
    """Refuse a file, or a folder that already holds a run; checked before any model loads.
    Missing parents are made when the sweep starts writing (logs/ on a fresh checkout)."""
    if path.exists() and not path.is_dir():
        raise UserError(f"--output_dir {str(path)!r} is a file; give a folder")
    if path.is_dir() and any(path.iterdir()):
        raise UserError(f"--output_dir {str(path)!r} is not empty; give a new folder")
    return path


class RunWriter:
    """Appends records as prompts finish, so an interrupted sweep still shows what it measured."""

    def __init__(self, folder: Path, meta: dict):
        folder.mkdir(parents=True, exist_ok=True)
        self.folder = folder
        write_json_atomic(folder / META, meta)
        self._runs = (folder / RUNS).open("a", encoding="utf-8")

    def append(self, records: list[RunRecord]) -> None:
        for record in records:
            self._runs.write(record.to_json() + "\n")
        self._runs.flush()

    def close(self) -> None:
        self._runs.close()


@dataclasses.dataclass
class RunLog:
    folder: Path
    meta: dict
    records: list[RunRecord]
    done: dict


def newest_finished_sweep(folder: Path) -> Path | None:
    """The most recently finished sweep directly under `folder` (e.g. logs/), if any."""
    finished = [d for d in folder.iterdir() if d.is_dir() and (d / DONE).is_file() and (d / RUNS).is_file()]
    return max(finished, key=lambda d: ((d / DONE).stat().st_mtime, d.name), default=None)


def read_run_log(folder: str | Path) -> RunLog:
    """A finished sweep's folder, or a parent such as logs/ (its newest finished sweep); anything
    else is refused in one line."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"{str(folder)!r} is not a folder written by scripts/benchmark.py")
    if not (folder / META).is_file():
        newest = newest_finished_sweep(folder)
        if newest is not None:
            folder = newest
    for name in (META, RUNS):
        if not (folder / name).is_file():
            raise UserError(f"{folder} has no {name}; give a folder written by scripts/benchmark.py")
    if not (folder / DONE).is_file():
        raise UserError(f"{folder} holds a sweep that did not finish (no {DONE}); run it again")
    try:
        meta = json.loads((folder / META).read_text(encoding="utf-8"))
        done = json.loads((folder / DONE).read_text(encoding="utf-8"))
        lines = (folder / RUNS).read_text(encoding="utf-8").splitlines()
        records = [RunRecord(**json.loads(line)) for line in lines if line.strip()]
    except (json.JSONDecodeError, TypeError) as exc:
        raise UserError(f"{folder}: malformed run log ({exc})") from None
    if not records:
        raise UserError(f"{folder}/{RUNS} holds no runs")
    return RunLog(folder, meta, records, done)
