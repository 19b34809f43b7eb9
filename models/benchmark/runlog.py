"""The run log: the folder a sweep writes and the report reads.

    meta.json     the sweep's options, device, versions and configurations (written first)
    runs.jsonl    one line per (configuration, prompt), appended prompt by prompt
    summary.csv   per configuration x category and overall (written at the end, atomically)
    summary.md    the Spec-Bench style table and the full summary
    done.json     written last: a folder without it is a sweep that did not finish

A sweep that did not finish resumes: the same command with the same --output_dir keeps every
unit (a prompt, or a batch size) recorded for all its configurations and runs the rest. A unit
is the interleaved turn in which target-only and the methods ran back to back, so a speedup is
never paired across processes. A line cut short by a kill, and a unit recorded only in part,
are dropped (logged) and the log rewritten whole; a folder holding another configuration's
sweep is refused, naming the first difference.

Each line keeps what the report needs and nothing it would have to recompute from a model:
output ids and their strings, the draft shape (tree_topk, tree_depth, tree_budget; a chain of k
is 1, k, k), and the per-iteration counts that tell drafts from target tokens (tree nodes,
depth and, for multi-draft, the proposer whose branch was accepted). Logs written before token
trees (no shape, no depth/source per iteration) still load: their drafts are chains. Each line
also says how it decoded (temperature, verify, top_k, top_p, seed); logs from before sampling
load as greedy. Each line names the backend its target ran on; logs from before a sweep could hold
several backends take their sweep's one backend (meta.json's options), and their ids the suffix
today's ids of that backend carry, so old and new logs pair. Each line names its weight format too
(fp32 or gguf, as the backend resolved it); logs from before --weights take their backend's own.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path

from loguru import logger

from models.backends.registry import DEFAULT_BACKEND
from models.benchmark.configurations import Variant
from models.common.cli import check_output_folder, write_atomic, write_json_atomic
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
    # the target it ran on (configurations.MODEL_AXES); a log from before sweeps of several backends
    # has none: read_run_log fills in its sweep's one backend
    backend: str = DEFAULT_BACKEND
    weights: str | None = None  # fp32 or gguf; None (a log from before --weights): read_run_log gives the backend's own

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


# options that may differ when a sweep resumes: where it writes, and the paths of files whose
# prompts are compared themselves (meta.json's prompts)
RESUME_IGNORED = ("output_dir", "config", "input_prompts", "bench_file")
DIFF_TEXT = 60  # characters of a differing value shown in the refusal


def check_output_dir(path: Path) -> dict | None:
    """Checked before any model loads: --output_dir must be a writable folder (or one that can be
    made there; missing parents are made when the sweep starts writing), and hold nothing, or a
    sweep that did not finish. Returns that sweep's meta.json (to resume it), else None."""
    check_output_folder(path, "--output_dir")
    if not path.is_dir() or not [p for p in path.iterdir() if not _is_leftover(p)]:
        return None
    if (path / DONE).exists():
        raise UserError(f"--output_dir {str(path)!r} holds a finished sweep ({DONE}); give a new folder")
    if not (path / META).is_file():
        raise UserError(f"--output_dir {str(path)!r} is not empty and holds no sweep ({META}); give a new folder")
    try:
        meta = json.loads((path / META).read_text(encoding="utf-8"))
    except (ValueError, OSError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise UserError(f"{path / META} is unreadable ({exc}); give a new --output_dir") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("options"), dict):
        raise UserError(f"{path / META} holds no sweep's options; give a new --output_dir")
    return meta


def _is_leftover(path: Path) -> bool:
    """A temporary file of write_atomic's for one of the sweep's files (.NAME.XXXX.tmp) that a
    kill left behind."""
    ours = (META, RUNS, SUMMARY_CSV, SUMMARY_MD, DONE, "batch_")  # batch_sweep's files start batch_
    return path.name.endswith(".tmp") and path.name.startswith(tuple("." + n for n in ours)) and path.is_file()


def write_meta(folder: Path, meta: dict) -> None:
    """Start (or resume) writing in `folder`: made if missing, a killed run's half-written files
    removed, meta.json written."""
    folder.mkdir(parents=True, exist_ok=True)
    for path in folder.iterdir():
        if _is_leftover(path):
            logger.info(f"removing {path.name}, a half-written file a killed sweep left in {folder}")
            path.unlink()
    write_json_atomic(folder / META, meta)


def check_resumable(folder: Path, meta: dict, now: dict) -> None:
    """The sweep in `folder` (its meta.json) resumes only as the same sweep: each key of `now`
    (options, versions, configurations, prompts...) must equal meta's, else one line names the
    first difference and how to start afresh."""
    for key, value in now.items():
        then = meta.get(key)
        if key == "options":
            then, value = resume_options(then if isinstance(then, dict) else {}), resume_options(value)
        difference = first_difference(then, value, key)
        if difference:
            raise UserError(f"--output_dir {str(folder)!r} holds an unfinished sweep of another configuration "
                            f"({difference}); rerun its own command ({META}) to resume it, or give a new folder")


def resume_options(options: dict) -> dict:
    """The options that must match to resume (JSON's view of them, as meta.json keeps them)."""
    return {k: v for k, v in json.loads(json.dumps(options)).items() if k not in RESUME_IGNORED}


