"""Trained speculators at inference: head shapes, saving and loading, EAGLE's cache bookkeeping,
and output equality with target-only decoding on tiny random models. Their training and scoring
are tested in models/training/tests/test_speculator_training.py, which shares these fixtures."""

import json

import pytest
import torch

from models.common.errors import UserError
from models.common.metrics import summarize
from models.llama.weights import load_model
from models.speculative.generator import Generator
from models.speculative.proposers.eagle import EagleProposer
from models.speculative.proposers.multi_projection import MultiProjectionProposer
from models.speculative.speculators import heads
from models.speculative.tree import TreeSpec
from models.training import corpus, data
from models.training.train import TrainConfig, train

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
