"""scripts/train_speculator.py end to end on a tiny model: the data through the engine, kept in
its folder, weights out, a second kind trained from the same saved answers, and bad input."""

import gzip
import json

import pytest
import torch

from models.training.contamination import Contamination, evaluation_texts

TINY = "random:tiny-llama:41"


def run(run_script, tmp_path, *extra):
    argv = ["--model", TINY, "--n_prompts", "24", "--chunk_size", "8", "--max_new_tokens", "8", "--epochs", "0.5",
            "--batch_size", "4", "--gen_batch_size", "3", "--max_seq_len", "1024", "--draft_vocab_size", "64",
            "--data_dir", str(tmp_path / "data"), "--work_dir", str(tmp_path / "work"), *extra]
    return run_script("train_speculator", argv)


def test_data_then_both_kinds_from_the_same_saved_answers(run_script, tmp_path):
    code, err = run(run_script, tmp_path)  # the data only
    assert code == 0, err
    data = tmp_path / "data"
    names = sorted(p.name for p in data.iterdir())
    assert names == ["answers-000.json.gz", "answers-001.json.gz", "answers-002.json.gz", "followups-000.json.gz",
                     "followups-001.json.gz", "followups-002.json.gz", "prompts.json.gz", "requests.json.gz",
                     "settings.json", "timing.json", "written-000.json.gz"]
    followups = [len(json.load(gzip.open(data / f"followups-00{n}.json.gz", "rt"))["answers"]) for n in range(3)]
    assert all(0 < f <= 2 for f in followups)  # a quarter of each chunk of 8, less what does not fit
    with gzip.open(data / "prompts.json.gz", "rt") as f:
        saved = json.load(f)
    assert len(saved["prompts"]) == len(saved["sources"]) > 16  # some passages are too long for the byte tokenizer
    assert {"authored", "passage", "word_problem", "translation"} <= set(saved["sources"])
    assert not Contamination(evaluation_texts()[0]).clean(saved["prompts"])[1]  # nothing shares an 8-gram
    stamps = {p.name: p.stat().st_mtime_ns for p in data.iterdir()}

    out = tmp_path / "mp"
    code, err = run(run_script, tmp_path, "--kind", "multi_projection", "--output", str(out))
    assert code == 0, err
    config = json.loads((out / "speculator_config.json").read_text())
    with gzip.open(data / "written-000.json.gz", "rt") as f:
        written = len(json.load(f)["answers"])  # the target's answers to the writing requests are data too
    # chunk 0 and its follow-ups are held out; the target's written texts join when their prompt was kept
    trained = len(saved["prompts"]) - 8 + sum(followups[1:])
    assert trained < config["training"]["examples"] <= trained + written
    code, err = run(run_script, tmp_path, "--kind", "eagle", "--gen_method", "prompt_lookup", "--unroll_steps", "3",
                    "--output", str(tmp_path / "eagle"), "--answer_tokens", "10")
    assert code == 0, err
    # the first training chunk already holds 10 answer tokens; a budget counts chunks (with their follow-ups) only
    assert json.loads((tmp_path / "eagle" / "speculator_config.json").read_text())["training"]["examples"] == 8 + followups[1]
    assert {p.name: p.stat().st_mtime_ns for p in data.iterdir() if p.name != "timing.json"} == {
        k: v for k, v in stamps.items() if k != "timing.json"}  # nothing decoded again
    assert "answers, chunk" not in err

    scores = tmp_path / "acc.json"
    for split in ("held_out", "train"):
        code, err = run_script("speculator_accuracy", [
            "--model", TINY, "--speculator", str(out), "--data_dir", str(data), "--work_dir", str(tmp_path / "work"),
            "--split", split, "--steps", "3", "--output", str(scores)])
        assert code == 0, err
        figures = json.loads(scores.read_text())
        assert figures["split"] == split and len(figures["top1"]) == 3 and all(n > 0 for n in figures["positions"])
        assert figures["examples"] == (8 if split == "held_out" else len(saved["prompts"]) - 8)


