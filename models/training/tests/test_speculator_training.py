"""Training the speculators: the target's answers and hidden states as examples (recorded while
decoding, rebuilt in one pass, cut to a context, round-tripped through their files), a training run
that lowers its loss, EAGLE's training-time passes equal to drafting, the authored corpus, and the
held-out scoring (evaluate.py), on tiny random models."""

import json
from pathlib import Path

import pytest
import torch

from models.common.errors import UserError
from models.speculative.generator import Generator
from models.speculative.proposers.draft_model import DraftModelProposer
from models.speculative.proposers.eagle import EagleProposer
from models.speculative.speculators import heads
# the tiny target, its prompts, their greedy answers and examples: test_speculators' module fixtures
from models.speculative.tests.test_speculators import (  # noqa: F401
    answers, decoded, examples, make_head, prompts, target,
)
from models.training import corpus, data
from models.training import train as train_module
from models.training.data import Example
from models.training.dataset import DataFolder, load_chunk
from models.training.train import TrainConfig, train


def test_answers_are_target_only_greedy_decoding(target, prompts, answers):
    solo = Generator(target.model, max_seq_len=256, eos_token_ids=target.tokenizer.eos_token_ids)
    for ids, answer in zip(prompts, answers):
        assert answer == solo.generate(ids, 24).tokens


@pytest.mark.parametrize("index", [0, 5, 23])
def test_examples_carry_the_targets_hidden_states(target, prompts, answers, examples, index):
    model, e = target.model, examples[index]
    whole = prompts[index] + answers[index][:-1]  # the last token has no hidden state
    assert torch.equal(e.tokens, torch.tensor(whole)) and e.answer_start == len(prompts[index])
    assert e.features.shape == (len(e.tokens), model.args.dim)
    with torch.inference_mode():  # the sequence in one pass, alone: what the decoding passes recorded
        _, hidden = model(torch.tensor([whole]), model.new_cache(len(whole)), 0, logits_for="none", return_hidden=True)
    torch.testing.assert_close(e.features.float(), hidden[0], atol=2e-3, rtol=2e-3)


def test_an_example_keeps_the_prompt_context_asked_for(prompts, examples):
    cut = data.keep_context(examples, data.CUT_CONTEXT)
    for e, c, p in zip(examples, cut, prompts):
        skip = max(0, len(p) - data.CUT_CONTEXT)
        assert c.answer_start == min(len(p), data.CUT_CONTEXT)
        assert torch.equal(c.tokens, e.tokens[skip:]) and torch.equal(c.features, e.features[skip:])
    assert any(len(p) > data.CUT_CONTEXT for p in prompts)  # the cut does cut
    assert data.keep_context(examples, None) is examples
    assert data.has_context(cut, prompts, data.CUT_CONTEXT) and not data.has_context(cut, prompts, None)
    assert data.has_context(examples, prompts, None)


def test_a_cache_cut_to_fewer_prompt_positions_is_rebuilt_whole(tmp_path, target, prompts, answers, examples):
    """Caches of the time examples kept 64 prompt positions serve that context, and are rebuilt by
    one teacher-forced pass when a run asks for the whole prompt."""
    texts = corpus.authored_prompts(24, seed=3)[:3]  # the prompts fixture's first three
    ids = [data.encode_prompt(target.tokenizer, t) for t in texts]
    assert ids == prompts[:3]
    folder = DataFolder(tmp_path / "data", {"model": "tiny"})
    data.save_answers(folder.folder / "answers-000.json.gz", texts, answers[:3])
    full = data.record_features(target.model, ids, answers[:3])
    old = data.keep_context(full, 4)  # what an old cache held (as the first, unmarked layout)
    torch.save([e.features for e in old], tmp_path / "features-answers-000.pt")
    _, kept = load_chunk(folder, tmp_path, target.model, target.tokenizer, "answers-000", texts, context=4)
    assert [e.answer_start for e in kept] == [4, 4, 4] and "features" not in folder.timing  # served, not rebuilt
    _, whole = load_chunk(folder, tmp_path, target.model, target.tokenizer, "answers-000", texts, context=None)
    assert [e.answer_start for e in whole] == [len(i) for i in ids] and "features" in folder.timing
    for a, b in zip(whole, full):
        assert torch.equal(a.tokens, b.tokens) and torch.equal(a.features, b.features)


