"""Tie-aware comparison: exact in fp32; in bf16 a divergence only at a near-tie of the target."""

import torch

from models.common.correctness import HALF_PRECISION_TIE_TOLERANCE, compare, first_divergence, top2_margin
from models.llama.weights import load_model


def test_first_divergence():
    assert first_divergence([1, 2, 3], [1, 2, 3]) is None
    assert first_divergence([1, 2, 3], [1, 5, 3]) == 1
    assert first_divergence([1, 2, 3], [1, 2]) == 2


def test_fp32_allows_no_divergence_at_all():
    c = compare([1, 2, 3], [1, 2, 4], exact=True, margin_at=lambda prefix: 0.0)
    assert not c.ok and c.diverged_at == 2


def test_near_tie_built_on_purpose_is_allowed_in_bf16_and_a_clear_choice_is_not():
    """A target whose LM head has two rows a hair apart: its top-2 margin is tiny exactly there."""
    loaded = load_model("random:tiny-llama:51")
    model = loaded.model

    def margin_at(prompt, prefix=()):
        with torch.inference_mode():
            out = model(torch.tensor([list(prompt) + list(prefix)]), model.new_cache(32), 0, logits_for="last")
        return top2_margin(out[0, -1]), torch.topk(out[0, -1], 2).indices.tolist()

    # a prompt where the target's choice is clear, to contrast with the tie built below
    prompt = max((loaded.tokenizer.encode(t) for t in ["a", "near tie", "xyz", "hello", "12"]),
                 key=lambda p: margin_at(p)[0])
    clear_margin, (best, runner_up) = margin_at(prompt)
    assert clear_margin > HALF_PRECISION_TIE_TOLERANCE
    clear = compare([best], [runner_up], exact=False, margin_at=lambda prefix: margin_at(prompt, prefix)[0])
    assert not clear.ok and "NOT a near-tie" in clear.describe()

    model.output.data[runner_up] = model.output.data[best] * (1 - 1e-4)  # build the near-tie
    tie = compare([best, 7], [runner_up, 9], exact=False, margin_at=lambda prefix: margin_at(prompt, prefix)[0])
    assert tie.diverged_at == 0 and tie.margin < HALF_PRECISION_TIE_TOLERANCE and tie.ok
    assert "near-tie, allowed" in tie.describe()
