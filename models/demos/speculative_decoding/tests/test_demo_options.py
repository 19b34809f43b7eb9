"""The demo's command-line overrides, its refusals, and device skips."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from models.common.device import open_device
from models.demos.speculative_decoding.speculative_demo import demo_config, demo_params

REPO = Path(__file__).resolve().parents[4]
DEMO = "models/demos/speculative_decoding/speculative_demo.py"


class FakeRequest:
    def __init__(self, options):
        self.config = self
        self.options = options

    def getoption(self, name):
        return self.options.get(name)


PARAMS = demo_params("self_draft", 2, 24, 48, "p.json", tree=None, sampling=None)  # the other options: defaults


def test_command_line_overrides_parametrized_values_including_zero():
    request = FakeRequest({"--n_draft_tokens": 0, "--instruct": 0, "--max_generated_tokens": 7,
                           "--input_prompts": "other.json"})
    config, prompts = demo_config(request, open_device("cpu"), PARAMS)
    assert config.n_draft_tokens == 0 and config.instruct is False and config.max_generated_tokens == 7
    assert config.draft_layers == 24 and prompts == "other.json"


def test_no_options_keep_the_parametrized_values():
    config, prompts = demo_config(FakeRequest({}), open_device("cpu"), PARAMS)
    assert (config.method, config.n_draft_tokens, config.draft_layers) == ("self_draft", 2, 24)
    assert prompts == "p.json"


def run_demo(*args, ci: bool = False):
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    env["COLUMNS"] = "1000"  # pytest's summary line keeps the whole failure message
    if ci:
        env["CI"] = "true"
    return subprocess.run([sys.executable, "-m", "pytest", DEMO, "-q", "-p", "no:cacheprovider", *args],
                          cwd=REPO, capture_output=True, text=True, timeout=300, env=env)


def test_bad_option_fails_the_demo_with_one_line():
    proc = run_demo("-k", "draft-model and not ci", "--n_draft_tokens", "0")
    assert proc.returncode == 1
    assert "--n_draft_tokens must be >= 1, got 0" in proc.stdout
    assert "Traceback" not in proc.stdout


def test_missing_device_skips_with_the_reason():
    device = "n150" if torch.cuda.is_available() else "cuda"
    proc = run_demo("-k", "draft-model and not ci", "--device", device, "-rs")
    assert proc.returncode == 0, proc.stdout
    assert "1 skipped" in proc.stdout
    assert "not available here" in proc.stdout or "no CUDA GPU" in proc.stdout


def test_ci_true_runs_only_the_ci_ids():
    device = "n150"  # every id that runs at all skips on the missing device, so nothing loads a model
    proc = run_demo("-k", "draft-model", "--device", device, "-rs", ci=True)
    assert proc.returncode == 0, proc.stdout
    assert re.search(r"SKIPPED \[1\] .*CI=true runs only the demo's ci-\* ids", proc.stdout)
    # ci-draft-model and ci-sampling-coupled-draft-model did run (and skipped on the device)
    assert re.search(r"SKIPPED \[2\] .*not available here", proc.stdout)
    assert "3 skipped" in proc.stdout


TINY = ("-k", "ci-draft-model", "--target_model", "random:tiny-llama", "--instruct", "0",
        "--input_prompts", "sample_prompts/demo_prompts.json", "--max_generated_tokens", "12")


@pytest.fixture(scope="module")
def baselined(tmp_path_factory):
    """A targets file and goldens written by --update_perf_targets from a tiny-model run."""
    folder = tmp_path_factory.mktemp("gate")
    files = ("--perf_targets", str(folder / "t.yaml"), "--golden_outputs", str(folder / "g.json"),
             "--results_dir", str(folder / "results"))
    proc = run_demo(*TINY, *files, "--update_perf_targets", "-s")
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert "+++ b/t.yaml" in proc.stdout and "+++ b/g.json" in proc.stdout  # the diffs are printed
    (folder / "as_written.yaml").write_text((folder / "t.yaml").read_text())

    def widen(data):  # a tiny model's speed ratio, timed while other tests run, is mostly noise
        data["targets"][0]["metrics"]["speedup"]["tolerance"] = 0.95

    rewrite(folder / "t.yaml", widen)
    return folder, files


def rewrite(path: Path, edit) -> None:
    data = yaml.safe_load(path.read_text()) if path.suffix == ".yaml" else json.loads(path.read_text())
    edit(data)
    path.write_text(yaml.safe_dump(data) if path.suffix == ".yaml" else json.dumps(data))


def failure_lines(proc) -> list[str]:
    return [line for line in proc.stdout.splitlines() if line.startswith("FAILED ")]


def test_update_then_gate_passes_and_records_the_run(baselined):
    folder, files = baselined
    targets = yaml.safe_load((folder / "as_written.yaml").read_text())["targets"]
    assert [t["id"] for t in targets] == ["ci-draft-model"]
    assert targets[0]["metrics"]["acceptance_rate"]["value"] > 0.9  # the draft is the target
    assert targets[0]["metrics"]["speedup"]["tolerance"] == 0.4  # the cpu default for a new entry
    proc = run_demo(*TINY, *files)
    assert proc.returncode == 0, proc.stdout[-3000:]
    records = [json.loads(line) for line in (folder / "results" / "speculative_demo.jsonl").read_text().splitlines()]
    assert len(records) == 2 and records[-1]["passed"] is True
    assert records[-1]["targets"]["acceptance_rate"]["status"] == "pass" and records[-1]["device"] == "cpu"
    assert {"commit", "mesh", "config", "metrics", "timed_runs"} <= records[-1].keys()


@pytest.mark.parametrize("factor, message", [
    (1000.0, "speedup .* is below its target"),
    (0.001, "speedup .* beats its target .* by more than 40%: update the target"),
])
def test_a_perturbed_speed_target_fails_with_one_line(baselined, tmp_path, factor, message):
    folder, files = baselined
    perturbed = tmp_path / "t.yaml"
    perturbed.write_text((folder / "as_written.yaml").read_text())

    def scale(data):
        data["targets"][0]["metrics"]["speedup"]["value"] *= factor

    rewrite(perturbed, scale)
    proc = run_demo(*TINY, *files, "--perf_targets", str(perturbed))
    assert proc.returncode == 1
    [line] = failure_lines(proc)
    assert re.search("perf target missed: " + message, line), line


def test_a_perturbed_golden_token_fails_with_one_line(baselined, tmp_path):
    folder, files = baselined
    perturbed = tmp_path / "g.json"
    perturbed.write_text((folder / "g.json").read_text())

    def flip(data):
        [outputs] = data["outputs"].values()
        outputs[1][3] = outputs[1][3] + 1

    rewrite(perturbed, flip)
    proc = run_demo(*TINY, *files, "--golden_outputs", str(perturbed))
    assert proc.returncode == 1
    [line] = failure_lines(proc)
    assert "target-only output differs from its golden" in line and "prompt 1: target-only token 3 is" in line


def test_a_malformed_targets_file_is_one_line(tmp_path):
    bad = tmp_path / "t.yaml"
    bad.write_text("targets:\n- {id: a, device: cpu, config: {}, metrics: {tau: {value: 1, tolerance: 0}}}\n")
    proc = run_demo(*TINY, "--perf_targets", str(bad))
    assert proc.returncode == 1
    assert "unknown metric 'tau'" in proc.stdout and "Traceback" not in proc.stdout


def test_sampling_flags_are_checked_before_any_model_loads():
    proc = run_demo("-k", "draft-model and not ci", "--verify", "coupled")
    assert proc.returncode == 1
    assert "--verify coupled is for sampling (--temperature > 0)" in proc.stdout and "Traceback" not in proc.stdout
    proc = run_demo("-k", "draft-model and not ci", "--temperature", "0.7", "--top_p", "1.5")
    assert proc.returncode == 1 and "--top_p must be in (0, 1]" in proc.stdout


@pytest.mark.parametrize("content, message", [
    (None, "--golden_outputs '{path}' is not a file"),
    ('{"outputs": {"k": [[1, 2]],\n', "{path}: not valid JSON at line 2"),
    ('{"_comment": "no outputs"}', "{path}: not a golden outputs file"),
])
def test_a_missing_or_malformed_golden_outputs_file_fails_in_one_line_before_any_model_loads(
    tmp_path, content, message,
):
    path = tmp_path / "g.json"
    if content is not None:
        path.write_text(content)
    # a model that is not there: loading it would fail with another line
    proc = run_demo("-k", "ci-draft-model", "--golden_outputs", str(path), "--target_model", str(tmp_path / "none"))
    assert proc.returncode == 1
    [line] = failure_lines(proc)
    assert message.format(path=path) in line, line
    assert "not found" not in proc.stdout and "Traceback" not in proc.stdout


def test_a_configuration_error_prints_once():
    proc = run_demo("-k", "ci-suffix", "--method", "nonsense", ci=True)
    assert proc.returncode == 1
    message = "unknown method 'nonsense'"
    assert [line for line in proc.stdout.splitlines() if line.startswith(message)] == [
        message + "; choose from target, draft_model, self_draft, eagle, multi, multi_projection, prompt_lookup, suffix"
    ]
    assert "another exception occurred" not in proc.stdout
