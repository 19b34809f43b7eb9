"""What a demo run is gated on besides equality, and what it leaves behind for dashboards.

- perf targets (`--perf_targets FILE`, default perf_targets.yaml beside the demo): golden
  acceptance and two-sided speed bands per device (models/common/perf_targets.py); with CI=true
  a CPU speed ratio outside its band fails only below its gross-regression floor and is otherwise
  reported (a SpeedReported warning, status "reported"), unless the run named its targets file;
- golden token outputs (`--golden_outputs FILE`, default golden_outputs.json beside the demo): the
  target's own greedy output, so that a change to the target fails even when speculation still
  agrees with it;
- both files are read before any model loads: a missing or malformed one is a one-line failure
  (with `--update_perf_targets` either may be absent: the run writes it);
- `--update_perf_targets`: rewrite both from this run (when its outputs are correct) and print
  the diff, instead of gating;
- one JSON line per run in `--results_dir` (default generated/benchmark_data): device, mesh,
  git commit, configuration, every metric and the verdict per target.
"""

from __future__ import annotations

import dataclasses
import datetime
import difflib
import json
import subprocess
import warnings
from collections.abc import Callable
from pathlib import Path

from loguru import logger

from models.common.cli import write_atomic
from models.common.golden_outputs import check_goldens, golden_key, load_goldens, merged, write_goldens
from models.common.perf_targets import (
    PerfTarget, Verdict, check, ci_mode, dump_targets, find_target, load_targets, updated_targets,
)

DEMO_DIR = Path(__file__).resolve().parent
REPO_ROOT = DEMO_DIR.parents[2]
DEFAULT_TARGETS = DEMO_DIR / "perf_targets.yaml"
GOLDENS = DEMO_DIR / "golden_outputs.json"
DEFAULT_RESULTS_DIR = "generated/benchmark_data"
RESULTS_FILE = "speculative_demo.jsonl"


def git_commit() -> dict:
    """The commit a result was measured on, and whether the working tree had local changes."""
    def git(*args: str) -> str | None:
        try:
            out = subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return out.stdout.strip() if out.returncode == 0 else None

    status = git("status", "--porcelain", "--untracked-files=no")
    return {"commit": git("rev-parse", "HEAD"), "dirty": None if status is None else bool(status)}


class SpeedReported(UserWarning):
    """A CPU speed ratio outside its band in CI, above its gross-regression floor: reported in the
    warnings summary, not failed (models/common/perf_targets.py, the CI rule)."""


