"""Trained speculators: head shapes, loading, a training run that lowers its loss, EAGLE's
cache bookkeeping, and output equality with target-only decoding on tiny random models."""

import json
from pathlib import Path

import pytest
import torch

from models.common.errors import UserError
from models.common.metrics import summarize
from models.llama.weights import load_model
from models.speculative.generator import Generator
from models.speculative.proposers.eagle import EagleProposer
from models.speculative.proposers.multi_projection import MultiProjectionProposer
from models.speculative.proposers.draft_model import DraftModelProposer
from models.speculative.tree import TreeSpec
from models.speculative.speculators import corpus, data, heads
from models.speculative.speculators import train as train_module
from models.speculative.speculators.data import Example
from models.speculative.speculators.dataset import DataFolder, load_chunk
from models.speculative.speculators.train import TrainConfig, train

TARGET = "random:tiny-llama:41"


@pytest.fixture(scope="module")
def target():
    return load_model(TARGET)


@pytest.fixture(scope="module")
def prompts(target):
    return [target.tokenizer.encode(p, chat=True) for p in corpus.authored_prompts(24, seed=3)]


@pytest.fixture(scope="module")
def decoded(target, prompts):
    generator = Generator(target.model, max_seq_len=256, eos_token_ids=target.tokenizer.eos_token_ids,
                          record_hidden=True)
    return data.answer_prompts(generator, prompts, 24, rows=8)


@pytest.fixture(scope="module")
def answers(decoded):
    return [r.tokens for r in decoded]


@pytest.fixture(scope="module")
def examples(prompts, decoded):
    return data.examples_from(prompts, decoded)


def make_head(kind, target, vocab=None, n_heads=3):
    model = target.model
    vocab = torch.arange(model.args.vocab_size) if vocab is None else vocab
    config = heads.SpeculatorConfig(kind=kind, target=TARGET, dim=model.args.dim, vocab_size=model.args.vocab_size,
                                    draft_vocab_size=vocab.numel(), n_heads=n_heads, n_blocks=2)
    head = heads.build(config, model, vocab)
    heads.initialise(head, model)
    if kind == "multi_projection":  # not the identity start, so the heads differ from the LM head
        gen = torch.Generator().manual_seed(0)
        head.weight.data.copy_(0.05 * torch.randn(head.weight.shape, generator=gen))
    return head


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


def test_multi_projection_shapes_and_identity_init(target):
    vocab = torch.tensor([2, 5, 7, 100, 200])
    head = make_head("multi_projection", target, vocab)
    h = torch.randn(6, target.model.args.dim)
    assert head.features(h).shape == (6, 3, target.model.args.dim)
    assert head.logits(h).shape == (6, 3, 5)
    head.weight.data.zero_()
    head.bias.data.zero_()  # zero blocks are the identity: every head sees the LM head's logits
    expected = h @ target.model.output[vocab].T
    torch.testing.assert_close(head.logits(h), expected[:, None, :].expand(6, 3, 5))


def test_eagle_shapes_and_shared_tensors(target):
    head = make_head("eagle", target)
    assert head.layer.tok_embeddings is target.model.tok_embeddings  # shared, not copied
    assert len(head.layer.layers) == 1
    x = head.inputs(torch.tensor([3, 4]), torch.randn(2, target.model.args.dim))
    assert x.shape == (2, target.model.args.dim)


@pytest.mark.parametrize("kind", heads.KINDS)
def test_save_load_roundtrip_in_bf16(kind, target, tmp_path):
    head = make_head(kind, target, torch.arange(0, 300, 2))
    heads.save(head, tmp_path / kind)
    assert json.loads((tmp_path / kind / heads.CONFIG_FILE).read_text())["kind"] == kind
    loaded = heads.load(tmp_path / kind, target.model)
    for (name, a), (_, b) in zip(heads._trained_state(head).items(), heads._trained_state(loaded).items()):
        expected = a if name == "draft_vocab" else a.to(torch.bfloat16).float()
        assert torch.equal(b, expected), name