def test_accuracy_on_evaluation_prompts_scores_each_category(run_script, tmp_path):
    assert run(run_script, tmp_path, "--n_prompts", "8", "--kind", "eagle", "--output", str(tmp_path / "eagle"))[0] == 0
    files = []
    for name, texts in (("copying", ["abc abc abc abc", "one two one two"]), ("chat", ["Say hello."])):
        files.append(tmp_path / f"{name}.json")
        files[-1].write_text(json.dumps([{"prompt": t} for t in texts]))
    scores = tmp_path / "acc.json"
    code, err = run_script("speculator_accuracy", ["--model", TINY, "--speculator", str(tmp_path / "eagle"),
                                                   "--input_prompts", *map(str, files), "--max_new_tokens", "8",
                                                   "--steps", "2", "--output", str(scores)])
    assert code == 0, err
    figures = json.loads(scores.read_text())
    assert figures["split"] == "bench" and figures["examples"] == 3
    assert set(figures["by_category"]) == {"copying", "chat"}
    # every answer position is scored once overall and once in its category
    assert figures["positions"] == [sum(c["positions"][s] for c in figures["by_category"].values()) for s in range(2)]
    assert all(n > 0 for n in figures["positions"])
    # step 1 split by the target's certainty: each bin counts its positions once, overall and per category
    for figs in (figures, *figures["by_category"].values()):
        assert sum(b["positions"] for b in figs["step1_by_certainty"]) == figs["positions"][0]
    # against a reference: its accuracy per certainty bin at these positions' mix; against itself, its own top-1
    again = tmp_path / "again.json"
    code, err = run_script("speculator_accuracy", ["--model", TINY, "--speculator", str(tmp_path / "eagle"),
                                                   "--input_prompts", *map(str, files), "--max_new_tokens", "8",
                                                   "--steps", "2", "--certainty_reference", str(scores),
                                                   "--output", str(again)])
    assert code == 0, err
    redone = json.loads(again.read_text())
    assert redone["step1_at_reference_certainty"] == pytest.approx(figures["top1"][0])
    chat = redone["by_category"]["chat"]
    reference = {b["certainty"]: b["top1"] for b in figures["step1_by_certainty"]}
    assert chat["step1_at_reference_certainty"] == pytest.approx(
        sum(b["positions"] * reference[b["certainty"]] for b in chat["step1_by_certainty"]) / chat["positions"][0])
    code, err = run_script("speculator_accuracy", ["--model", TINY, "--speculator", str(tmp_path / "eagle"),
                                                   "--input_prompts", *map(str, files), "--certainty_reference",
                                                   str(files[0])])
    assert code != 0 and "has no step-1 figures per certainty bin" in err and err.strip().count("\n") == 0


def test_accuracy_needs_one_speculator_and_existing_data(run_script, tmp_path):
    code, err = run_script("speculator_accuracy", ["--model", TINY, "--data_dir", str(tmp_path)])
    assert code != 0 and "--kind" in err and err.strip().count("\n") == 0
    code, err = run_script("speculator_accuracy", ["--model", TINY, "--kind", "eagle", "--data_dir", str(tmp_path / "none")])
    assert code != 0 and "no speculator data" in err and not (tmp_path / "none").exists()


def test_hidden_states_are_rebuilt_when_only_the_answers_survive(run_script, tmp_path):
    assert run(run_script, tmp_path, "--n_prompts", "8")[0] == 0
    for cached in (tmp_path / "work").glob("features-*.pt"):
        cached.unlink()
    code, err = run(run_script, tmp_path, "--n_prompts", "8")  # the data alone: nothing to rebuild or decode
    assert code == 0 and "hidden states" not in err and "answers, chunk" not in err, err
    assert not list((tmp_path / "work").glob("features-*.pt"))
    code, err = run(run_script, tmp_path, "--n_prompts", "8", "--kind", "multi_projection",
                    "--output", str(tmp_path / "mp"))
    assert code == 0, err
    assert "hidden states answers-000" in err and "answers, chunk" not in err


def test_a_data_budget_holds_when_the_hidden_states_are_gone(run_script, tmp_path):
    assert run(run_script, tmp_path, "--answer_tokens", "10")[0] == 0  # held-out chunk 0, then chunk 1 holds 10
    for cached in (tmp_path / "work").glob("features-*.pt"):
        cached.unlink()
    code, err = run(run_script, tmp_path, "--answer_tokens", "10")
    assert code == 0 and "answers, chunk" not in err, err
    assert sorted(p.name for p in (tmp_path / "data").glob("answers-*")) == ["answers-000.json.gz", "answers-001.json.gz"]


