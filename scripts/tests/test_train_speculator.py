"""scripts/train_speculator.py end to end on a tiny model: data through the engine, weights out,
and a second run that reuses the saved answers instead of decoding them again."""

import json

import pytest

TINY = "random:tiny-llama:41"


def train(run_script, tmp_path, kind, *extra):
    argv = ["--kind", kind, "--model", TINY, "--n_prompts", "6", "--n_self_written", "2", "--max_new_tokens", "8",
            "--epochs", "0.5", "--batch_size", "4", "--gen_batch_size", "3", "--max_seq_len", "256",
            "--draft_vocab_size", "64", "--output", str(tmp_path / kind), "--work_dir", str(tmp_path / "work"),
            *extra]
    return run_script("train_speculator", argv)


def test_trains_both_kinds_from_one_set_of_saved_answers(run_script, tmp_path):
    code, err = train(run_script, tmp_path, "multi_projection")
    assert code == 0, err
    work = tmp_path / "work"
    chunks = sorted(p.name for p in work.glob("answers-*.json.gz"))
    assert chunks == ["answers-000.json.gz"]
    stamp = (work / chunks[0]).stat().st_mtime_ns
    config = json.loads((tmp_path / "multi_projection" / "speculator_config.json").read_text())
    assert config["training"]["examples"] == 8 and 0 < config["training"]["answer_tokens"] <= 64

    code, err = train(run_script, tmp_path, "eagle", "--gen_method", "prompt_lookup")
    assert code == 0, err
    assert (work / chunks[0]).stat().st_mtime_ns == stamp  # the answers were reused, not decoded again
    assert "answers " not in err
    assert (tmp_path / "eagle" / "speculator_config.json").exists()


def test_a_work_folder_with_other_data_settings_is_refused(run_script, tmp_path):
    assert train(run_script, tmp_path, "multi_projection")[0] == 0
    code, err = train(run_script, tmp_path, "eagle", "--seed", "5")
    assert code != 0 and "seed 0 -> 5" in err and err.strip().count("\n") == 0
    assert not (tmp_path / "eagle").exists()


@pytest.mark.parametrize("flag, value", [("--gen_batch_size", "0"), ("--n_prompts", "0"), ("--gen_method", "nope")])
def test_bad_input_is_one_line(run_script, tmp_path, flag, value):
    code, err = train(run_script, tmp_path, "eagle", flag, value)
    assert code != 0 and err.strip().count("\n") == 0 and value in err
    assert not (tmp_path / "eagle").exists()