def test_rebuilt_examples_match_the_recorded_ones(target, prompts, answers, examples):
    rebuilt = data.record_features(target.model, prompts, answers, batch_tokens=300)  # several padded passes
    for a, b in zip(examples, rebuilt):
        assert torch.equal(a.tokens, b.tokens) and a.answer_start == b.answer_start
        torch.testing.assert_close(a.features.float(), b.features.float(), atol=2e-3, rtol=2e-3)


def test_answers_and_features_round_trip_through_their_files(tmp_path, prompts, answers, examples):
    path, features = tmp_path / "answers-000.json.gz", tmp_path / "features-000.pt"
    data.save_answers(path, ["a", "b"], answers[:2])
    data.save_features(features, examples[:2], prompts[:2], answers[:2])
    assert data.load_answers(path, ["a", "b"]) == answers[:2]
    assert sorted(f.name for f in tmp_path.iterdir()) == sorted([path.name, features.name])  # no temporaries
    for a, b in zip(examples, data.load_examples(features, prompts[:2], answers[:2])):
        assert torch.equal(a.tokens, b.tokens) and torch.equal(a.features, b.features)
        assert a.answer_start == b.answer_start
    assert data.load_examples(features, prompts[2:4], answers[2:4]) is None  # a cache of other sequences
    with pytest.raises(UserError, match="answers other prompts"):
        data.load_answers(path, ["a", "c"])


@pytest.mark.parametrize("method", ["draft_model", "eagle"])
@pytest.mark.parametrize("stop_early", [False, True])
def test_speculative_decoding_records_the_same_hidden_states(target, prompts, answers, method, stop_early):
    """Rejected drafts never enter and drafts accepted past an EOS are dropped: the rows recorded
    from verification passes are the ones target-only decoding records, and eagle's own use of
    them is untouched."""
    eos = (answers[0][6],) if stop_early else target.tokenizer.eos_token_ids  # a token the answers do emit

    def decode(proposer):
        generator = Generator(target.model, proposer, n_draft_tokens=3, max_seq_len=256, eos_token_ids=eos,
                              record_hidden=True)
        return data.answer_prompts(generator, prompts[:6], 24, rows=3)

    proposer = (DraftModelProposer(target.model, 256, target_vocab_size=target.model.args.vocab_size)  # all accepted
                if method == "draft_model" else EagleProposer(make_head("eagle", target)))
    alone, speculative = decode(None), decode(proposer)
    assert not stop_early or (alone[0].tokens[-1] == eos[0] and len(alone[0].tokens) < 24)
    for a, b in zip(alone, speculative):
        assert a.tokens == b.tokens
        assert b.hidden.shape == (len(b.tokens) - 1 + b.stats.prompt_tokens, target.model.args.dim)
        torch.testing.assert_close(a.hidden, b.hidden, atol=1e-5, rtol=1e-5)
    if method == "draft_model":  # rows came from multi-token verification (past the EOS: dropped)
        assert all(it.accepted == 3 for it in speculative[1].stats.iterations[:-1])


@pytest.mark.parametrize("kind", heads.KINDS)
def test_tiny_training_run_lowers_its_loss(kind, target, examples, tmp_path):
    vocab = data.draft_vocabulary(examples, 200, target.tokenizer.eos_token_ids)
    head = make_head(kind, target, vocab)
    config = TrainConfig(epochs=15, batch_size=4, lr=1e-2, warmup_steps=3, checkpoint_every=10)
    losses = train(head, examples, config, checkpoint=tmp_path / "ckpt.pt")
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < 0.8 * first, (first, last)
    # resuming a finished run is a no-op that keeps the history
    again = train(make_head(kind, target, vocab), examples, config, checkpoint=tmp_path / "ckpt.pt")
    assert again == losses
    assert torch.load(tmp_path / "ckpt.pt", weights_only=False)["seconds"] > 0  # training time survives resumes


def test_corpus_is_deterministic_and_never_the_evaluation_prompts():
    a, b = corpus.authored_prompts(300, seed=0), corpus.authored_prompts(300, seed=0)
    assert a == b and len(set(a)) == 300 and corpus.authored_prompts(300, seed=1) != a
    repo = Path(__file__).resolve().parents[3]
    held_out = set()
    for f in (repo / "sample_prompts").glob("*.json"):
        held_out |= {p["prompt"] for p in json.loads(f.read_text())}
    bench = repo.parent / "shared" / "data" / "spec_bench" / "question.jsonl"
    if bench.exists():
        held_out |= {json.loads(line)["turns"][0] for line in bench.read_text().splitlines() if line.strip()}
    assert not held_out & set(corpus.authored_prompts(2000, seed=0))


