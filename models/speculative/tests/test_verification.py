import pytest
import torch

from models.speculative.verification import greedy_accept

V = 6


def logits_for(choices: list[int]) -> torch.Tensor:
    """Hand-built logits whose argmax at row i is choices[i] (with a runner-up to be sure)."""
    logits = torch.zeros(len(choices), V)
    for i, c in enumerate(choices):
        logits[i, c] = 2.0
        logits[i, (c + 1) % V] = 1.0
    return logits


def test_all_accepted_gives_bonus_token():
    acc = greedy_accept(torch.tensor([3, 1, 4]), logits_for([3, 1, 4, 5]))
    assert acc.n_accepted == 3
    assert acc.tokens == [3, 1, 4, 5]


def test_none_accepted_gives_the_correction():
    acc = greedy_accept(torch.tensor([2, 1, 4]), logits_for([3, 1, 4, 5]))
    assert acc.n_accepted == 0
    assert acc.tokens == [3]


def test_partial_prefix_stops_at_first_mismatch_even_if_later_ones_match():
    acc = greedy_accept(torch.tensor([3, 0, 4]), logits_for([3, 1, 4, 5]))
    assert acc.n_accepted == 1
    assert acc.tokens == [3, 1]


def test_no_drafts_is_a_plain_decode_step():
    acc = greedy_accept(torch.empty(0, dtype=torch.int64), logits_for([2]))
    assert acc.n_accepted == 0
    assert acc.tokens == [2]


def test_rows_must_be_k_plus_one():
    with pytest.raises(ValueError, match="need 3 rows"):
        greedy_accept(torch.tensor([1, 2]), logits_for([1, 2]))
