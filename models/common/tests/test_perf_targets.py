from pathlib import Path

import pytest

from models.common.errors import UserError
from models.common.golden_outputs import check_goldens, golden_key, load_goldens, merged, write_goldens
from models.common.perf_targets import (
    DEFAULTS, MATCH_KEYS, Band, PerfTarget, check, dump_targets, find_target, judge, load_targets, updated_targets,
)

DEMO_TARGETS = Path(__file__).resolve().parents[2] / "demos" / "speculative_decoding" / "perf_targets.yaml"


CONFIG = {**{k: DEFAULTS.get(k) for k in MATCH_KEYS}, "method": "eagle"}


def target(**metrics):
    return PerfTarget(id="t", device="cpu", config=CONFIG, metrics={
        m: Band(*v) for m, v in metrics.items()
    })


def test_demo_targets_file_loads_and_matches_by_device_mesh_dtype_and_config():
    targets = load_targets(DEMO_TARGETS)
    assert {t.id for t in targets} >= {"self-draft", "prompt-lookup", "draft-model", "ci-tree-eagle"}
    t = next(t for t in targets if t.id == "draft-model")
    assert find_target(targets, "cpu", "1x1", "float32", t.config) is t
    assert find_target(targets, "H100", "1x1", "float32", t.config) is None
    assert find_target(targets, "cpu", "1x1", "bfloat16", t.config) is None
    assert find_target(targets, "cpu", "2x1", "float32", t.config) is None
    assert find_target(targets, "cpu", "1x1", "float32", {**t.config, "n_draft_tokens": 7}) is None
    assert all("speedup" in t.metrics for t in targets if t.device == "cpu")


def test_golden_metrics_fail_both_ways_and_speed_fails_low_and_too_high():
    assert judge("acceptance_rate", 0.51, Band(0.5, 0.02)).ok
    assert judge("acceptance_rate", 0.53, Band(0.5, 0.02)).status == "differs"
    assert judge("acceptance_rate", 0.47, Band(0.5, 0.02)).status == "differs"
    assert judge("speedup", 1.1, Band(1.0, 0.15)).ok
    low, high = judge("speedup", 0.8, Band(1.0, 0.15)), judge("speedup", 1.2, Band(1.0, 0.15))
    assert low.status == "low" and "below its target 1" in low.describe()
    assert high.status == "high" and "update the target" in high.describe()


def test_check_names_each_miss_in_one_line():
    verdicts = check(target(acceptance_rate=(0.6, 0.02), mean_accepted_tokens=(2.0, 0.1), speedup=(1.0, 0.2)),
                     {"acceptance_rate": 0.5, "mean_accepted_tokens": 2.05, "speedup": 2.0})
    misses = [v.describe() for v in verdicts if not v.ok]
    assert len(misses) == 2 and all("\n" not in m for m in misses)
    assert "acceptance_rate 0.5 differs from golden 0.6" in misses[0]
    assert "speedup 2 beats its target 1" in misses[1]


@pytest.mark.parametrize("text, message", [
    ("targets: [", "not valid YAML at line"),
    ("- a\n- b\n", "expected a mapping with a 'targets' list"),
    ("targets:\n- {id: a, device: cpu, config: {}}\n", "needs id, device, config and metrics"),
    ("targets:\n- {id: a, device: cpu, config: {}, metrics: {tau: {value: 1, tolerance: 0.1}}}\n",
     "unknown metric 'tau'"),
    ("targets:\n- {id: a, device: cpu, config: {}, metrics: {speedup: {value: 1}}}\n", "needs {value, tolerance}"),
    ("targets:\n- {id: a, device: cpu, config: {}, metrics: {decode_tokens_per_s: {value: 9, tolerance: 0.1}}}\n",
     "gated on GPU entries only"),
    ("targets:\n- {id: a, device: cpu, config: {}, metrics: {}, color: red}\n", "unknown key(s) ['color']"),
    ("targets:\n- {id: a, device: cpu, config: {}, metrics: {}}\n- {id: a, device: cpu, config: {}, metrics: {}}\n",
     "'a' appears more than once"),
])
def test_malformed_targets_file_is_one_line(tmp_path, text, message):
    path = tmp_path / "t.yaml"
    path.write_text(text)
    with pytest.raises(UserError) as err:
        load_targets(path)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_missing_targets_file_names_it(tmp_path):
    with pytest.raises(UserError, match="is not a file"):
        load_targets(tmp_path / "nope.yaml")


def test_update_keeps_tolerances_adds_new_entries_and_round_trips(tmp_path):
    old = [target(acceptance_rate=(0.5, 0.03), speedup=(1.0, 0.3))]
    measured = {"acceptance_rate": 0.61234, "mean_accepted_tokens": 2.5, "target_calls": 40, "speedup": 1.7,
                "decode_tokens_per_s": 50.0, "e2e_tokens_per_s": 45.0}
    new = updated_targets(old, "x", "cpu", "1x1", "float32", CONFIG, measured)
    assert len(new) == 1 and new[0].metrics == {"acceptance_rate": Band(0.6123, 0.03), "speedup": Band(1.7, 0.3)}
    added = updated_targets(old, "x", "H100", "1x1", "bfloat16", CONFIG, measured)
    assert len(added) == 2 and added[1].id == "x" and "decode_tokens_per_s" in added[1].metrics
    cpu_added = updated_targets(old, "t", "cpu", "1x1", "bfloat16", CONFIG, measured)
    assert cpu_added[1].id == "t-cpu-bfloat16" and "decode_tokens_per_s" not in cpu_added[1].metrics
    path = tmp_path / "t.yaml"
    path.write_text(dump_targets(added))
    assert load_targets(path) == added


def test_golden_outputs_exact_prefix_and_near_tie_rules(tmp_path):
    golden = [[1, 2, 3, 4], [5, 6, 7]]
    assert check_goldens(golden, [[1, 2, 3], [5, 6, 7, 8]], exact=True) == []  # shorter/longer: common prefix
    fails = check_goldens(golden, [[1, 2, 9], [5, 6, 7]], exact=True, describe_token=lambda t: f"tok{t}")
    assert fails == ["prompt 0: target-only token 2 is tok9 (9), golden tok3 (3)"]
    assert check_goldens(golden, [[1, 2, 3, 4]], exact=True) == ["the goldens hold 2 prompts but this run has 1"]
    # half precision: a divergence at a near-tie of the target's own logits is allowed, not elsewhere
    assert check_goldens(golden, [[1, 2, 9], [5, 6, 7]], exact=False, margin_at=lambda i, prefix: 0.01) == []
    assert check_goldens(golden, [[1, 2, 9], [5, 6, 7]], exact=False, margin_at=lambda i, prefix: 3.0)
    assert merged(golden, [[1, 2], [5, 6, 7, 8]]) == [[1, 2, 3, 4], [5, 6, 7, 8]]
    assert merged(golden, [[1, 9], [5]]) == [[1, 9], [5, 6, 7]]
    path = tmp_path / "g.json"
    key = golden_key("cpu", "float32", "m", "p.json", True)
    write_goldens(path, {key: golden})
    assert load_goldens(path) == {key: golden}
    assert "      [1, 2, 3, 4],\n      [5, 6, 7]\n" in path.read_text()  # one line per prompt
    assert load_goldens(tmp_path / "none.json") == {}
    (tmp_path / "bad.json").write_text("[1]")
    with pytest.raises(UserError, match="not a golden outputs file"):
        load_goldens(tmp_path / "bad.json")
