from pathlib import Path

import pytest

from models.common.errors import UserError
from models.common.golden_outputs import check_goldens, golden_key, load_goldens, merged, write_goldens
from models.common.perf_targets import (
    DEFAULTS, HEADER, MATCH_KEYS, Band, PerfTarget, check, dump_targets, find_target, judge, load_targets,
    updated_targets,
)

DEMO_TARGETS = Path(__file__).resolve().parents[2] / "demos" / "speculative_decoding" / "perf_targets.yaml"


CONFIG = {**{k: DEFAULTS.get(k) for k in MATCH_KEYS}, "method": "eagle"}


def target(device="cpu", **metrics):
    return PerfTarget(id="t", device=device, config=CONFIG, metrics={
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


# The CI rule (perf_targets.speed_floor), on hand-built bands: speedup 1.0 +-15%, so 0.67 is outside
# the band but above the floor (0.5, half the target) and 0.4 below it.
NOISY = target(speedup=(1.0, 0.15), batch_speedup=(2.0, 0.15), acceptance_rate=(0.5, 0.02), target_calls=(40, 3))


def by_metric(verdicts):
    return {v.metric: v for v in verdicts}


def test_ci_reports_a_cpu_speed_ratio_outside_its_band_above_half_its_target():
    v = by_metric(check(NOISY, {"speedup": 0.67, "batch_speedup": 3.5, "acceptance_rate": 0.5, "target_calls": 40},
                        ci=True))
    assert v["speedup"].status == "reported" and v["speedup"].ok and v["speedup"].floor == 0.5
    assert v["batch_speedup"].status == "reported" and v["batch_speedup"].ok  # above the band: reported too
    assert "speedup 0.67 is outside its band 0.85..1.15 (target 1) but above the CI floor 0.5: reported, not " \
           "failed" in v["speedup"].describe()
    assert v["speedup"].to_json() == {"measured": 0.67, "value": 1.0, "tolerance": 0.15, "status": "reported",
                                      "floor": 0.5}


def test_ci_fails_a_cpu_speed_ratio_below_half_its_target():
    v = by_metric(check(NOISY, {"speedup": 0.4, "batch_speedup": 0.9, "acceptance_rate": 0.5, "target_calls": 40},
                        ci=True))
    assert v["speedup"].status == "low" and not v["speedup"].ok
    assert v["batch_speedup"].status == "low" and not v["batch_speedup"].ok
    assert "speedup 0.4 is below the CI floor 0.5, 50% of its target 1" in v["speedup"].describe()


def test_ci_keeps_golden_metrics_strict():
    v = by_metric(check(NOISY, {"speedup": 1.0, "batch_speedup": 2.0, "acceptance_rate": 0.53, "target_calls": 44},
                        ci=True))
    assert v["acceptance_rate"].status == "differs" and not v["acceptance_rate"].ok
    assert v["target_calls"].status == "differs" and v["acceptance_rate"].floor is None


@pytest.mark.parametrize("mode", [{}, {"ci": False}, {"ci": True, "targets_named": True}],
                         ids=["default", "outside-ci", "ci-with-named-targets-file"])
def test_outside_ci_and_with_a_named_targets_file_the_full_band_applies(mode):
    low = by_metric(check(NOISY, {"speedup": 0.67, "batch_speedup": 2.0, "acceptance_rate": 0.5, "target_calls": 40},
                          **mode))
    assert low["speedup"].status == "low" and low["speedup"].floor is None
    assert low["speedup"].describe() == "speedup 0.67 is below its target 1 (band 0.85..1.15)"
    high = check(NOISY, {"speedup": 1.2, "batch_speedup": 2.0, "acceptance_rate": 0.5, "target_calls": 40}, **mode)
    assert by_metric(high)["speedup"].status == "high"


def test_a_gpu_entry_keeps_the_full_band_in_ci():
    gpu = target("H100", speedup=(1.0, 0.15), decode_tokens_per_s=(100.0, 0.15))
    v = by_metric(check(gpu, {"speedup": 0.67, "decode_tokens_per_s": 70.0}, ci=True))
    assert v["speedup"].status == "low" and v["decode_tokens_per_s"].status == "low"
    assert v["speedup"].floor is None


def test_judge_reports_only_between_the_floor_and_the_band():
    band = Band(1.0, 0.15)
    assert judge("speedup", 0.9, band, floor=0.5).status == "pass"
    assert judge("speedup", 0.5, band, floor=0.5).status == "reported"  # the floor itself passes
    assert judge("speedup", 0.499, band, floor=0.5).status == "low"
    assert judge("acceptance_rate", 0.53, Band(0.5, 0.02), floor=0.25).status == "differs"  # never a golden


def test_the_demo_targets_file_header_is_the_one_dump_writes():
    text = DEMO_TARGETS.read_text()
    assert text.startswith(HEADER) and "The CI rule" in HEADER


def test_missing_golden_outputs_file_names_it(tmp_path):
    with pytest.raises(UserError, match="--golden_outputs '.*none.json' is not a file"):
        load_goldens(tmp_path / "none.json")
    with pytest.raises(UserError, match="is not a file"):
        load_goldens(tmp_path)  # a folder


@pytest.mark.parametrize("content, message", [
    (b"[1]", "not a golden outputs file (expected JSON with an 'outputs' mapping)"),
    (b"{}", "not a golden outputs file (expected JSON with an 'outputs' mapping)"),
    (b'{"outputs": [[1, 2]]}', "not a golden outputs file (expected JSON with an 'outputs' mapping)"),
    (b'{"outputs": {"k": [[1, 2]],\n', "not valid JSON at line 2"),
    (b"\xff\xfe\x00", "not a golden outputs file (not UTF-8 text)"),
    (b'{"outputs": {"k": 5}}', "outputs['k'] must be a list of token-id lists, one per prompt"),
    (b'{"outputs": {"k": [[1, "a"]]}}', "outputs['k'] must be a list of token-id lists, one per prompt"),
    (b'{"outputs": {"k": [[1, 2.0]]}}', "outputs['k'] must be a list of token-id lists, one per prompt"),
])
def test_malformed_golden_outputs_file_is_one_line(tmp_path, content, message):
    path = tmp_path / "g.json"
    path.write_bytes(content)
    with pytest.raises(UserError) as err:
        load_goldens(path)
    assert message in str(err.value) and "\n" not in str(err.value)
