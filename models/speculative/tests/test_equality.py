"""Speculative output equals target-only greedy output: many random tiny target/draft pairs."""

import itertools

import pytest

from models.common.metrics import summarize
from models.common.prompts import Prompt
from models.speculative.engine import Engine, RunConfig

PROMPTS = [
    Prompt("the cat sat on the mat. the cat sat on the"),
    Prompt("abc abc abc ab", context="0123456789 0123456789 01234"),
    Prompt("zq"),
]
CASES = [
    # (target, method, draft_model, draft_layers, lowest acceptance rate the case must reach at every k)
    ("random:tiny-llama:1", "draft_model", "random:tiny-llama:2", None, 0.0),  # unrelated draft: the reject path
    ("random:tiny-llama:1", "draft_model", "random:tiny-llama:1", None, 0.99),  # draft = target: the accept path
    ("random:tiny-llama:1", "draft_model", "random:tiny-llama:1", 2, 0.0),  # its own first 2 layers
    ("random:tiny-llama:1", "draft_model", "random:tiny-llama:1", 3, 0.05),  # 3 of its 4 layers: partial
    ("random:tiny-qwen2:3", "draft_model", "random:tiny-qwen2:3", 1, 0.0),
    ("random:tiny-mistral:4", "draft_model", "random:tiny-mistral:5", None, 0.0),
    ("random:tiny-llama-untied:6", "self_draft", None, 1, 0.0),
    ("random:tiny-llama:7", "self_draft", None, 3, 0.05),
    ("random:tiny-qwen2:8", "self_draft", None, 2, 0.0),
    ("random:tiny-llama:9", "prompt_lookup", None, None, 0.0),
    ("random:tiny-mistral:10", "prompt_lookup", None, None, 0.0),
    # Gemma-3's layout: local layers (window 24, passed within the 40 tokens) and global ones
    ("random:tiny-gemma3:11", "self_draft", None, 2, 0.0),
    ("random:tiny-gemma3:12", "draft_model", "random:tiny-gemma3:12", None, 0.99),
    ("random:tiny-gemma3:13", "prompt_lookup", None, None, 0.0),
]
KS = [1, 2, 3, 5, 8]


def outputs(config: RunConfig):
    engine = Engine(config)
    encoded = engine.encode(PROMPTS)
    return [engine.run(ids) for ids in encoded]


@pytest.mark.parametrize("target, method, draft_model, draft_layers, min_acceptance", CASES)
def test_speculative_equals_target_only_for_every_k(target, method, draft_model, draft_layers, min_acceptance):
    base = RunConfig(model=target, method="target", max_generated_tokens=40, max_seq_len=160, instruct=False)
    expected = [r.tokens for r in outputs(base)]
    for k in KS:
        config = RunConfig(
            model=target, method=method, draft_model=draft_model, draft_layers=draft_layers,
            n_draft_tokens=k, max_generated_tokens=40, max_seq_len=160, instruct=False,
        )
        got = outputs(config)
        assert [r.tokens for r in got] == expected, f"k={k}"
        s = summarize([r.stats for r in got])
        assert s["target_calls"] <= s["generated_tokens"] - len(PROMPTS)
        assert s["acceptance_rate"] >= min_acceptance, f"k={k}: acceptance {s['acceptance_rate']:.3f}"


@pytest.mark.parametrize("k, max_new", [(1, 41), (4, 41), (7, 41)])
def test_own_draft_accepts_everything(k, max_new):
    """The target as its own draft: every draft accepted, k + 1 tokens per target call (the
    sanity check QEfficient runs). Exact in fp32 because decode and verify share bits."""
    config = RunConfig(
        model="random:tiny-llama:12", method="draft_model", n_draft_tokens=k,
        max_generated_tokens=max_new, max_seq_len=160, instruct=False,
    )
    results = outputs(config)
    s = summarize([r.stats for r in results])
    assert s["acceptance_rate"] == 1.0
    calls = sum(-(-(len(r.tokens) - 1) // (k + 1)) for r in results)  # ceil per prompt
    assert s["target_calls"] == calls
    if all(len(r.tokens) == max_new for r in results) and (max_new - 1) % (k + 1) == 0:
        assert s["mean_accepted_tokens"] == k + 1


def test_random_models_vary_their_outputs():
    """Guard against a vacuous equality test: different seeds give different outputs."""
    outs = {
        seed: [r.tokens for r in outputs(RunConfig(model=f"random:tiny-llama:{seed}", method="target",
                                                   max_generated_tokens=20, max_seq_len=160, instruct=False))]
        for seed in (1, 2)
    }
    assert outs[1] != outs[2]
    assert len({tuple(t) for t in itertools.chain(*outs.values())}) > 2


@pytest.mark.parametrize("preset, noise", [("tiny-llama", 0.005), ("tiny-llama", 0.02), ("tiny-qwen2", 0.01),
                                           ("tiny-mistral", 0.01), ("tiny-llama-untied", 0.01)])
def test_perturbed_own_draft_partial_acceptance(preset, noise):
    """A draft that is the target plus noise agrees often but not always: every accepted
    length from 0 to k occurs, and the output still equals target-only decoding."""
    import copy

    import torch

    from models.llama.weights import load_model
    from models.speculative.generator import Generator
    from models.speculative.proposers.draft_model import DraftModelProposer

    loaded = load_model(f"random:{preset}:21")
    target = loaded.model
    draft = copy.deepcopy(target)
    gen = torch.Generator().manual_seed(1)
    for p in draft.parameters():
        p.data.add_(noise * p.data.std() * torch.randn(p.shape, generator=gen))
    prompts = [loaded.tokenizer.encode(p.text) for p in PROMPTS]
    eos = loaded.tokenizer.eos_token_ids
    baseline = Generator(target, None, max_seq_len=200, eos_token_ids=eos)
    expected = [baseline.generate(p, 60).tokens for p in prompts]
    seen = set()
    for k in KS:
        proposer = DraftModelProposer(draft, 200, target_vocab_size=target.args.vocab_size)
        spec = Generator(target, proposer, n_draft_tokens=k, max_seq_len=200, eos_token_ids=eos)
        results = [spec.generate(p, 60) for p in prompts]
        assert [r.tokens for r in results] == expected, f"k={k}"
        seen |= {(k, it.accepted) for r in results for it in r.stats.iterations}
        rate = summarize([r.stats for r in results])["acceptance_rate"]
        assert 0.05 < rate < 1.0, f"k={k}: acceptance {rate:.2f} does not exercise partial acceptance"
    assert {a for kk, a in seen if kk == 3} >= {0, 1, 2, 3}


@pytest.mark.parametrize("method, extra", [("self_draft", {"draft_layers": 2}), ("prompt_lookup", {})])
def test_chunked_prefill_gives_the_same_output(method, extra):
    """--prefill_seq_len: the prompt in chunks (fixed shapes for traces) changes nothing."""
    common = dict(model="random:tiny-qwen2:13", max_generated_tokens=30, max_seq_len=160, instruct=False)
    whole = [r.tokens for r in outputs(RunConfig(method="target", **common))]
    for chunk in (1, 5, 16):
        got = outputs(RunConfig(method=method, n_draft_tokens=3, prefill_seq_len=chunk, **common, **extra))
        assert [r.tokens for r in got] == whole, f"chunk={chunk}"
