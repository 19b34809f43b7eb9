"""An EAGLE head reading several target layers (EAGLE-3's low/mid/high features): the target
returns each layer's output through the final norm beside the final state, a head whose fusion
passes the final state alone drafts exactly as the single-layer head, training learns the other
layers' columns, and decoding stays target-only greedy decoding."""

import pytest
import torch

from models.common.errors import UserError
from models.backends.interface import RowBlock
from models.speculative.generator import Generator
from models.speculative.proposers.eagle import EagleProposer
from models.speculative.proposers.multi import MultiProposer
from models.speculative.proposers.multi_projection import MultiProjectionProposer
from models.speculative.speculators import heads
# the tiny target, its prompts and their greedy answers: the same module fixtures as test_speculators
from models.speculative.tests.test_speculators import TARGET, answers, decoded, make_head, prompts, target  # noqa: F401
from models.speculative.tree import TreeSpec
from models.training import data
from models.training.train import TrainConfig, train

LAYERS = (0, 2)  # of the tiny target's 4


def test_hidden_layers_are_each_layers_output_through_the_final_norm(target):
    model, dim = target.model, target.model.args.dim
    tokens = torch.tensor([target.tokenizer.encode("the cat sat on the mat")])
    logits, final = model(tokens, model.new_cache(64), 0, return_hidden=True)
    wide_logits, wide = model(tokens, model.new_cache(64), 0, return_hidden=True, hidden_layers=LAYERS)
    assert wide.shape[-1] == 3 * dim and torch.equal(wide_logits, logits) and torch.equal(wide[..., -dim:], final)
    for i, layer in enumerate(LAYERS):  # layer i's output is what the target cut to i + 1 layers returns
        _, cut = model.truncated(layer + 1)(tokens, model.truncated(layer + 1).new_cache(64), 0, return_hidden=True)
        torch.testing.assert_close(wide[..., i * dim : (i + 1) * dim], cut, rtol=0, atol=1e-6)
    # the batched path returns the same rows
    cache = model.new_cache(64, batch_size=2)
    _, rows = model.forward_rows(tokens[0], [RowBlock(cache.row(1), tokens.shape[1])], cache, return_hidden=True,
                                 hidden_layers=LAYERS)
    torch.testing.assert_close(rows, wide[0], rtol=0, atol=1e-5)
    for bad in [(3,), (2, 0), (1, 1), (-1,)]:  # the last layer's output is the final state itself
        with pytest.raises(ValueError, match="hidden_layers"):
            model(tokens, model.new_cache(64), 0, return_hidden=True, hidden_layers=bad)


def decode(target, proposer, prompts, shape=TreeSpec(2, 3, 6)):
    generator = Generator(target.model, proposer, tree=shape, max_seq_len=300,
                          eos_token_ids=target.tokenizer.eos_token_ids)
    return [generator.generate(p, 30) for p in prompts]


def test_a_head_reading_more_layers_drafts_as_before_until_trained(target, prompts):
    head = make_head("eagle", target)
    twin = heads.with_feature_layers(head, LAYERS, target.model)
    assert twin.config.feature_layers == list(LAYERS) and twin.fuse_weight.shape == (64, 3 * 64)
    widths = []

    class Recording(EagleProposer):
        def propose(self, ctx, spec):
            widths.append(ctx.target_hidden.shape[-1])
            return super().propose(ctx, spec)

    plain, wide = decode(target, EagleProposer(head), prompts[:4]), decode(target, Recording(twin), prompts[:4])
    assert set(widths) == {3 * 64}  # the generator asked the target for the head's layers
    assert [r.tokens for r in wide] == [r.tokens for r in plain]
    assert [[it.accepted for it in r.stats.iterations] for r in wide] == \
        [[it.accepted for it in r.stats.iterations] for r in plain]  # the very same drafts
    with pytest.raises(UserError, match="already reads layers"):
        heads.with_feature_layers(twin, (1,), target.model)


def test_a_head_reading_more_layers_learns_them_round_trips_and_stays_lossless(target, prompts, answers, tmp_path):
    examples = data.record_features(target.model, prompts, answers, layers=LAYERS)
    final_only = data.record_features(target.model, prompts, answers)
    assert all(torch.equal(e.features[:, -64:], f.features) for e, f in zip(examples, final_only))
    vocab = data.draft_vocabulary(examples, 200, target.tokenizer.eos_token_ids)
    config = heads.SpeculatorConfig(kind="eagle", target=TARGET, dim=64, vocab_size=target.model.args.vocab_size,
                                    draft_vocab_size=vocab.numel(), feature_layers=list(LAYERS))
    head = heads.build(config, target.model, vocab)
    heads.initialise(head, target.model)
    assert torch.equal(head.fuse_weight[:, :128], torch.zeros(64, 128))  # starts as the final state alone
    losses = train(head, examples, TrainConfig(epochs=6, batch_size=4, lr=1e-2, warmup_steps=3))
    assert sum(losses[-3:]) < 0.8 * sum(losses[:3])
    assert head.fuse_weight[:, :128].abs().max() > 1e-3  # the other layers' columns were learnt
    heads.save(head, tmp_path / "wide")
    loaded = heads.load(tmp_path / "wide", target.model)
    assert loaded.config.feature_layers == list(LAYERS)
    torch.testing.assert_close(loaded.fuse_weight, head.fuse_weight.to(torch.bfloat16).float())
    expected = [r.tokens for r in decode(target, None, prompts[-4:], TreeSpec(1, 1, 1))]
    for shape in [TreeSpec(1, 4, 4), TreeSpec(3, 4, 12)]:
        assert [r.tokens for r in decode(target, EagleProposer(loaded), prompts[-4:], shape)] == expected
    # beside multi-projection heads, which read the final state's slice of the same hidden states
    multi = MultiProposer([EagleProposer(loaded), MultiProjectionProposer(make_head("multi_projection", target))])
    assert multi.hidden_layers == LAYERS
    assert [r.tokens for r in decode(target, multi, prompts[-4:], TreeSpec(2, 3, 8))] == expected