def test_load_refuses_bad_folders(target, tmp_path):
    with pytest.raises(UserError, match="no speculator_config.json"):
        heads.load(tmp_path, target.model)
    (tmp_path / heads.CONFIG_FILE).write_text(json.dumps({"kind": "medusa9"}))
    with pytest.raises(UserError, match="unknown speculator kind 'medusa9'"):
        heads.load(tmp_path, target.model)
    other = heads.SpeculatorConfig(kind="eagle", target="x", dim=999, vocab_size=320, draft_vocab_size=3)
    with pytest.raises(UserError, match="does not fit this target"):
        heads.build(other, target.model, torch.arange(3))


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


def eagle_from_scratch(head, tokens, features, k):
    """Reference drafts: all (token after p, feature p) pairs through a fresh cache, then chain."""
    layer, vocab = head.layer, head.draft_vocab
    cache = layer.new_cache(len(tokens) + k + 1)
    x = head.inputs(torch.tensor(tokens[1:]), features)
    logits, hidden = layer(None, cache, 0, embeds=x[None], logits_for="last", return_hidden=True)
    drafts = [vocab[logits[0, -1].argmax()]]
    for _ in range(k - 1):
        x = head.inputs(drafts[-1].view(1), hidden[0, -1:])
        logits, hidden = layer(None, cache, cache.length, embeds=x[None], logits_for="last", return_hidden=True)
        drafts.append(vocab[logits[0, -1].argmax()])
    return torch.stack(drafts).tolist()


def test_eagle_incremental_cache_equals_recomputing_from_scratch(target):
    """After every verification the proposer keeps only real-feature pairs and re-reads the
    accepted ones: its drafts equal a from-scratch pass over all real features so far."""
    head = make_head("eagle", target)
    proposer = EagleProposer(head)
    features_so_far: list[torch.Tensor] = []
    checked = []

    class Recording(EagleProposer):
        def propose(self, ctx, spec):
            features_so_far.append(ctx.target_hidden.clone())
            drafts = proposer.propose(ctx, spec)
            feats = torch.cat(features_so_far)
            checked.append(drafts.tokens.tolist() == eagle_from_scratch(head, ctx.tokens, feats, spec.depth))
            return drafts

        def start(self, prompt, cache):
            proposer.start(prompt, cache)

    recording = Recording(head)
    gen = Generator(target.model, recording, n_draft_tokens=3, max_seq_len=200,
                    eos_token_ids=target.tokenizer.eos_token_ids)
    gen.generate(target.tokenizer.encode("abc abc abc abd"), 30)
    assert len(checked) > 3 and all(checked)


