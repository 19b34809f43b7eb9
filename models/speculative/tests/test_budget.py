"""--tree_budget auto: the cost curve, the acceptance it learns, and the budget it picks."""

import pytest

from models.llama.weights import load_model
from models.speculative.budget import (
    EXPLORE_EVERY, WARMUP_ITERATIONS, AutoBudget, VerifyCost, cached_verify_cost, measure_verify_cost,
)


def test_cost_curve_interpolates_and_extrapolates():
    cost = VerifyCost({1: 10.0, 5: 14.0, 9: 30.0})
    assert cost(1) == 10.0 and cost(3) == 12.0 and cost(7) == 22.0
    assert cost(11) == 38.0  # the last slope
    assert cost(0) == 10.0


def feed(tuner, paths, seconds_per_call):
    """Run the tuner through iterations whose accepted paths (node indices) are given."""
    picks = []
    for path in paths:
        b = tuner.next_budget()
        picks.append(b)
        seen = [n for n in path if n < b]
        tuner.observe(seen, b, seconds_per_call(b))
    return picks


def test_auto_picks_the_budget_that_maximizes_tokens_per_second():
    """Synthetic: node 0 is always accepted, nodes 1..5 add acceptance slowly, and the cost
    jumps after 8 rows. Expected tokens/s: b=1: 2/10, b=3: 2.4/11, b=7: 2.8/13 (best), b=8+: /40."""
    cost = VerifyCost({1: 10.0, 8: 13.0, 9: 40.0, 33: 60.0})
    tuner = AutoBudget(cost, max_budget=32)
    # node 0 always, node 2 in 40% and node 6 in 40% of iterations (a deeper branch)
    paths = [[0, 2, 6] if i % 5 < 2 else [0] for i in range(200)]
    picks = feed(tuner, paths, lambda b: cost(b + 1))
    assert tuner.choice == 7
    assert picks[:WARMUP_ITERATIONS] == [32] * WARMUP_ITERATIONS  # learns at the largest budget first
    later = picks[WARMUP_ITERATIONS + 1 :]
    assert later.count(16) == pytest.approx(len(later) / EXPLORE_EVERY, abs=2)  # and keeps exploring,
    assert set(later) == {7, 16}  # at twice its choice (the largest tree costs more than it teaches)
    assert tuner.expected_accepted(7) == pytest.approx(1.8, abs=0.05)


def test_flat_costs_pick_the_largest_tree_and_steep_costs_a_chain():
    paths = [[0, 1, 5, 20] if i % 2 else [3, 9] for i in range(100)]
    flat = AutoBudget(VerifyCost({1: 10.0, 33: 10.5}), max_budget=32)
    feed(flat, paths, lambda b: 10.0)
    assert flat.choice >= 21
    steep = AutoBudget(VerifyCost({1: 10.0, 2: 10.5, 3: 30.0, 33: 300.0}), max_budget=32)
    feed(steep, paths, lambda b: 10.0)
    assert steep.choice == 1


def test_measured_cost_is_cached_per_device_and_model(tmp_path):
    model = load_model("random:tiny-llama:3").model
    cost = cached_verify_cost(model, "random:tiny-llama:3", "cpu test", 9, tmp_path)
    assert cost.sizes[0] == 1 and cost.sizes[-1] == 9 and all(t > 0 for t in cost.seconds)
    files = list(tmp_path.glob("verify_cost-*.json"))
    assert len(files) == 1
    again = cached_verify_cost(model, "random:tiny-llama:3", "cpu test", 9, tmp_path)
    assert again.seconds == cost.seconds  # read back, not re-measured
    other = cached_verify_cost(model, "random:tiny-llama:3", "another device", 9, tmp_path)
    assert len(list(tmp_path.glob("verify_cost-*.json"))) == 2 and other.sizes == cost.sizes


def test_measure_covers_every_size_up_to_the_largest():
    model = load_model("random:tiny-llama:3").model
    assert measure_verify_cost(model, 5).sizes == [1, 2, 3, 4, 5]


def test_estimates_use_the_newest_iterations_only():
    from models.speculative.budget import HISTORY

    tuner = AutoBudget(VerifyCost({1: 10.0, 9: 12.0}), max_budget=8)
    for _ in range(HISTORY):
        tuner.observe([0, 1], 8, 12.0)  # old behaviour: 2 accepted
    for _ in range(HISTORY // 2):
        tuner.observe([], 8, 12.0)  # new: none
    assert tuner.expected_accepted(8) == pytest.approx(1.0)  # half the window each
    assert tuner.expected_accepted(1) == pytest.approx(0.5)