def _self_consistent(kind, target, length=24, answer_start=6):
    """An example whose answer is exactly what the head drafts at step 1 from each position
    (built token by token, since eagle reads the tokens it predicts): step-1 accuracy is 1."""
    from models.training.evaluate import _step_logits
    head = make_head(kind, target)
    gen = torch.Generator().manual_seed(5)
    feats = torch.randn(length, target.model.args.dim, generator=gen).half()
    tokens = torch.randint(3, 200, (length,), generator=gen)
    for p in range(answer_start - 2, length - 2):  # position p drafts the token at p + 2
        example = Example(tokens.clone(), feats, answer_start)
        b_tokens, b_feats, pad, _ = train_module.pad_batch([example], "cpu")
        with torch.inference_mode():
            logits = next(_step_logits(head, b_tokens, b_feats, pad, 1))
        tokens[p + 2] = head.draft_vocab[logits[0, p].argmax()]
    return head, Example(tokens, feats, answer_start)


@pytest.mark.parametrize("kind", heads.KINDS)
def test_accuracy_scores_each_step_at_the_right_position(kind, target):
    from models.training.evaluate import accuracy
    head, example = _self_consistent(kind, target)
    scored = accuracy(head, [example], steps=2, topk=3)
    assert scored["top1"][0] == 1.0 and scored["top3"][0] == 1.0
    assert scored["positions"] == [len(example.tokens) - example.answer_start - 1,
                                   len(example.tokens) - example.answer_start - 2]
    shifted = Example(torch.roll(example.tokens, 1), example.features, example.answer_start)
    assert accuracy(head, [shifted], steps=1)["top1"][0] < 0.5  # one position off scores (almost) nothing


def test_top_probability_is_the_targets_softmax_maximum_in_any_chunking():
    from models.training.evaluate import top_probability
    gen = torch.Generator().manual_seed(3)
    hidden, lm_head = torch.randn(10, 8, generator=gen), 3 * torch.randn(50, 8, generator=gen)
    want = torch.softmax(hidden @ lm_head.T, dim=-1).max(-1).values
    for rows in (1, 4, 4096):
        assert torch.allclose(top_probability(hidden, lm_head, rows=rows), want, atol=1e-6)


@pytest.mark.parametrize("kind", heads.KINDS)
def test_step_one_splits_by_the_targets_certainty_at_the_position_that_chose_the_token(kind, target):
    """Two-row LM head (w, 0): the target's top-1 probability at position q is sigmoid(|h_q . w|);
    the token at p + 2 was chosen at q = p + 1, and each bin must count exactly those positions."""
    from models.training.evaluate import CERTAINTY_EDGES, accuracy, certainty_bins
    head, example = _self_consistent(kind, target)
    dim = target.model.args.dim
    w = torch.randn(dim, generator=torch.Generator().manual_seed(9)) / dim**0.5
    lm_head = torch.stack([w, torch.zeros(dim)])
    scored = accuracy(head, [example], steps=1, target_lm_head=lm_head)
    sure = torch.sigmoid((example.features.float() @ w).abs())
    # step 1 is scored from the last prompt token p = answer_start - 1 on; it guesses p + 2, chosen at p + 1
    chose = range(example.answer_start, len(example.tokens) - 1)
    want = [0] * (len(CERTAINTY_EDGES) + 1)
    for q in chose:
        want[sum(float(sure[q]) >= e for e in CERTAINTY_EDGES)] += 1
    got = scored["step1_by_certainty"]
    assert [b["certainty"] for b in got] == certainty_bins() == ["0-0.3", "0.3-0.6", "0.6-0.9", ">=0.9"]
    assert [b["positions"] for b in got] == want and sum(want) == scored["positions"][0]
    assert sum(1 for n in want if n) >= 2  # the check spans bins, so an off-by-one position shows
    assert all(b["top1"] == 1.0 for b in got if b["positions"])  # every step-1 draft is right here
    assert "step1_by_certainty" not in accuracy(head, [example], steps=1)