def test_layer_settings_that_cannot_work_are_refused(target):
    model = target.model
    base = dict(kind="eagle", target=TARGET, dim=64, vocab_size=model.args.vocab_size, draft_vocab_size=8)
    for layers, message in [([3], "from 0 to 2"), ([2, 1], "increasing"), ([1, 1], "increasing"), ([0], None)]:
        config = heads.SpeculatorConfig(**base, feature_layers=layers)
        if message is None:
            heads.build(config, model, torch.arange(8))
            continue
        with pytest.raises(UserError, match=message):
            heads.build(config, model, torch.arange(8))
    with pytest.raises(UserError, match="only an eagle head"):
        heads.build(heads.SpeculatorConfig(**{**base, "kind": "multi_projection"}, feature_layers=[0]), model,
                    torch.arange(8))
    one = heads.with_feature_layers(make_head("eagle", target), (0,), model)
    other = heads.with_feature_layers(make_head("eagle", target), (1,), model)
    with pytest.raises(UserError, match="read different target layers"):
        MultiProposer([EagleProposer(one), EagleProposer(other)])
    generator = Generator(model, EagleProposer(one), n_draft_tokens=2, max_seq_len=64, record_hidden=True)
    with pytest.raises(UserError, match="record what the proposer reads"):
        generator.generate(target.tokenizer.encode("abc"), 4)


def test_readers_of_the_final_state_take_its_slice_of_wider_hidden_states(target, prompts, answers):
    """Scoring, training losses and multi-projection drafting see the same numbers in wide hidden
    states as in the final state alone (a slice of the wrong layer would change them all)."""
    from models.speculative.proposers.base import ProposerContext
    from models.training import evaluate, train as train_module

    model = target.model
    narrow = data.record_features(model, prompts[:6], answers[:6])
    wide = data.record_features(model, prompts[:6], answers[:6], layers=LAYERS)
    head = make_head("eagle", target)
    twin = heads.with_feature_layers(head, LAYERS, model)
    multi = make_head("multi_projection", target)
    expected = evaluate.accuracy(head, narrow, target_lm_head=model.output)
    assert evaluate.accuracy(twin, wide, target_lm_head=model.output) == expected
    assert evaluate.accuracy(head, wide, target_lm_head=model.output) == expected
    assert evaluate.accuracy(multi, wide) == evaluate.accuracy(multi, narrow)
    t2d = train_module.target_to_draft(head.draft_vocab, model.args.vocab_size)
    config = TrainConfig(feature_noise=0.0, unroll_steps=3)
    loss = train_module.eagle_loss(head, narrow, t2d, config, torch.Generator())
    torch.testing.assert_close(train_module.eagle_loss(twin, wide, t2d, config, torch.Generator()), loss)
    assert torch.equal(train_module.multi_projection_loss(multi, wide, t2d),
                       train_module.multi_projection_loss(multi, narrow, t2d))
    proposer = MultiProjectionProposer(multi)
    trees = [proposer.propose(ProposerContext(tokens=[1, 2], target_cache=None, target_hidden=e.features.float()),
                              TreeSpec(2, 3, 6)) for e in (narrow[0], wide[0])]
    assert torch.equal(trees[0].tokens, trees[1].tokens) and trees[0].parents == trees[1].parents


def test_decoding_records_the_layers_asked_for_beside_any_proposer(target, prompts, answers):
    model = target.model
    generator = Generator(model, max_seq_len=256, eos_token_ids=target.tokenizer.eos_token_ids, record_hidden=True)
    generator.record_layers = LAYERS
    results = data.answer_prompts(generator, prompts[:6], 24, rows=3)  # batched, continuous
    assert [r.tokens for r in results] == answers[:6]
    rebuilt = data.record_features(model, prompts[:6], answers[:6], layers=LAYERS)
    for recorded, again in zip(data.examples_from(prompts[:6], results), rebuilt):
        assert recorded.features.shape[-1] == 3 * 64
        torch.testing.assert_close(recorded.features.float(), again.features.float(), atol=2e-3, rtol=2e-3)
    # a proposer of the final state alone drafts from its slice while the generator records wider states
    drafting = Generator(model, EagleProposer(make_head("eagle", target)), n_draft_tokens=3, max_seq_len=256,
                         eos_token_ids=target.tokenizer.eos_token_ids, record_hidden=True)
    drafting.record_layers = LAYERS
    result = drafting.generate(prompts[0], 24)
    assert result.tokens == answers[0] and result.hidden.shape[-1] == 3 * 64