@dataclasses.dataclass
class Gate:
    targets_path: Path
    goldens_path: Path
    update: bool
    results_dir: Path | None
    test_id: str
    echo: Callable[[str], None]  # to the terminal, past pytest's capture
    ci: bool = False  # CI=true: CPU speed ratios are judged by the CI rule ...
    targets_named: bool = False  # ... unless --perf_targets named the file (the full band)
    targets: list[PerfTarget] | None = None  # both read by load(), before any model loads
    goldens: dict[str, list[list[int]]] | None = None

    @classmethod
    def from_request(cls, request) -> Gate:
        opt = request.config.getoption
        capture = request.config.pluginmanager.getplugin("capturemanager")

        def echo(text: str) -> None:
            if capture is None:
                print(text)
                return
            with capture.global_and_fixture_disabled():
                print(text, flush=True)

        results = opt("--results_dir")
        return cls(
            targets_path=Path(opt("--perf_targets") or DEFAULT_TARGETS),
            goldens_path=Path(opt("--golden_outputs") or GOLDENS),
            update=bool(opt("--update_perf_targets")),
            results_dir=None if results == "" else REPO_ROOT / (results or DEFAULT_RESULTS_DIR),
            test_id=request.node.nodeid,
            echo=echo,
            ci=ci_mode(),
            targets_named=opt("--perf_targets") is not None,
        )

    def load(self) -> None:
        """Read the perf targets and the goldens now, so that a missing or malformed file is a
        one-line UserError before any model loads; --update_perf_targets may start either file."""
        self.targets = [] if self.update and not self.targets_path.exists() else load_targets(self.targets_path)
        self.goldens = {} if self.update and not self.goldens_path.exists() else load_goldens(self.goldens_path)

    def _show_diff(self, path: Path, old: str, new: str) -> None:
        diff = "".join(difflib.unified_diff(
            old.splitlines(keepends=True), new.splitlines(keepends=True), f"a/{path.name}", f"b/{path.name}"
        ))
        self.echo(diff if diff else f"{path}: unchanged")

    def golden_outputs(
        self, key: dict, outputs: list[list[int]], *, exact: bool, allow_update: bool,
        margin_at: Callable[[int, list[int]], float], describe_token: Callable[[int], str],
    ) -> list[str]:
        """Failures of the target-only outputs against their goldens (none when updating)."""
        config = key["config"]
        model = config["model"] + (f":{config['target_layers']}layers" if config.get("target_layers") else "")
        gkey = golden_key(key["device"], key["dtype"], model, config["input_prompts"], config["instruct"])
        if config.get("temperature"):  # target-only sampling is deterministic at a seed too
            gkey += (f"/t{config['temperature']}-k{config['top_k']}-p{config['top_p']}-seed{config['seed']}-"
                     f"{config['verify'] or 'rejection'}")
        goldens = self.goldens
        assert goldens is not None, "Gate.load() reads the goldens first"
        if self.update:
            if not allow_update:
                logger.warning("outputs are wrong: golden outputs not updated")
                return []
            new = {**goldens, gkey: merged(goldens.get(gkey), outputs)}
            if new != goldens:
                old_text = self.goldens_path.read_text() if self.goldens_path.exists() else ""
                write_goldens(self.goldens_path, new)
                self._show_diff(self.goldens_path, old_text, self.goldens_path.read_text())
            else:
                self.echo(f"{self.goldens_path.name}: {gkey} unchanged")
            return []
        if gkey not in goldens:
            logger.warning(f"no golden outputs for {gkey}: the target's own output is not pinned")
            return []
        failures = check_goldens(goldens[gkey], outputs, exact=exact, margin_at=margin_at, describe_token=describe_token)
        if not failures:
            logger.info(f"target-only outputs match their goldens ({gkey})")
        return failures

    def perf(self, case_id: str, key: dict, measured: dict[str, float], *, allow_update: bool) -> list[Verdict] | None:
        """Verdicts against the matching target; None when no entry matches."""
        targets = self.targets
        assert targets is not None, "Gate.load() reads the targets first"
        where = (key["device"], key["mesh"], key["dtype"], key["config"])
        if self.update and allow_update:
            new = updated_targets(targets, case_id, *where, measured)
            old_text = self.targets_path.read_text() if self.targets_path.exists() else ""
            new_text = dump_targets(new)
            if new_text != old_text:
                write_atomic(self.targets_path, new_text)
            self._show_diff(self.targets_path, old_text, new_text)
            targets = new
        target = find_target(targets, *where)
        if target is None:
            logger.warning(
                f"no perf target for this configuration on {key['device']} {key['dtype']}: correctness checked, "
                "metrics not gated (add one with --update_perf_targets)"
            )
            return None
        verdicts = check(target, measured, ci=self.ci, targets_named=self.targets_named)
        if all(v.status == "pass" for v in verdicts):
            logger.info(f"perf target {target.id!r} met: " + ", ".join(
                f"{v.metric} {v.measured:.3g} (target {v.band.value:.3g})" for v in verdicts))
        for v in verdicts:
            if v.status == "reported":
                logger.warning(f"perf target {target.id!r}: {v.describe()}")
                warnings.warn(SpeedReported(f"perf target {target.id!r}: {v.describe()}"), stacklevel=2)
        return verdicts

    def record(
        self, key: dict, measured: dict[str, float], verdicts: list[Verdict] | None, *, timed_runs: int,
        correct: bool, golden_ok: bool,
    ) -> None:
        """Append this run's line to the results file (one write of one whole line)."""
        if self.results_dir is None:
            return
        line = {
            "time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "test": self.test_id, **git_commit(), **key, "metrics": measured, "timed_runs": timed_runs,
            "targets": None if verdicts is None else {v.metric: v.to_json() for v in verdicts},
            "correct": correct, "golden_outputs_ok": golden_ok,
            "passed": correct and golden_ok and all(v.ok for v in verdicts or []),
        }
        self.results_dir.mkdir(parents=True, exist_ok=True)
        with open(self.results_dir / RESULTS_FILE, "a", encoding="utf-8") as f:
            f.write(json.dumps(line) + "\n")
