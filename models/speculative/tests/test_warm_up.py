"""Engine.warm_up leaves no trace: after it, a run drafts, accepts and decodes exactly as the same
run on a fresh engine (the demo warms up on prompt 0, then times prompt 0 among the others, so
anything the warm-up taught would help a timed run). Suffix decoding keeps a corpus of earlier
sequences, shared by every row's proposer of a batch (and by --method multi's member); the auto
tree budget learns acceptance and timing across sequences."""

from pathlib import Path

import pytest

from models.speculative.engine import Engine, RunConfig
from models.speculative.generator import GenerationResult

MODEL = "random:tiny-llama"
# the byte tokenizer's ids (BOS = 1); prompt 0 is the warm-up's
PROMPTS = [
    [1, *(b + 3 for b in b"the cat sat on the mat. the cat")],
    [1, *(b + 3 for b in b"abc abc abc abc ab")],
    [1, *(b + 3 for b in b"the cat sat on the")],
]
CONFIGS = {
    "suffix": dict(method="suffix", n_draft_tokens=4, tree_topk=2, tree_budget=8),
    "multi": dict(method="multi", proposers="suffix,prompt_lookup", tree_topk=2, tree_budget=8),
    "suffix-batch": dict(method="suffix", n_draft_tokens=4, batch_size=3, batch_drafts="all"),
}


@pytest.fixture(autouse=True)
def own_cache_dir(tmp_path_factory, monkeypatch) -> Path:
    """Verify-cost calibrations (auto budgets, batch drafts) go to a folder of this module's own."""
    folder = tmp_path_factory.getbasetemp() / "warm_up_cache"
    monkeypatch.setenv("SPECDEC_CACHE_DIR", str(folder))
    return folder


def engine(**kw) -> Engine:
    return Engine(RunConfig(model=MODEL, instruct=False, max_generated_tokens=24, max_seq_len=128, **kw))


def decode(e: Engine) -> list[GenerationResult]:
    """Every prompt through the engine's batching (one at a time without a batch)."""
    if e.config.rows > 1:
        return e.run_batch(PROMPTS).results
    return [e.run(p, prompt_index=i) for i, p in enumerate(PROMPTS)]


def counters(results: list[GenerationResult]) -> list[tuple]:
    """What each iteration drafted, accepted and emitted (its times left out)."""
    return [(i, it.proposed, it.accepted, it.emitted, it.depth, it.source)
            for i, r in enumerate(results) for it in r.stats.iterations]


@pytest.mark.parametrize("name", CONFIGS)
def test_a_warm_up_leaves_no_trace_in_the_runs_after_it(name):
    warmed = engine(**CONFIGS[name])
    warmed.warm_up(PROMPTS[0])
    got, expected = decode(warmed), decode(engine(**CONFIGS[name]))
    assert [r.tokens for r in got] == [r.tokens for r in expected]
    assert counters(got) == counters(expected)
    assert sum(it.accepted for r in expected for it in r.stats.iterations) > 0  # the suffix drafts pay


def budget_state(e: Engine) -> dict:
    """Everything the auto budget has learnt (its measured cost curve aside)."""
    state = {k: v for k, v in vars(e.generator.auto_budget).items() if k != "cost"}
    return {k: list(v) if hasattr(v, "__iter__") else v for k, v in state.items()}


@pytest.mark.parametrize("method", ["self_draft", "suffix"])
def test_a_warm_up_leaves_no_trace_in_the_auto_budget(method):
    """Its acceptance counts, its iterations (the first ones draft the largest tree) and the
    warm-up's slow first calls (kernel loading) in its timings would steer the timed runs."""
    kw = dict(method=method, tree_topk=2, tree_budget="auto", draft_layers=2 if method == "self_draft" else None)
    warmed = engine(**kw)
    warmed.warm_up(PROMPTS[0])
    assert budget_state(warmed) == budget_state(engine(**kw))
