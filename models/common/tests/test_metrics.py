import pytest

from models.common.metrics import Iteration, SequenceStats, summarize


def test_summary_follows_the_one_definition():
    a = SequenceStats(prompt_tokens=5, ttft_s=0.5, iterations=[
        Iteration(proposed=4, accepted=4, emitted=5, seconds=1.0),
        Iteration(proposed=4, accepted=1, emitted=2, seconds=1.0),
    ])
    b = SequenceStats(prompt_tokens=3, ttft_s=0.5, iterations=[
        Iteration(proposed=2, accepted=0, emitted=1, seconds=1.0),
        Iteration(proposed=0, accepted=0, emitted=1, seconds=1.0),
    ])
    s = summarize([a, b])
    assert s["acceptance_rate"] == pytest.approx(5 / 10)
    assert s["mean_accepted_tokens"] == pytest.approx(9 / 4)  # emitted by verify calls / calls
    assert s["target_calls"] == 4
    assert s["generated_tokens"] == 9 + 2  # plus each sequence's first token
    # position 0 reached by 3 iterations (accepted in 2), 1 by 3 (1), 2 and 3 by 2 (1)
    assert s["per_position_acceptance"] == pytest.approx([2 / 3, 1 / 3, 1 / 2, 1 / 2])
    assert s["ttft_s"] == pytest.approx(0.5)
    assert s["decode_tokens_per_s"] == pytest.approx((2 + 1) / 2.0)  # each sequence's iteration 0 excluded
    assert s["e2e_tokens_per_s"] == pytest.approx(11 / 5.0)


def test_iteration_zero_is_excluded_from_decode_rate_but_not_from_totals():
    slow_first = SequenceStats(prompt_tokens=2, ttft_s=0.1, iterations=[
        Iteration(proposed=0, accepted=0, emitted=1, seconds=5.0),  # a graph capture, say
        Iteration(proposed=0, accepted=0, emitted=1, seconds=0.5),
        Iteration(proposed=0, accepted=0, emitted=1, seconds=0.5),
    ])
    s = summarize([slow_first])
    assert s["decode_tokens_per_s"] == pytest.approx(2 / 1.0)
    assert s["decode_seconds"] == pytest.approx(6.0) and s["total_seconds"] == pytest.approx(6.1)
    one_call = summarize([SequenceStats(prompt_tokens=2, ttft_s=0.1, iterations=slow_first.iterations[:1])])
    assert one_call["decode_tokens_per_s"] == pytest.approx(1 / 5.0)


def test_empty_summary_has_no_division_by_zero():
    s = summarize([SequenceStats(prompt_tokens=1, ttft_s=0.1)])
    assert s["acceptance_rate"] == 0.0 and s["target_calls"] == 0 and s["generated_tokens"] == 1


def test_tree_iterations_count_depth_not_nodes_for_per_position_acceptance():
    s = summarize([SequenceStats(prompt_tokens=2, ttft_s=0.1, iterations=[
        Iteration(proposed=12, accepted=3, emitted=4, seconds=1.0, depth=4, source="eagle"),
        Iteration(proposed=6, accepted=0, emitted=1, seconds=1.0, depth=2),
        Iteration(proposed=0, accepted=0, emitted=1, seconds=1.0),
    ])])
    assert s["per_position_acceptance"] == pytest.approx([1 / 2, 1 / 2, 1, 0])
    assert s["acceptance_rate"] == pytest.approx(3 / 18)
    assert s["mean_accepted_tokens"] == pytest.approx(6 / 3)
    assert s["mean_tree_nodes"] == pytest.approx(9) and s["mean_tree_depth"] == pytest.approx(3)
    assert s["mean_branching"] == pytest.approx((3 + 3) / 2)
    assert s["accepted_by_source"] == {"eagle": 1}


def test_break_even_tau_is_the_methods_iteration_in_target_only_steps():
    from models.common.metrics import break_even_tau

    target_only = {"decode_seconds": 2.0, "target_calls": 100}  # 20 ms a step
    method = {"decode_seconds": 1.5, "target_calls": 50}  # 30 ms an iteration: 1.5 steps
    assert break_even_tau(method, target_only) == pytest.approx(1.5)
    assert break_even_tau(method, {"decode_seconds": 0.0, "target_calls": 0}) == 0.0