def test_a_budget_rebuilds_no_hidden_states_of_the_written_texts(run_script, tmp_path):
    assert run(run_script, tmp_path, "--answer_tokens", "10")[0] == 0
    for cached in (tmp_path / "work").glob("features-*.pt"):
        cached.unlink()
    code, err = run(run_script, tmp_path, "--answer_tokens", "10", "--kind", "multi_projection",
                    "--output", str(tmp_path / "mp"))
    assert code == 0, err
    # a budget trains on chunks of answers only, so the written texts' hidden states are never needed
    assert "hidden states answers-001" in err and "hidden states written" not in err
    assert not list((tmp_path / "work").glob("features-written-*.pt"))


def test_a_data_folder_with_other_settings_is_refused(run_script, tmp_path):
    assert run(run_script, tmp_path, "--n_prompts", "8")[0] == 0
    code, err = run(run_script, tmp_path, "--n_prompts", "8", "--seed", "5", "--kind", "eagle",
                    "--output", str(tmp_path / "eagle"))
    assert code != 0 and "seed 0 -> 5" in err and err.strip().count("\n") == 0
    assert not (tmp_path / "eagle").exists()


@pytest.mark.parametrize("flag, value", [("--gen_batch_size", "0"), ("--n_prompts", "0"), ("--gen_method", "nope"),
                                         ("--answer_tokens", "-3"), ("--unroll_steps", "0"),
                                         ("--followup_share", "1.5"), ("--prompt_context", "0"),
                                         ("--prompt_context", "whole")])
def test_bad_input_is_one_line(run_script, tmp_path, flag, value):
    code, err = run(run_script, tmp_path, "--kind", "eagle", "--output", str(tmp_path / "eagle"), flag, value)
    assert code != 0 and err.strip().count("\n") == 0 and value in err
    assert not (tmp_path / "eagle").exists() and not (tmp_path / "data").exists()


def test_learning_curve_trains_scores_and_benchmarks_each_point_once(run_script, tmp_path):
    assert run(run_script, tmp_path)[0] == 0  # the data
    prompts = tmp_path / "prompts.json"
    prompts.write_text(json.dumps([{"prompt": "abc abc abc abc"}, {"prompt": "one two one two"}]))
    data_args = ("--epochs 0.5 --batch_size 4 --draft_vocab_size 64 --n_prompts 24 --chunk_size 8 "
                 "--max_new_tokens 8 --gen_batch_size 3 --max_seq_len 1024")
    argv = ["--model", TINY, "--data_dir", str(tmp_path / "data"), "--work_dir", str(tmp_path / "work"),
            "--output_dir", str(tmp_path / "curve"), "--points", "10,all", "--input_prompts", str(prompts),
            "--max_generated_tokens", "8", "--n_draft_tokens", "2", "--tree_topk", "2", "--tree_budget", "3",
            "--train_args", data_args]
    code, err = run_script("learning_curve", argv)
    assert code == 0, err
    curve = json.loads((tmp_path / "curve" / "curve.json").read_text())
    assert [(p["kind"], p["point"]) for p in curve] == [("eagle", "10"), ("multi_projection", "10"),
                                                         ("eagle", "all"), ("multi_projection", "all")]
    small, everything = curve[0]["answer_tokens"], curve[2]["answer_tokens"]
    assert small < everything
    assert all(p["chain"]["tau"] >= 1 and p["tree"]["tau"] >= 1 and len(p["held_out_top1"]) == len(p["train_top1"]) == (5 if p["kind"] == "eagle" else 4) for p in curve)
    assert all(p["epochs"] == 0.5 and p["train_seconds"] is not None for p in curve)  # tiny runs round to 0 s
    assert (tmp_path / "curve" / "curve.png").stat().st_size > 0 and "| eagle |" in (tmp_path / "curve" / "curve.md").read_text()
    stamp = (tmp_path / "curve" / "bench" / "eagle-10" / "done.json").stat().st_mtime_ns
    assert run_script("learning_curve", argv)[0] == 0  # resumes: nothing trained or benchmarked again
    assert (tmp_path / "curve" / "bench" / "eagle-10" / "done.json").stat().st_mtime_ns == stamp


