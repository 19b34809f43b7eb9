"""The demo's gate: the CI rule as the demo applies it, and its files read before any model loads."""

import json
import warnings
from pathlib import Path

import pytest

from models.common.errors import UserError
from models.common.perf_targets import DEFAULTS, MATCH_KEYS, Band, PerfTarget, dump_targets
from models.demos.speculative_decoding.gate import Gate, SpeedReported

CONFIG = {**{k: DEFAULTS.get(k) for k in MATCH_KEYS}, "method": "suffix"}
KEY = {"device": "cpu", "mesh": "1x1", "dtype": "float32", "config": CONFIG}
# ci-suffix's noisy run: speedup 0.671 against 1.296 +-40% (band 0.778..1.81), every counter exact
TARGET = PerfTarget("ci-suffix", "cpu", CONFIG, {"speedup": Band(1.296, 0.4), "target_calls": Band(40, 3)})
NOISY = {"speedup": 0.671, "target_calls": 40}


class FakeRequest:
    """What Gate.from_request reads of pytest's request."""

    def __init__(self, options: dict):
        self.config = self
        self.pluginmanager = self
        self.node = self
        self.nodeid = "demo[ci-suffix]"
        self.options = options

    def getoption(self, name):
        return self.options.get(name)

    def getplugin(self, name):
        return None


@pytest.fixture
def files(tmp_path) -> dict:
    targets, goldens = tmp_path / "t.yaml", tmp_path / "g.json"
    targets.write_text(dump_targets([TARGET]))
    goldens.write_text('{"outputs": {}}')
    return {"--perf_targets": str(targets), "--golden_outputs": str(goldens), "--results_dir": ""}


def gate_for(files: dict, monkeypatch, *, ci: bool, name_targets: bool) -> Gate:
    monkeypatch.setenv("CI", "true") if ci else monkeypatch.delenv("CI", raising=False)
    gate = Gate.from_request(FakeRequest(files if name_targets else {**files, "--perf_targets": None}))
    gate.targets_path = Path(files["--perf_targets"])  # the default file, as if unnamed
    gate.load()
    return gate


def test_in_ci_a_noisy_cpu_speedup_is_reported_and_recorded_not_failed(files, monkeypatch, tmp_path):
    gate = gate_for(files, monkeypatch, ci=True, name_targets=False)
    gate.results_dir = tmp_path / "results"
    with pytest.warns(SpeedReported, match="perf target 'ci-suffix': speedup 0.671 is outside its band 0.778..1.81"):
        verdicts = gate.perf("ci-suffix", KEY, NOISY, allow_update=False)
    assert all(v.ok for v in verdicts)
    gate.record(KEY, NOISY, verdicts, timed_runs=3, correct=True, golden_ok=True)
    [line] = (tmp_path / "results" / "speculative_demo.jsonl").read_text().splitlines()
    record = json.loads(line)
    assert record["passed"] is True
    assert record["targets"]["speedup"]["status"] == "reported" and record["targets"]["speedup"]["floor"] == 0.648


def test_in_ci_a_gross_speed_regression_or_a_counter_still_fails(files, monkeypatch):
    gate = gate_for(files, monkeypatch, ci=True, name_targets=False)
    verdicts = {v.metric: v for v in gate.perf("ci-suffix", KEY, {"speedup": 0.6, "target_calls": 44},
                                               allow_update=False)}
    assert verdicts["speedup"].status == "low" and verdicts["target_calls"].status == "differs"


@pytest.mark.parametrize("ci, name_targets", [(False, False), (False, True), (True, True)])
def test_outside_ci_or_with_a_named_targets_file_the_full_band_fails(files, monkeypatch, ci, name_targets):
    gate = gate_for(files, monkeypatch, ci=ci, name_targets=name_targets)
    with warnings.catch_warnings():
        warnings.simplefilter("error", SpeedReported)
        [speedup, _] = gate.perf("ci-suffix", KEY, NOISY, allow_update=False)
    assert speedup.status == "low" and not speedup.ok


def test_missing_or_malformed_files_are_refused_when_loaded(files, tmp_path):
    gate = Gate.from_request(FakeRequest(files))
    gate.goldens_path = tmp_path / "none.json"
    with pytest.raises(UserError, match="--golden_outputs '.*none.json' is not a file"):
        gate.load()
    (tmp_path / "none.json").write_text('{"outputs": {"k": [[1, "a"]]}}')
    with pytest.raises(UserError, match="must be a list of token-id lists"):
        gate.load()
    gate.goldens_path, gate.targets_path = tmp_path / "new.json", tmp_path / "new.yaml"
    gate.update = True  # --update_perf_targets writes them
    gate.load()
    assert (gate.targets, gate.goldens) == ([], {})
