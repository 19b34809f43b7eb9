"""Every script that writes files checks where before any work: an output it cannot write ends
in one line (exit 2) before a model loads or a file is read, never after a long run. The model
named does not exist, so a check that came after the load would report the model instead."""

import json
from pathlib import Path

import pytest

BAD_MODEL = "no/such/model"


def _argv(script: str, out: str, tmp_path: Path) -> list[str]:
    prompts = tmp_path / "prompts.json"
    prompts.write_text(json.dumps([{"prompt": "hello"}]))
    return {
        "speculator_accuracy": ["--kind", "eagle", "--model", BAD_MODEL, "--input_prompts", str(prompts),
                                "--output", out],
        "train_speculator": ["--kind", "eagle", "--model", BAD_MODEL, "--work_dir", str(tmp_path / "work"),
                             "--data_dir", str(tmp_path / "data"), "--output", out],
        "unseen_prompts": ["--model", BAD_MODEL, "--wheels_dir", str(tmp_path / "wheels"), "--output_dir", out],
        "learning_curve": ["--model", BAD_MODEL, "--input_prompts", str(prompts), "--output_dir", out],
        "decode_step_bench": ["--shape", "llama-9000", "--output", out],
    }[script]


FLAGS = {"speculator_accuracy": "--output", "train_speculator": "--output", "unseen_prompts": "--output_dir",
         "learning_curve": "--output_dir", "decode_step_bench": "--output"}


@pytest.mark.parametrize("where", ["file as folder", "unwritable folder"])
@pytest.mark.parametrize("script", list(FLAGS))
def test_an_unwritable_output_is_refused_before_any_work(run_script, tmp_path, script, where):
    if where == "unwritable folder":
        if not Path("/sys/kernel").is_dir():
            pytest.skip("no /sys here")
        out, message = "/sys/kernel/out", "folder '/sys/kernel' is not writable ("  # sysfs: root too
    else:
        (tmp_path / "file").write_text("x")
        out, message = str(tmp_path / "file" / "out"), f"folder {str(tmp_path / 'file')!r} is not a folder"
    code, err = run_script(script, _argv(script, out, tmp_path))
    assert code == 2 and err.startswith(f"error: {FLAGS[script]} {message}"), err
    assert len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "work").exists() and not (tmp_path / "data").exists()  # nothing made before the check
