"""The speculators' training prompts: sources that are distinct and deterministic, a mix spread
evenly, and the n-gram check that keeps every evaluation prompt out of them."""

import json

import pytest

from models.common.errors import UserError
from models.common.tokenizer import ByteTokenizer
from models.training import data, followups, mix, sources
from models.training.dataset import DataFolder, learned_texts
from models.training.contamination import Contamination, evaluation_texts, ngrams

BENCH = "Who played anna in once upon a time?"
SHORT = "Who wrote the Odyssey poem?"
QUESTION = "Jen decides to travel to 3 different countries. He has to pay $400 for the supplies he needs, in total."


def test_a_prompt_holding_an_evaluation_prompt_is_caught_however_it_is_dressed():
    check = Contamination([BENCH, QUESTION, SHORT, "Summarize it."])
    pasted = f"Please answer carefully.\n\n{QUESTION.upper().replace(',', ';')}\n\nThanks!"
    keep, drop = check.clean([pasted, "Jen decides to travel to 3 different places today.",
                              f"Quiz: {BENCH}", f"First, {SHORT.lower()} Then explain why.", "Summarize it."])
    assert drop == [0, 2, 3] and keep == [1, 4]  # short questions whole; two words would catch everything
    assert not check.shared("Jen decides to travel to 3 different")  # seven shared words are not eight


def test_evaluation_texts_read_prompt_files_and_spec_bench_turns(tmp_path):
    (tmp_path / "demo_prompts.json").write_text(json.dumps([{"prompt": "Summarize.", "context": "alpha beta"}]))
    bench = tmp_path / "question.jsonl"
    bench.write_text(json.dumps({"category": "qa", "turns": ["first turn", "second turn"]}) + "\n")
    plain = tmp_path / "held.json"
    plain.write_text(json.dumps(["a plain prompt"]))
    texts, found = evaluation_texts([tmp_path, bench, plain, tmp_path / "missing.jsonl"])
    assert texts == ["alpha beta\n\nSummarize.", "first turn", "second turn", "a plain prompt"]
    assert [p.name for p in found] == ["demo_prompts.json", "question.jsonl", "held.json"]
    # a result file named like a prompt file is a one-line error naming it, not a KeyError
    (tmp_path / "unseen_prompts.json").write_text(json.dumps({"top1": [0.5]}))
    with pytest.raises(UserError, match="unseen_prompts.json is named like a prompt file"):
        evaluation_texts([tmp_path])


def test_sources_are_distinct_deterministic_and_keep_their_first_items():
    passages = sources.stdlib_passages()
    assert len(passages) > 500 and all(30 <= len(t.split()) <= 300 for _, t in passages)
    for make in (lambda n: sources.word_problems(n, 0), lambda n: sources.passage_prompts(n, 0, passages)):
        many = make(400)
        assert len(set(many)) == 400 and make(400) == many
    assert sources.word_problems(50, 0) == sources.word_problems(400, 0)[:50]
    sentences = sources.first_sentences(passages)
    assert len(sentences) == len(set(sentences)) > 100
    requests = [r for r, _ in sources.foreign_text_requests(300, 0, sentences)]
    assert len(set(requests)) == 300


def test_the_mix_spreads_every_source_over_the_whole_list():
    groups = {"a": [f"a{i}" for i in range(60)], "b": [f"b{i}" for i in range(30)], "c": [f"c{i}" for i in range(10)]}
    ordered = mix.interleave(groups)
    assert sorted(p for _, p in ordered) == sorted(p for items in groups.values() for p in items)
    first = [s for s, _ in ordered[:20]]
    assert first.count("a") == 12 and first.count("b") == 6 and first.count("c") == 2  # a fair sample
    counts = mix.counts(21000, {**mix.DIRECT, **mix.WRITTEN})
    assert abs(sum(counts.values()) - 21000) <= len(counts)


def test_ngrams_ignore_case_and_punctuation():
    assert ngrams("A, b; C!", 3) == ngrams("a b c", 3) == {("a", "b", "c")}


def test_follow_ups_pick_a_share_of_a_chunk_the_same_way_every_time():
    prompts = [f"prompt {i}" for i in range(40)]
    answers = [f"answer {i}" if i != 7 else "" for i in range(40)]
    drawn = followups.conversations(prompts, answers, 0.25, seed=0, chunk=3)
    assert drawn == followups.conversations(prompts, answers, 0.25, seed=0, chunk=3)
    assert drawn != followups.conversations(prompts, answers, 0.25, seed=0, chunk=4)
    assert 9 <= len(drawn) <= 10  # ten drawn; one may have met the empty answer
    for user, assistant, request in drawn:
        i = prompts.index(user["content"])
        assert assistant == {"role": "assistant", "content": answers[i]} and request["role"] == "user"
        assert "{" not in request["content"] and followups.text([user, assistant, request]).endswith(request["content"])
    assert [prompts.index(c[0]["content"]) for c in drawn] == sorted(prompts.index(c[0]["content"]) for c in drawn)
    assert followups.conversations(prompts, answers, 0.0, seed=0, chunk=3) == []


def test_a_conversation_encodes_as_its_turns_in_the_chat_markers():
    tok = ByteTokenizer()
    turns = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"},
             {"role": "user", "content": "shorter"}]
    assert tok.decode(data.encode_prompt(tok, turns)) == "<user>\nhi\n<assistant>\nhello\n<user>\nshorter\n<assistant>\n"
    assert data.encode_prompt(tok, "hi") == tok.encode("hi", chat=True) == tok.encode_chat(turns[:1])


def test_a_data_folder_records_a_setting_newer_than_it_and_refuses_a_changed_one(tmp_path):
    (tmp_path / "settings.json").write_text(json.dumps({"seed": 0}))
    DataFolder(tmp_path, {"seed": 0, "followup_share": 0.25})
    assert json.loads((tmp_path / "settings.json").read_text()) == {"seed": 0, "followup_share": 0.25}
    with pytest.raises(UserError, match="followup_share 0.25 -> 0.5"):
        DataFolder(tmp_path, {"seed": 0, "followup_share": 0.5})


def test_learned_texts_hold_every_prompt_answer_and_follow_up_conversation(tmp_path):
    """A run of words across a prompt and its answer exists only in the follow-up conversation:
    an evaluation set checked against the learned texts must still see it."""
    tok = ByteTokenizer()
    prompts = ["tell me about the old stone bridge", "name a color", "count to three", "say hello"]
    answers = ["it spans the wide river near town", "blue", "one two three", "hello"]
    folder = DataFolder(tmp_path, {"seed": 0, "followup_share": 1.0, "chunk_size": 4})
    data.save_json(tmp_path / "prompts.json.gz", {"prompts": prompts})
    data.save_answers(tmp_path / "answers-000.json.gz", prompts, [tok.encode(a)[1:] + [2] for a in answers])
    texts = learned_texts(folder, tok)
    assert texts[: len(prompts) + len(answers)] == prompts + answers  # the eos is not text
    across = "the old stone bridge it spans the wide"  # 4 prompt words, then 4 answer words
    assert not Contamination([across]).clean(prompts + answers)[1]
    assert Contamination([across]).clean(texts)[1]