def first_difference(then: object, now: object, where: str) -> str | None:
    """'options.n_draft_tokens: '2' there, '4' now' for the first place two JSON values differ."""
    if isinstance(then, dict) and isinstance(now, dict):
        for key in dict.fromkeys([*then, *now]):
            found = first_difference(then.get(key), now.get(key), f"{where}.{key}")
            if found:
                return found
        return None
    if isinstance(then, list) and isinstance(now, list):
        for i, (a, b) in enumerate(zip(then, now)):
            found = first_difference(a, b, f"{where}[{i}]")
            if found:
                return found
        return None if len(then) == len(now) else f"{where}: {len(then)} there, {len(now)} now"
    if then == now:
        return None
    return f"{where}: {_short(then)} there, {_short(now)} now"


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= DIFF_TEXT else text[: DIFF_TEXT - 3] + "..."


def resume_lines(path: Path, parse: Callable[[dict], object], unit: Callable[[object], object],
                 config_id: Callable[[object], str], config_ids: list[str], unit_name: str) -> list:
    """The records of `path` (a JSON line each) in units recorded for every configuration: a last
    line cut short by a kill and a unit recorded only in part are dropped, each in one log line,
    and the file is rewritten without them (atomically), so appending goes on from whole lines."""
    if not path.is_file():
        return []
    lines = path.read_bytes().split(b"\n")
    cut = lines.pop()  # b"" when the file ends with a whole line
    if cut:
        logger.warning(f"{path}: dropping its last line, cut short ({len(cut)} bytes) when the sweep was killed")
    parsed = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            parsed.append((line, parse(json.loads(line))))
        except (ValueError, TypeError) as exc:
            raise UserError(f"{path} line {number} is malformed ({exc}); give a new --output_dir") from None
    seen: dict[object, list[str]] = {}
    for _, record in parsed:
        seen.setdefault(unit(record), []).append(config_id(record))
    whole = {u for u, ids in seen.items() if sorted(ids) == sorted(config_ids)}
    partial = sorted(set(seen) - whole, key=str)
    if partial:
        logger.warning(f"{path}: {unit_name} {', '.join(map(str, partial))} recorded for only some configurations; "
                       "its records are dropped and it runs again")
    kept = [(line, record) for line, record in parsed if unit(record) in whole]
    if cut or len(kept) < len(parsed):
        write_atomic(path, b"".join(line + b"\n" for line, _ in kept))
    return [record for _, record in kept]


def resume_records(folder: Path, config_ids: list[str]) -> list[RunRecord]:
    """runs.jsonl's records of the prompts every configuration ran (see resume_lines)."""
    return resume_lines(folder / RUNS, lambda data: RunRecord(**data), lambda r: r.prompt_index,
                        lambda r: r.config_id, config_ids, "prompt")


class RunWriter:
    """Appends records as prompts finish, so an interrupted sweep still shows what it measured and
    resumes from it; a prompt's records go out in one write."""

    def __init__(self, folder: Path, meta: dict):
        write_meta(folder, meta)
        self.folder = folder
        self._runs = (folder / RUNS).open("a", encoding="utf-8")

    def append(self, records: list[RunRecord]) -> None:
        self._runs.write("".join(record.to_json() + "\n" for record in records))
        self._runs.flush()

    def close(self) -> None:
        self._runs.close()


@dataclasses.dataclass
class RunLog:
    folder: Path
    meta: dict
    records: list[RunRecord]
    done: dict


def backends_of(meta: dict) -> list[str]:
    """The backends a sweep's targets ran on, in its order (--backend torch,transformers); sweeps from
    before --backend: torch."""
    options = meta.get("options") if isinstance(meta.get("options"), dict) else {}
    return [n.strip() for n in str(options.get("backend") or "").split(",") if n.strip()] or [DEFAULT_BACKEND]


def backend_of(meta: dict) -> str:
    """The sweep's first backend: the one its transformers and llama.cpp peers are timed against."""
    return backends_of(meta)[0]


def _name_old_backend(meta: dict, records: list[RunRecord], lines: list[dict]) -> None:
    """Records from before sweeps of several backends ran on the sweep's one backend: they get it,
    and (where it is not the default) the id suffix a record of it has today, in meta.json too."""
    old = [r for r, line in zip(records, lines, strict=True) if "backend" not in line]
    if not old:
        return
    variant = Variant(backend_of(meta))
    for record in old:
        record.backend = variant.backend
        record.config_id += variant.suffix
    for c in meta.get("configurations", []) if variant.suffix else []:
        if isinstance(c, dict) and isinstance(c.get("id"), str):
            c["id"] += variant.suffix


def _name_old_weights(records: list[RunRecord]) -> None:
    """Records from before --weights read their backend's own format (their ids already say nothing of it)."""
    for record in records:
        if record.weights is None:
            record.weights = Variant(record.backend).weights


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
        lines = (folder / RUNS).read_text(encoding="utf-8").split("\n")  # not splitlines: U+2028 may sit in a token
        data = [json.loads(line) for line in lines if line.strip()]
        records = [RunRecord(**d) for d in data]
        _name_old_backend(meta, records, data)
        _name_old_weights(records)
    except (json.JSONDecodeError, TypeError) as exc:
        raise UserError(f"{folder}: malformed run log ({exc})") from None
    if not records:
        raise UserError(f"{folder}/{RUNS} holds no runs")
    return RunLog(folder, meta, records, done)
