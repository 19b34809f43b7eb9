from pathlib import Path

from models.common.perf_targets import PerfTarget, check, find_target, load_targets

DEMO_TARGETS = Path(__file__).resolve().parents[2] / "demos" / "speculative_decoding" / "perf_targets.json"
SUMMARY = {"acceptance_rate": 0.5, "mean_accepted_tokens": 2.0, "decode_tokens_per_s": 100.0}


def target(**kw):
    return PerfTarget(id="t", device="cpu", config={}, **kw)


def test_demo_targets_file_loads_and_matches_by_config():
    targets = load_targets(DEMO_TARGETS)
    assert {t.id for t in targets} >= {"self-draft", "prompt-lookup", "draft-model"}
    t = next(t for t in targets if t.id == "draft-model")
    assert find_target(targets, "cpu", t.config) is t
    assert find_target(targets, "cuda", t.config) is None
    assert find_target(targets, "cpu", {**t.config, "n_draft_tokens": 7}) is None


def test_check_passes_within_tolerance_and_names_each_miss():
    assert check(target(acceptance_rate=0.51, mean_accepted_tokens=2.05, min_speedup=1.0), SUMMARY, 1.2, k=4) == []
    misses = check(
        target(acceptance_rate=0.6, mean_accepted_tokens=3.0, min_speedup=1.5, min_decode_tokens_per_s=500),
        SUMMARY, 1.2, k=4,
    )
    assert len(misses) == 4
    assert "acceptance rate 0.5000 differs from golden 0.6000" in misses[0]
    assert "speedup 1.20x" in misses[2]