@pytest.mark.parametrize("kind", heads.KINDS)
def test_speculators_equal_target_only(kind, target, examples):
    """Lossless whatever the heads say: trained briefly (some acceptance), for every chain
    length k and for trees (EAGLE-2 dynamic tree, Medusa cartesian tree)."""
    vocab = data.draft_vocabulary(examples, 250, target.tokenizer.eos_token_ids)
    head = make_head(kind, target, vocab, n_heads=8)
    train(head, examples, TrainConfig(epochs=4, batch_size=4, lr=3e-3, warmup_steps=3))
    eos = target.tokenizer.eos_token_ids
    prompts = [target.tokenizer.encode(p, chat=True) for p in corpus.authored_prompts(30, seed=3)[-4:]]
    baseline = Generator(target.model, None, max_seq_len=300, eos_token_ids=eos)
    expected = [baseline.generate(p, 40).tokens for p in prompts]
    accepted = 0
    shapes = [TreeSpec(1, k, k) for k in [1, 2, 3, 5, 8]] + [TreeSpec(2, 3, 6), TreeSpec(4, 5, 24), TreeSpec(3, 8, 40)]
    for shape in shapes:
        proposer = EagleProposer(head) if kind == "eagle" else MultiProjectionProposer(head)
        spec = Generator(target.model, proposer, tree=shape, max_seq_len=300, eos_token_ids=eos)
        results = [spec.generate(p, 40) for p in prompts]
        assert [r.tokens for r in results] == expected, f"{shape}"
        accepted += summarize([r.stats for r in results])["accepted_tokens"]
        if shape.topk > 1:
            assert any(it.proposed > it.depth for r in results for it in r.stats.iterations)  # really trees
    assert accepted > 0  # the drafts were not all rejected: acceptance paths were exercised


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
    from models.speculative.speculators.evaluate import _step_logits
    head = make_head(kind, target)
    gen = torch.Generator().manual_seed(5)
    feats = torch.randn(length, target.model.args.dim, generator=gen).half()
    tokens = torch.randint(3, 200, (length,), generator=gen)
    for p in range(answer_start - 2, length - 2):  # position p drafts the token at p + 2
        example = Example(tokens.clone(), feats, answer_start)
        b_tokens, b_feats, pad, _ = train_module._pad_batch([example], "cpu")
        with torch.inference_mode():
            logits = next(_step_logits(head, b_tokens, b_feats, pad, 1))
        tokens[p + 2] = head.draft_vocab[logits[0, p].argmax()]
    return head, Example(tokens, feats, answer_start)


@pytest.mark.parametrize("kind", heads.KINDS)
def test_accuracy_scores_each_step_at_the_right_position(kind, target):
    from models.speculative.speculators.evaluate import accuracy
    head, example = _self_consistent(kind, target)
    scored = accuracy(head, [example], steps=2, topk=3)
    assert scored["top1"][0] == 1.0 and scored["top3"][0] == 1.0
    assert scored["positions"] == [len(example.tokens) - example.answer_start - 1,
                                   len(example.tokens) - example.answer_start - 2]
    shifted = Example(torch.roll(example.tokens, 1), example.features, example.answer_start)
    assert accuracy(head, [shifted], steps=1)["top1"][0] < 0.5  # one position off scores (almost) nothing


def test_top_probability_is_the_targets_softmax_maximum_in_any_chunking():
    from models.speculative.speculators.evaluate import top_probability
    gen = torch.Generator().manual_seed(3)
    hidden, lm_head = torch.randn(10, 8, generator=gen), 3 * torch.randn(50, 8, generator=gen)
    want = torch.softmax(hidden @ lm_head.T, dim=-1).max(-1).values
    for rows in (1, 4, 4096):
        assert torch.allclose(top_probability(hidden, lm_head, rows=rows), want, atol=1e-6)


@pytest.mark.parametrize("kind", heads.KINDS)
def test_step_one_splits_by_the_targets_certainty_at_the_position_that_chose_the_token(kind, target):
    """Two-row LM head (w, 0): the target's top-1 probability at position q is sigmoid(|h_q . w|);
    the token at p + 2 was chosen at q = p + 1, and each bin must count exactly those positions."""
    from models.speculative.speculators.evaluate import CERTAINTY_EDGES, accuracy, certainty_bins
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
    from models.speculative.speculators.evaluate import seen_before
    tokens = torch.tensor([[0, 0, 5, 6, 5, 7], [5, 6, 7, 6, 8, 5]])
    pad = torch.tensor([2, 0])  # row 0's two leading zeros are padding: they are never "seen"
    assert seen_before(tokens, pad).tolist() == [[False, False, False, False, True, False],
                                                 [False, False, False, True, False, True]]


@pytest.mark.parametrize("kind", heads.KINDS)
def test_step_one_splits_into_copied_and_new_tokens_and_counts_those_outside_the_draft_vocabulary(kind, target):
    from models.speculative.speculators.evaluate import accuracy, seen_before
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
    tokens, feats, pad, _ = train_module._pad_batch(rows, "cpu")
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