def test_seen_before_marks_a_token_repeated_later_in_its_own_row_only():
    from models.training.evaluate import seen_before
    tokens = torch.tensor([[0, 0, 5, 6, 5, 7], [5, 6, 7, 6, 8, 5]])
    pad = torch.tensor([2, 0])  # row 0's two leading zeros are padding: they are never "seen"
    assert seen_before(tokens, pad).tolist() == [[False, False, False, False, True, False],
                                                 [False, False, False, True, False, True]]


@pytest.mark.parametrize("kind", heads.KINDS)
def test_step_one_splits_into_copied_and_new_tokens_and_counts_those_outside_the_draft_vocabulary(kind, target):
    from models.training.evaluate import accuracy, seen_before
    head, example = _self_consistent(kind, target)
    scored = accuracy(head, [example], steps=1)
    # step 1 scores the tokens from answer_start + 1 on
    copied = seen_before(example.tokens[None], torch.tensor([0]))[0, example.answer_start + 1:]
    seen, new = scored["step1_by_copy"]
    assert (seen["tokens"], new["tokens"]) == ("seen earlier", "new")
    assert (seen["positions"], new["positions"]) == (int(copied.sum()), int((~copied).sum()))
    assert seen["positions"] + new["positions"] == scored["positions"][0] and scored["outside_draft_vocab"] == 0.0
    # the same head without the last answer token in its draft vocabulary misses it wherever it is the label
    last = int(example.tokens[-1])
    narrow = heads.with_draft_vocab(head, head.draft_vocab[head.draft_vocab != last], target.model)
    missed = accuracy(narrow, [example], steps=1)
    n, times = scored["positions"][0], int((example.tokens[example.answer_start + 1:] == last).sum())
    assert times >= 1 and missed["outside_draft_vocab"] == times / n and missed["top1"][0] == 1.0 - times / n


def eagle_chain_hidden(head, tokens, features, start, steps):
    """Reference: drafting's hidden states for a chain from the real feature at `start`, fed the
    true tokens as its drafts (the draft cache: real pairs 0..start, then the chain's nodes)."""
    layer = head.layer
    cache = layer.new_cache(len(tokens) + steps)
    x = head.inputs(tokens[1 : start + 2], features[: start + 1])
    _, hidden = layer(None, cache, 0, embeds=x[None], logits_for="none", return_hidden=True)
    out = [hidden[0, -1]]
    for k in range(1, steps):
        x = head.inputs(tokens[start + 1 + k].view(1), out[-1][None])
        _, hidden = layer(None, cache, cache.length, embeds=x[None], logits_for="none", return_hidden=True)
        out.append(hidden[0, -1])
    return out


def test_eagle_training_passes_compute_what_drafting_computes(target):
    """Pass s at pair q of the training-time test equals drafting step s + 1 of a chain from q - s:
    the same inputs (its own predicted features) and the same context (real pairs up to the
    chain's start, then the chain), for a left-padded row too."""
    head = make_head("eagle", target)
    gen = torch.Generator().manual_seed(7)
    dim, steps = target.model.args.dim, 3
    rows = []
    for length in (20, 13):
        rows.append(Example(torch.randint(3, 200, (length,), generator=gen), torch.randn(length, dim, generator=gen),
                            answer_start=4))
    tokens, feats, pad, _ = train_module.pad_batch(rows, "cpu")
    with torch.inference_mode():
        passes = train_module.eagle_passes(head, tokens, feats[:, :-1], pad, steps)
        for b, row in enumerate(rows):
            p0 = int(pad[b])
            for start in range(0, len(row.tokens) - steps - 1):
                expected = eagle_chain_hidden(head, row.tokens, row.features, start, steps)
                for s in range(steps):
                    got = passes[s][b, p0 + start + s]
                    assert torch.allclose(got, expected[s], atol=1e-4), (b, start, s)


def test_eagle_unrolled_training_runs_every_pass(target, examples):
    head = make_head("eagle", target)
    calls = []
    original = head.inputs
    head.inputs = lambda *a: calls.append(1) or original(*a)
    train(head, examples[:4], TrainConfig(epochs=1, batch_size=4, unroll_steps=4), checkpoint=None)
    assert len(calls) == 4  # one batch, four passes
    head.inputs = original
