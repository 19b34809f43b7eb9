"""The demo's command-line overrides, its refusals, and device skips."""

import subprocess
import sys
from pathlib import Path

import torch

from models.common.device import open_device
from models.demos.speculative_decoding.speculative_demo import demo_config

REPO = Path(__file__).resolve().parents[4]
DEMO = "models/demos/speculative_decoding/speculative_demo.py"


class FakeRequest:
    def __init__(self, options):
        self.config = self
        self.options = options

    def getoption(self, name):
        return self.options.get(name)


PARAMS = dict(method="self_draft", n_draft_tokens=2, draft_layers=24, max_generated_tokens=48, target_layers=None,
              max_ngram_size=3, max_seq_len=1024, batch_size=1, instruct=1, input_prompts="p.json",
              tree_topk=1, tree_depth=None, tree_budget=None, proposers=None)


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


def run_demo(*args):
    return subprocess.run([sys.executable, "-m", "pytest", DEMO, "-q", "-p", "no:cacheprovider", *args],
                          cwd=REPO, capture_output=True, text=True, timeout=300)


def test_bad_option_fails_the_demo_with_one_line():
    proc = run_demo("-k", "draft-model", "--n_draft_tokens", "0")
    assert proc.returncode == 1
    assert "--n_draft_tokens must be >= 1, got 0" in proc.stdout
    assert "Traceback" not in proc.stdout


def test_missing_device_skips_with_the_reason():
    device = "n150" if torch.cuda.is_available() else "cuda"
    proc = run_demo("-k", "draft-model", "--device", device, "-rs")
    assert proc.returncode == 0, proc.stdout
    assert "1 skipped" in proc.stdout
    assert "not available here" in proc.stdout or "no CUDA GPU" in proc.stdout