def test_learning_curve_keeps_the_same_prompt_context_for_training_and_scoring(run_script, tmp_path, monkeypatch):
    from scripts.tests.conftest import load_script
    module, calls = load_script("learning_curve"), []

    class Scored(Exception):
        pass

    def fake(name, argv):  # record each script's flags; stop at the first score
        calls.append((name, argv))
        if name == "train_speculator":
            head = tmp_path / "curve" / "heads" / "eagle-10"
            head.mkdir(parents=True)
            (head / "speculator_config.json").write_text("{}")
        else:
            raise Scored

    monkeypatch.setattr(module, "run_script", fake)
    argv = ["--points", "10", "--kinds", "eagle", "--input_prompts", "p.json", "--output_dir", str(tmp_path / "curve")]
    with pytest.raises(Scored):
        module.main([*argv, "--prompt_context", "64"])
    assert [name for name, _ in calls] == ["train_speculator", "speculator_accuracy"]
    assert all(" --prompt_context 64 " in f" {' '.join(flags)} " for _, flags in calls)
    code, err = run_script("learning_curve", [*argv, "--train_args", "--epochs 2 --prompt_context 64"])
    assert code != 0 and err.strip().count("\n") == 0 and "--prompt_context" in err


def test_init_from_trains_further_from_a_saved_head(run_script, tmp_path):
    from safetensors.torch import load_file
    first = tmp_path / "first"
    assert run(run_script, tmp_path, "--kind", "eagle", "--output", str(first))[0] == 0
    # at learning rate 0 a run changes nothing: what it saves is what it started from
    code, err = run(run_script, tmp_path, "--kind", "eagle", "--init_from", str(first), "--lr", "0",
                    "--output", str(tmp_path / "same"))
    assert code == 0, err
    before, after = load_file(str(first / "model.safetensors")), load_file(str(tmp_path / "same" / "model.safetensors"))
    assert set(before) == set(after) and all(torch.equal(before[k], after[k]) for k in before)
    fresh = tmp_path / "fresh"
    assert run(run_script, tmp_path, "--kind", "eagle", "--lr", "0", "--output", str(fresh))[0] == 0
    assert not torch.equal(load_file(str(fresh / "model.safetensors"))["fc_weight"], before["fc_weight"])
    # trained further: new weights, and the record says where it started
    code, err = run(run_script, tmp_path, "--kind", "eagle", "--init_from", str(first), "--output", str(tmp_path / "more"))
    assert code == 0, err
    assert not torch.equal(load_file(str(tmp_path / "more" / "model.safetensors"))["fc_weight"], before["fc_weight"])
    record = json.loads((tmp_path / "more" / "speculator_config.json").read_text())["training"]["init_from"]
    assert record["folder"] == str(first.resolve()) and record["training"]["command"].endswith(str(first))
    from scripts.tests.conftest import load_script
    training = json.loads((tmp_path / "more" / "speculator_config.json").read_text())["training"]
    assert load_script("learning_curve").all_runs(training, lambda t: t["train"]["epochs"]) == 1.0  # 0.5 + 0.5
    # another draft vocabulary: the same trained weights, drafting from the answers' 32 most frequent tokens
    code, err = run(run_script, tmp_path, "--kind", "eagle", "--init_from", str(first), "--lr", "0",
                    "--draft_vocab_size", "32", "--output", str(tmp_path / "narrow"))
    assert code == 0, err
    narrow = load_file(str(tmp_path / "narrow" / "model.safetensors"))
    assert narrow["draft_vocab"].numel() == 32 and before["draft_vocab"].numel() == 64
    assert set(narrow) == set(before) and all(torch.equal(before[k], narrow[k]) for k in before if k != "draft_vocab")
    # the same size given again re-draws it from this run's answers (here the first chunk's alone)
    vocab = {}
    for name, start in (("small", []), ("redrawn", ["--init_from", str(first)])):
        code, err = run(run_script, tmp_path, "--kind", "eagle", "--answer_tokens", "10", "--lr", "0", *start,
                        "--output", str(tmp_path / name))
        assert code == 0, err
        vocab[name] = load_file(str(tmp_path / name / "model.safetensors"))["draft_vocab"]
    assert not torch.equal(vocab["small"], before["draft_vocab"]) and torch.equal(vocab["redrawn"], vocab["small"])
    code, err = run(run_script, tmp_path, "--kind", "multi_projection", "--init_from", str(first))
    assert code != 0 and "its speculator is eagle, not --kind multi_projection" in err and err.strip().count("\n") == 0


