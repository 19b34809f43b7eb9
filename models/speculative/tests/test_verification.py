"""Acceptance on hand-built logits, over chains and trees; the rule object a run picks once."""

import pytest
import torch

from models.speculative.sampling import SamplingParams, SequenceRng, target_logprobs, target_probs
from models.speculative.tree import DraftTree
from models.speculative.verification import (
    Coupled, Greedy, Rejection, coupled_accept, coupled_noise, greedy_accept, rejection_accept, rule_for,
)

V = 8


def logits_for(choices: list[int]) -> torch.Tensor:
    """Hand-built logits whose argmax at row i is choices[i] (with a runner-up to be sure)."""
    logits = torch.zeros(len(choices), V)
    for i, c in enumerate(choices):
        logits[i, c] = 2.0
        logits[i, (c + 1) % V] = 1.0
    return logits


def chain(tokens):
    return DraftTree.chain(torch.tensor(tokens, dtype=torch.int64))


def test_all_accepted_gives_bonus_token():
    acc = greedy_accept(chain([3, 1, 4]), logits_for([3, 1, 4, 5]))
    assert acc.n_accepted == 3
    assert acc.path == [0, 1, 2]
    assert acc.tokens == [3, 1, 4, 5]


def test_none_accepted_gives_the_correction():
    acc = greedy_accept(chain([2, 1, 4]), logits_for([3, 1, 4, 5]))
    assert acc.n_accepted == 0
    assert acc.tokens == [3]


def test_partial_prefix_stops_at_first_mismatch_even_if_later_ones_match():
    acc = greedy_accept(chain([3, 0, 4]), logits_for([3, 1, 4, 5]))
    assert acc.n_accepted == 1
    assert acc.tokens == [3, 1]


def test_no_drafts_is_a_plain_decode_step():
    acc = greedy_accept(DraftTree.empty(), logits_for([2]))
    assert acc.n_accepted == 0
    assert acc.tokens == [2]


def test_rows_must_be_nodes_plus_one():
    with pytest.raises(ValueError, match="need 3 rows"):
        greedy_accept(chain([1, 2]), logits_for([1, 2]))


# A tree of 7 nodes:        root
#                        /   |    \
#                    0:3   1:5    2:6
#                   /   \          |
#                 3:1   4:2       5:7
#                  |
#                 6:4
TREE = DraftTree(torch.tensor([3, 5, 6, 1, 2, 7, 4]), (-1, -1, -1, 0, 0, 2, 3))


def test_deepest_branch_is_accepted():
    # block rows: root, then nodes 0..6; the target says 3 after root, 1 after node 0, 4 after node 3,
    # 0 after node 6 (the bonus); rows of nodes off the path do not matter
    choices = [3, 1, 0, 4, 0, 0, 0, 0]
    choices[0 + 1], choices[3 + 1], choices[6 + 1] = 1, 4, 0
    acc = greedy_accept(TREE, logits_for(choices))
    assert acc.path == [0, 3, 6]
    assert acc.tokens == [3, 1, 4, 0]


def test_a_later_sibling_branch_is_accepted():
    choices = [6, 0, 0, 7, 0, 0, 2, 0]  # root -> 6 (node 2, row 3) -> 7 (node 5, row 6) -> bonus 2
    acc = greedy_accept(TREE, logits_for(choices))
    assert acc.path == [2, 5]
    assert acc.tokens == [6, 7, 2]


def test_no_child_matches_gives_the_correction_only():
    choices = [4] + [0] * 7
    acc = greedy_accept(TREE, logits_for(choices))
    assert acc.path == [] and acc.tokens == [4]


def test_path_stops_where_the_tree_ends_and_takes_the_bonus_there():
    choices = [5, 0, 3, 0, 0, 0, 0, 0]  # root -> 5 (node 1, a leaf) -> bonus 3
    acc = greedy_accept(TREE, logits_for(choices))
    assert acc.path == [1] and acc.tokens == [5, 3]


def test_duplicate_siblings_take_the_first():
    tree = DraftTree(torch.tensor([2, 2, 3]), (-1, -1, 1))
    acc = greedy_accept(tree, logits_for([2, 3, 3, 1]))
    assert acc.path == [0] and acc.tokens == [2, 3]


def test_the_run_rule_is_picked_once_from_the_sampling_options():
    assert isinstance(rule_for(SamplingParams()), Greedy)
    assert isinstance(rule_for(SamplingParams(temperature=0.7)), Rejection)  # sampling's default
    assert isinstance(rule_for(SamplingParams(temperature=0.7), "coupled"), Coupled)
    assert [rule_for(SamplingParams(temperature=t), v).name for t, v in ((0, None), (1, "rejection"), (1, "coupled"))] \
        == ["greedy", "rejection", "coupled"]
    with pytest.raises(ValueError, match="unknown verify mode 'bogus'"):
        rule_for(SamplingParams(temperature=0.7), "bogus")


def test_each_rule_object_applies_its_own_rule():
    """On hand-built logits where the rules disagree: greedy takes the argmax path; the sampled
    rules give what their functions give on the same stream and noise."""
    tree = DraftTree.chain([1, 2])
    logits = torch.tensor([[0.0, 3.0, 2.9, 0.0], [0.0, 0.0, 3.0, 2.95], [1.0, 1.0, 1.0, 1.0]])
    assert Greedy().accept(tree, logits, None, 5) == greedy_accept(tree, logits)
    params = SamplingParams(temperature=1.0, seed=3)
    for seed in range(20):
        want = rejection_accept(tree, target_probs(logits, params), None, SequenceRng(seed, 0))
        assert Rejection(params).accept(tree, logits, SequenceRng(seed, 0), 5) == want
        noise = coupled_noise(SequenceRng(seed, 0), tree, 5, 4)
        want = coupled_accept(tree, target_logprobs(logits, params), noise)
        assert Coupled(params).accept(tree, logits, SequenceRng(seed, 0), 5) == want
    outcomes = {tuple(Coupled(params).accept(tree, logits, SequenceRng(s, 0), 5).tokens) for s in range(20)}
    assert len(outcomes) > 1  # sampled: not the greedy path every time
