"""The speculators shipped for the default model, measured on held-out prompts: prompts that are
not in the training corpus, written for this test. Their output must equal target-only decoding,
and their mean accepted tokens must stay above a floor that an untrained head (about 1.0) misses.

Floors sit below what the shipped weights measure here (multi_projection 1.2x, eagle 1.4x on
Spec-Bench; see docs/trained_speculators.md), so a rounding difference on another CPU does not trip them, while a broken
load, a wrong draft-to-target map or a stale feature would.
"""

import json

import pytest

from models.common.device import open_device
from models.common.metrics import summarize
from models.common.prompts import Prompt
from models.speculative.engine import Engine, RunConfig
from models.training import corpus, data, followups
from models.training.contamination import HELD_OUT_PROMPTS, NGRAM, REPO, Contamination, evaluation_texts

HELD_OUT = json.loads(HELD_OUT_PROMPTS.read_text())
MAX_NEW_TOKENS = 48
FLOORS = {"multi_projection": (4, 1.08), "eagle": (3, 1.15)}  # method: (k, minimum mean accepted tokens)


def training_prompts() -> list[str]:
    """Every prompt the speculators' data answers: the authored corpus the shipped weights used
    (train_speculator.py's old defaults) and, where it is committed, the new data's prompts (both
    mixes' folders) and
    the requests the target answered to write some of them, and every follow-up request (the
    first turns and answers they follow are checked as each follow-up chunk is made)."""
    prompts = corpus.authored_prompts(1800, seed=0)
    prompts += [r.format(language=language) for r in followups.REQUESTS for language in corpus.LANGUAGES]
    for data_dir in sorted((REPO / "data" / "speculator").glob("smollm2-135m*")):  # the evals mix's folder too
        if (data_dir / "prompts.json.gz").exists():
            prompts += data.load_json(data_dir / "prompts.json.gz")["prompts"]
    return prompts


def test_no_training_prompt_shares_a_long_ngram_with_an_evaluation_prompt():
    evaluation, found = evaluation_texts()
    assert any(f.name == "held_out_prompts.json" for f in found) and len(evaluation) >= len(HELD_OUT)
    shared = Contamination(evaluation).clean(training_prompts())[1]
    assert not shared, f"{len(shared)} training prompts share a {NGRAM}-word run with an evaluation prompt"


@pytest.mark.default_model
@pytest.mark.parametrize("method", list(FLOORS))
def test_shipped_speculator_accepts_on_held_out_prompts(default_model, method):
    k, floor = FLOORS[method]
    device = open_device("cpu", "float32")
    engine = Engine(RunConfig(method=method, n_draft_tokens=k, max_generated_tokens=MAX_NEW_TOKENS), device)
    encoded = engine.encode([Prompt(p) for p in HELD_OUT])
    stats = []
    for ids in encoded:
        spec, base = engine.run(ids), engine.run(ids, baseline=True)
        assert spec.tokens == base.tokens
        stats.append(spec.stats)
    tau = summarize(stats)["mean_accepted_tokens"]
    assert tau >= floor, f"{method}: mean accepted tokens {tau:.3f} < {floor} on held-out prompts"
