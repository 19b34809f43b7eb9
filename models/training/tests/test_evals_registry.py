"""The evals-registry prompt mix on a stand-in wheel: every task shape made, deterministic,
long documents built from one dataset's passages, half the translations from German, and no text
from a dataset under its own licence or one the unseen prompts read."""

import json
import random
import re
import zipfile

import pytest

from models.training import evals_registry as registry

FORBIDDEN = "forbidden words that must never reach a training prompt"


def passage(dataset: str, i: int) -> str:
    return f"{dataset} passage {i} " + " ".join(f"w{dataset[:3]}{i}x{k}" for k in range(40))


def fake_wheel(folder, rows_per_dataset: int = 12) -> None:
    """An evals wheel with every dataset the mix reads, one under its own licence and one the
    unseen set reads (both holding FORBIDDEN)."""
    folder.mkdir()
    files: dict[str, list[dict]] = {}
    for dataset in registry.PASSAGE_DATASETS:
        files[f"{registry.DATA}/{dataset}/samples.jsonl"] = [
            {"input": [{"role": "system", "content": "Do the task."}, {"role": "user", "content": passage(dataset, i)}]}
            for i in range(rows_per_dataset)]
    for dataset, language in registry.FOREIGN_DATASETS.items():
        files[f"{registry.DATA}/{dataset}/samples.jsonl"] = [
            {"input": [{"role": "system", "content": "Answer with a letter."},
                       {"role": "user", "content": f"{language} frage nummer {i} ist hier gestellt\nA. eins\nB. zwei"}]}
            for i in range(rows_per_dataset)]
    files[f"{registry.DATA}/text_compression/samples.jsonl"] = [{"input": [{"role": "user", "content": FORBIDDEN}]}]
    files[registry.UNSEEN["summarization"][1]] = [{"input": [{"role": "user", "content": FORBIDDEN}]}]
    with zipfile.ZipFile(folder / "evals-0-py3-none-any.whl", "w") as z:
        for member, rows in files.items():
            z.writestr(member, "\n".join(map(json.dumps, rows)))


def test_the_mix_makes_every_task_shape_from_allowed_datasets_only(tmp_path):
    fake_wheel(tmp_path / "wheels")
    groups = registry.training_prompts(60, seed=0, wheels_dir=tmp_path / "wheels")
    assert {source: len(prompts) for source, prompts in groups.items()} == {
        "summary": 21, "retrieval": 15, "extraction": 6, "translation": 18}
    assert groups == registry.training_prompts(60, seed=0, wheels_dir=tmp_path / "wheels")
    assert groups != registry.training_prompts(60, seed=1, wheels_dir=tmp_path / "wheels")
    every = [p for prompts in groups.values() for p in prompts]
    assert not any(FORBIDDEN in p or "Do the task." in p for p in every)  # instructions dropped, licences kept
    for prompt in groups["summary"]:
        found = {d for d in registry.PASSAGE_DATASETS if f"{d} passage" in prompt}
        assert len(found) == 1  # a document is one dataset's passages
        assert prompt.count(" passage ") >= 150 // 42  # run to at least 150 words: several 42-word passages
    languages = [re.match(r"Translate (?:this )?(\w+)", p).group(1) for p in groups["translation"]]
    assert languages.count("German") == 9 and all("\nA." not in p for p in groups["translation"])
    assert all(p.endswith("ist hier gestellt") for p in groups["translation"])  # the question, not its options


@pytest.mark.parametrize("dataset", ["text_compression", "consensus_summary"])
def test_a_dataset_with_its_own_licence_or_read_by_the_unseen_set_is_refused(tmp_path, dataset):
    fake_wheel(tmp_path / "wheels")
    with pytest.raises(ValueError, match="not for training"):
        registry.dataset_rows(tmp_path / "wheels" / "evals-0-py3-none-any.whl", dataset)


def test_no_dataset_the_mix_reads_is_excluded_by_licence_or_the_unseen_set():
    unseen = {registry.dataset_of(member) for _, member in registry.UNSEEN.values()}
    read = set(registry.PASSAGE_DATASETS) | set(registry.FOREIGN_DATASETS)
    assert not read & (registry.OWN_LICENCE | unseen)


def words(prefix: str, i: int) -> str:
    return " ".join(f"{prefix}{i}w{k}" for k in range(50))


def test_a_passage_is_used_once_before_any_repeats_and_small_datasets_leave_the_turns():
    big, small = [words("big", i) for i in range(300)], [words("small", i) for i in range(4)]
    docs = registry.documents(10, random.Random(0), {"small": small, "big": big, "tiny": [words("tiny", 0)]})
    assert len(docs) == 10 and all(len(d.split()) >= registry.DOC_WORDS[0] for d in docs)
    used = [p for d in docs for p in d.split("\n\n")]
    assert len(used) == len(set(used))  # the old turns came back to "small" every other document
    assert sum(any(p in d for p in small) for d in docs) == 1  # 200 words make one document, then it leaves
    assert not any("tiny0w0" in d for d in docs)  # 50 words in all: never a document


def test_documents_start_again_only_when_every_passage_is_used():
    pool = [words("a", i) for i in range(12)]  # 600 words: one to four documents
    docs = registry.documents(6, random.Random(1), {"a": pool})
    assert len(docs) == 6
    first_round = []
    for d in docs:
        passages = d.split("\n\n")
        if set(passages) & set(first_round):
            break
        first_round += passages
    assert len(first_round) >= len(pool) - 2  # at most the last 100 words (too few for a document) left over
    with pytest.raises(registry.UserError, match="no registry passages"):
        registry.documents(1, random.Random(0), {"a": [words("a", 0)]})