def test_the_evals_mix_makes_its_own_data_and_joins_training_as_extra_data(run_script, tmp_path):
    from models.training.tests.test_evals_registry import fake_wheel
    fake_wheel(tmp_path / "wheels")
    evals = tmp_path / "evals"
    code, err = run_script("train_speculator", [
        "--model", TINY, "--prompt_mix", "evals", "--wheels_dir", str(tmp_path / "wheels"), "--n_prompts", "20",
        "--chunk_size", "10", "--max_new_tokens", "8", "--gen_batch_size", "3", "--max_seq_len", "8192",
        "--followup_share", "0", "--data_dir", str(evals), "--work_dir", str(tmp_path / "work" / "evals")])
    assert code == 0, err
    assert sorted(p.name for p in evals.iterdir()) == ["answers-000.json.gz", "answers-001.json.gz", "prompts.json.gz",
                                                       "settings.json", "timing.json"]  # nothing written first
    with gzip.open(evals / "prompts.json.gz", "rt") as f:
        saved = json.load(f)
    assert len(saved["prompts"]) == 20 and set(saved["sources"]) == {"summary", "retrieval", "extraction", "translation"}
    assert json.loads((evals / "settings.json").read_text())["prompt_mix"] == "evals"

    assert run(run_script, tmp_path)[0] == 0  # the own mix's data
    followups = len(json.load(gzip.open(tmp_path / "data" / "followups-001.json.gz", "rt"))["answers"])
    code, err = run(run_script, tmp_path, "--kind", "eagle", "--answer_tokens", "10", "--output", str(tmp_path / "both"),
                    "--extra_data", str(evals))
    assert code == 0, err
    training = json.loads((tmp_path / "both" / "speculator_config.json").read_text())["training"]
    # the own mix's first training chunk and the evals folder's one training chunk (its first is held out)
    assert training["examples"] == 8 + followups + 10 and training["extra_data"] == [str(evals)]
    assert "answers, chunk" not in err  # the evals folder's answers and hidden states are reused, not decoded
    code, err = run(run_script, tmp_path, "--kind", "eagle", "--extra_data", str(tmp_path / "nothing"))
    assert code == 2 and "holds no speculator data" in err and err.strip().count("\n") == 0
    settings = json.loads((evals / "settings.json").read_text())
    (evals / "settings.json").write_text(json.dumps({**settings, "model": "random:tiny-llama:7"}))
    code, err = run(run_script, tmp_path, "--kind", "eagle", "--extra_data", str(evals))
    assert code == 2 and "holds answers of random:tiny-llama:7, not --model" in err


def test_feature_layers_get_their_own_hidden_states_and_a_head_that_reads_them(run_script, tmp_path):
    from safetensors.torch import load_file
    one, wide = tmp_path / "one", tmp_path / "wide"
    assert run(run_script, tmp_path, "--kind", "eagle", "--output", str(one))[0] == 0
    code, err = run(run_script, tmp_path, "--kind", "eagle", "--feature_layers", "0,2", "--output", str(wide))
    assert code == 0, err
    assert json.loads((wide / "speculator_config.json").read_text())["feature_layers"] == [0, 2]
    assert load_file(str(wide / "model.safetensors"))["fuse_weight"].shape == (64, 3 * 64)
    work = tmp_path / "work"
    assert (work / "features-answers-001-layers-0-2.pt").is_file() and (work / "features-answers-001.pt").is_file()
    code, err = run_script("speculator_accuracy", ["--speculator", str(wide), "--model", TINY, "--data_dir",
                                                   str(tmp_path / "data"), "--work_dir", str(work)])
    assert code == 0, err
    assert (work / "features-answers-000-layers-0-2.pt").is_file()  # the held-out chunk, with the head's layers
    # a single-layer head trained further reading more layers; a wide head keeps its own
    code, err = run(run_script, tmp_path, "--kind", "eagle", "--init_from", str(one), "--feature_layers", "1",
                    "--output", str(tmp_path / "more"))
    assert code == 0, err
    assert json.loads((tmp_path / "more" / "speculator_config.json").read_text())["feature_layers"] == [1]
    code, err = run(run_script, tmp_path, "--kind", "eagle", "--init_from", str(wide), "--lr", "0",
                    "--output", str(tmp_path / "same"))
    assert code == 0, err
    assert json.loads((tmp_path / "same" / "speculator_config.json").read_text())["feature_layers"] == [0, 2]
    for extra, message in [(["--kind", "eagle", "--init_from", str(wide), "--feature_layers", "1"], "reads layers [0, 2]"),
                           (["--kind", "multi_projection", "--feature_layers", "0"], "only --kind eagle"),
                           (["--kind", "eagle", "--feature_layers", "3"], "from 0 to 2"),
                           (["--kind", "eagle", "--feature_layers", "a,b"], "expected layer indices")]:
        code, err = run(run_script, tmp_path, *extra)
        assert code == 2 and message in err and err.strip().count("\n") == 0, (extra, err)
