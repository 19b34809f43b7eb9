"""scripts/compare_runs.py: two real (tiny) sweeps compared, then copies with one thing broken on
purpose: a slowdown, a tau drop, a mismatch, a missing configuration; every injected fault is
flagged on its configuration alone, and bad inputs are one line with exit status 2.

The honest re-run is the only comparison whose numbers are timing; the others edit a copy of a
run, so their verdicts are exact. The band's statistics are checked on synthetic noise too."""

import json
import math
import random
import shutil
import statistics

import pytest

from models.benchmark.compare import FLOOR, LEVEL, Change, log_change, pooled_variance, set_band, t_quantile
from models.common.cli import run_cli

from .conftest import load_script, sweep

BASE_ARGV = ["--methods", "draft_model,self_draft,prompt_lookup", "--n_draft_tokens", "2"]  # benchmark_run's
SUITE = ["draft_model-k2-n16", "self_draft-k2-n16", "prompt_lookup-k2-n16"]
PEERS = ["hf_greedy-n16", "hf_prompt_lookup-k2-n16"]
PROMPTS = 3


@pytest.fixture(scope="module")
def base(benchmark_run):
    folder, _, code = benchmark_run
    assert code == 0
    return folder


@pytest.fixture(scope="module")
def rerun(tmp_path_factory):
    """The same command as benchmark_run, run again: an honest NEW."""
    folder, _, code = sweep(tmp_path_factory.mktemp("bench_again"), BASE_ARGV)
    assert code == 0
    return folder


@pytest.fixture
def compare_runs(capsys, tmp_path):
    """compare_runs(base, new, *flags) -> (exit code, stdout, stderr, the --json comparison)."""

    def run(base, new, *flags):
        module = load_script("compare_runs")
        out_json = tmp_path / "comparison.json"
        argv = [str(base), str(new), "--json", str(out_json), *flags]
        with pytest.raises(SystemExit) as exit_info:
            run_cli(lambda: module.main(argv))
        captured = capsys.readouterr()
        data = json.loads(out_json.read_text()) if out_json.exists() else None
        out_json.unlink(missing_ok=True)
        return exit_info.value.code, captured.out, captured.err, data

    return run


def edited_copy(src, dst, edit=None, keep=lambda record: True):
    """A copy of a run folder whose runs.jsonl records pass through `edit` (in place) and `keep`."""
    shutil.copytree(src, dst)
    records = [json.loads(line) for line in (dst / "runs.jsonl").read_text().splitlines()]
    lines = []
    for r in records:
        if edit is not None:
            edit(r)
        if keep(r):
            lines.append(json.dumps(r))
    (dst / "runs.jsonl").write_text("\n".join(lines) + "\n")
    return dst


def flagged(data) -> dict[str, set[str]]:
    """config_id -> its failing verdicts (over its rows), for configurations with any."""
    out: dict[str, set[str]] = {}
    for row in data["rows"]:
        if row["regression"]:
            out.setdefault(row["config_id"], set()).update(row["verdicts"])
    return out


def overall(data) -> dict[str, dict]:
    return {row["config_id"]: row for row in data["rows"] if row["category"] == "overall"}


# --- (a) no regression where nothing changed ---------------------------------------------------

def test_a_run_against_itself_is_unchanged_with_the_floor_as_band(compare_runs, base):
    code, out, err, data = compare_runs(base, base)
    assert code == 0, out + err
    assert "no regression beyond the band" in out
    rows = overall(data)
    assert list(rows) == SUITE + PEERS  # target-only is the reference, not a row
    for config_id, row in rows.items():
        assert row["verdicts"] == ["ok"] and row["prompts"] == PROMPTS, config_id
        change = row["speedup_change"]
        assert change["mean_log_change"] == 0.0 and change["band_log"] == pytest.approx(-math.log(1 - FLOOR))
        assert row["tau_base"] == row["tau_new"] and (row["tau_base"] is None) == (config_id in PEERS)
    for label in ("draft_model k=2", "self_draft k=2", "prompt_lookup k=2", "hf_greedy", "hf_prompt_lookup k=2"):
        assert f"\n{label} " in out, label


def test_an_honest_rerun_is_not_a_regression(compare_runs, base, rerun):
    """Two runs of the same command: timings differ, outputs and tau do not. With 3 prompts the
    band is wide (t with 2 degrees of freedom), which is what keeps this from flaking."""
    code, out, err, data = compare_runs(base, rerun)
    assert code == 0, out + err
    assert flagged(data) == {}
    for config_id, row in overall(data).items():
        assert row["tau_base"] == row["tau_new"], config_id  # greedy, fixed shapes: exact
        assert row["speedup_change"]["band_log"] >= -math.log(1 - FLOOR)
    assert "note: target-only's output changed" not in out


# --- (b) a slowdown in one configuration -------------------------------------------------------

def slow_down(config_id: str, factor: float):
    def edit(r):
        if r["config_id"] == config_id:
            r["total_s"] *= factor
            r["ttft_s"] = r["ttft_s"] * factor if r["ttft_s"] is not None else None
            for it in r["iterations"] or []:
                it["seconds"] *= factor
    return edit


def test_a_slowdown_in_one_configuration_flags_it_alone(compare_runs, rerun, tmp_path):
    slowed = edited_copy(rerun, tmp_path / "slowed", slow_down("self_draft-k2-n16", 1.5))
    code, out, err, data = compare_runs(rerun, slowed)
    assert code == 1, out + err
    assert flagged(data) == {"self_draft-k2-n16": {"SLOWER"}}
    row = overall(data)["self_draft-k2-n16"]
    assert row["speedup_change"]["change_percent"] == pytest.approx(100 * (1 / 1.5 - 1))
    assert row["tau_base"] == row["tau_new"]
    assert all(r["verdicts"] == ["ok"] for c, r in overall(data).items() if c != "self_draft-k2-n16")
    assert "1 regression(s): self_draft k=2 / overall: SLOWER" in out


def test_a_slower_target_only_shows_against_the_transformers_peers(compare_runs, rerun, tmp_path):
    """Target-only slower: every suite speedup rises (it is their denominator's reference), and
    only the peers, whose code did not change, reveal it."""
    slowed = edited_copy(rerun, tmp_path / "slowed", slow_down("target-n16", 1.5))
    code, out, err, data = compare_runs(rerun, slowed)
    assert code == 1, out + err
    assert flagged(data) == {peer: {"TARGET-ONLY SLOWER"} for peer in PEERS}
    assert all(overall(data)[c]["verdicts"] == ["faster"] for c in SUITE)


def test_a_peer_rise_after_a_transformers_upgrade_is_reported_not_flagged(compare_runs, rerun, tmp_path):
    upgraded = edited_copy(rerun, tmp_path / "upgraded", slow_down("target-n16", 1.5))
    meta = json.loads((upgraded / "meta.json").read_text())
    meta["versions"]["transformers"] = "99.0"
    (upgraded / "meta.json").write_text(json.dumps(meta))
    code, out, err, data = compare_runs(rerun, upgraded)
    assert code == 0, out + err
    assert flagged(data) == {}
    assert all(overall(data)[p]["verdicts"][0].startswith("peer faster or ours slower (transformers ") for p in PEERS)
    assert "-> 99.0): peer rows are reported, not tested" in out


def split_categories(r):
    """Prompt 2 in a category of its own: two categories, 2 + 1 prompts."""
    if r["prompt_index"] == 2:
        r["category"] = "other"


def test_categories_get_their_own_rows_and_a_lone_prompt_is_not_tested(compare_runs, rerun, tmp_path):
    base = edited_copy(rerun, tmp_path / "base", split_categories)
    slowed = edited_copy(base, tmp_path / "slowed", slow_down("prompt_lookup-k2-n16", 1.5))
    code, out, err, data = compare_runs(base, slowed)
    assert code == 1, out + err
    rows = {(r["config_id"], r["category"]): r for r in data["rows"]}
    assert list(rows) == [(c, cat) for c in SUITE + PEERS for cat in ("tiny_prompts", "other", "overall")]
    assert {key for key, r in rows.items() if r["regression"]} == {
        ("prompt_lookup-k2-n16", "tiny_prompts"), ("prompt_lookup-k2-n16", "overall")}
    assert all(r["verdicts"] == ["too few prompts to test"] for (_, cat), r in rows.items() if cat == "other")
    assert rows[("prompt_lookup-k2-n16", "tiny_prompts")]["prompts"] == 2


# --- (c) tau ---------------------------------------------------------------------------------

def test_a_tau_drop_is_flagged_and_a_rise_reported(compare_runs, rerun, tmp_path):
    def edit(r):
        its = r["iterations"] or []
        if r["config_id"] == "draft_model-k2-n16":  # one accepted draft fewer per run
            it = next(it for it in its if it["accepted"])
            it["accepted"] -= 1
            it["emitted"] -= 1
        if r["config_id"] == "prompt_lookup-k2-n16":  # and one more here
            its[-1]["emitted"] += 1

    edited = edited_copy(rerun, tmp_path / "tau", edit)
    code, out, err, data = compare_runs(rerun, edited)
    assert code == 1, out + err
    assert flagged(data) == {"draft_model-k2-n16": {"TAU DOWN"}}
    rows = overall(data)
    assert rows["draft_model-k2-n16"]["tau_new"] < rows["draft_model-k2-n16"]["tau_base"]
    assert rows["prompt_lookup-k2-n16"]["verdicts"] == ["tau up"]
    assert all(rows[c]["verdicts"] == ["ok"] for c in ("self_draft-k2-n16", *PEERS))


def test_an_auto_budget_tau_drop_is_reported_not_flagged(compare_runs, rerun, tmp_path):
    """--tree_budget auto tunes the tree from timings: tau may fall by design (smaller, cheaper
    trees); the row's speedup is what is tested."""
    def auto(r):
        if r["config_id"] == "draft_model-k2-n16":
            r["tree_topk"], r["tree_depth"], r["tree_budget"] = 2, 2, "auto"

    def fewer_accepted(r):
        if r["config_id"] == "draft_model-k2-n16":
            it = next(it for it in r["iterations"] if it["accepted"])
            it["accepted"] -= 1
            it["emitted"] -= 1

    base = edited_copy(rerun, tmp_path / "base", auto)
    lower = edited_copy(base, tmp_path / "lower", fewer_accepted)
    code, out, err, data = compare_runs(base, lower)
    assert code == 0, out + err
    row = overall(data)["draft_model-k2-n16"]
    assert row["verdicts"] == ["tau down (auto budget)"] and row["tau_change"]["change_percent"] < 0
    assert "draft_model tree 2x2/auto" in out


# --- (d) outputs that no longer match target-only ----------------------------------------------

def break_output(config_id: str, prompt_index: int):
    def edit(r):
        if r["config_id"] == config_id and r["prompt_index"] == prompt_index:
            r["output_ids"][-1] += 1
            r["matches_target_only"], r["first_mismatch"] = False, len(r["output_ids"]) - 1
    return edit


def test_a_new_mismatch_is_flagged_and_one_already_in_base_reported(compare_runs, rerun, tmp_path):
    broken = edited_copy(rerun, tmp_path / "broken", break_output("prompt_lookup-k2-n16", 1))
    code, out, err, data = compare_runs(rerun, broken)
    assert code == 1, out + err
    assert flagged(data) == {"prompt_lookup-k2-n16": {"MISMATCH 1/3"}}
    code, out, err, data = compare_runs(broken, broken)  # the same mismatch in both: not new
    assert code == 0, out + err
    assert overall(data)["prompt_lookup-k2-n16"]["verdicts"] == ["mismatch (as in base) 1/3"]


def test_a_missing_configuration_is_flagged_and_unpaired_prompts_skipped(compare_runs, rerun, tmp_path):
    def keep(r):
        return r["config_id"] != "hf_prompt_lookup-k2-n16" and r["prompt_index"] != 2

    def rename(r):  # a configuration NEW has and BASE has not
        r["config_id"] = r["config_id"].replace("self_draft-k2", "self_draft-k3")

    smaller = edited_copy(rerun, tmp_path / "smaller", rename, keep)
    code, out, err, data = compare_runs(rerun, smaller)
    assert code == 1, out + err
    assert data["missing_in_new"] == ["self_draft-k2-n16", "hf_prompt_lookup-k2-n16"]
    assert data["only_in_new"] == ["self_draft-k3-n16"]
    assert flagged(data) == {}  # what is compared is unchanged
    compared = ("draft_model-k2-n16", "prompt_lookup-k2-n16", "hf_greedy-n16")
    assert {c: r["prompts"] for c, r in overall(data).items()} == {c: 2 for c in compared}
    assert "skipped prompts not in both runs: 1 only in BASE, 0 only in NEW" in out
    assert "configurations only in NEW (not compared): self_draft-k3-n16" in out
    assert "hf_prompt_lookup-k2-n16" in out and "MISSING from NEW" in out


# --- (e) bad input -----------------------------------------------------------------------------

def _drop(name):
    def make(folder):
        (folder / name).unlink()
    return make


def _write(name, text: str | bytes):
    def make(folder):
        path = folder / name
        path.write_bytes(text) if isinstance(text, bytes) else path.write_text(text)
    return make


def _other_prompts(folder):
    meta = json.loads((folder / "meta.json").read_text())
    for p in meta["prompts"]:
        p["text"] = "another prompt " + p["text"]
    (folder / "meta.json").write_text(json.dumps(meta))


def _first_run(**fields):
    def make(folder):
        lines = (folder / "runs.jsonl").read_text().splitlines()
        first = json.loads(lines[0]) | fields
        (folder / "runs.jsonl").write_text("\n".join([json.dumps(first)] + lines[1:]) + "\n")
    return make


BAD_NEW = [
    # (id, how NEW is spoiled, fragment of the one-line error)
    ("no runs.jsonl", _drop("runs.jsonl"), "has no runs.jsonl; give a folder written by scripts/benchmark.py"),
    ("no done.json", _drop("done.json"), "holds a sweep that did not finish (no done.json)"),
    ("runs.jsonl not JSON", _write("runs.jsonl", "{not json\n"), "malformed run log"),
    ("meta.json not JSON", _write("meta.json", "]["), "malformed run log"),
    ("done.json not an object", _write("done.json", "[1]"), "meta.json and done.json must hold JSON objects"),
    ("runs.jsonl not text", _write("runs.jsonl", b"\xff\xfe\x00junk"), "not UTF-8 text"),
    ("seconds not a number", _first_run(total_s="fast"), "runs.jsonl line 1: total_s is 'fast' (expected: number)"),
    ("seconds zero", _first_run(total_s=0), "total_s must be a positive number of seconds, got 0"),
    ("index not a number", _first_run(prompt_index="0"), "runs.jsonl line 1: prompt_index is '0' (expected: integer)"),
    ("iterations without counts", _first_run(iterations=[{"accepted": 1}]),
     "runs.jsonl line 1: iterations[0] lacks 'proposed', 'emitted', 'seconds'"),
    ("iteration count a word", _first_run(iterations=[{"proposed": 2, "accepted": "2", "emitted": 1, "seconds": 0.1}]),
     "runs.jsonl line 1: iterations[0].accepted is '2' (expected: integer)"),
    ("strings not strings", _first_run(token_strings=None), "runs.jsonl line 1: token_strings is None (expected: list"),
    ("meta configurations", _write("meta.json", '{"configurations": [{"id": 3}]}'),
     "meta.json: configurations[0].label is missing"),
    ("other prompts", _other_prompts, "share no prompt (category, question id and text); give two runs of the same"),
]


@pytest.mark.parametrize("name, spoil, message", BAD_NEW, ids=[b[0] for b in BAD_NEW])
def test_bad_new_folder_is_one_line_and_exit_2(compare_runs, rerun, tmp_path, name, spoil, message):
    new = tmp_path / "new"
    shutil.copytree(rerun, new)
    spoil(new)
    code, out, err, data = compare_runs(rerun, new)
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and message in lines[0], err
    assert lines[0].startswith("error: ") and out == "" and data is None


def test_bad_arguments_are_one_line_and_exit_2(compare_runs, rerun, tmp_path):
    cases = [
        ((tmp_path / "nope", rerun), f"{str(tmp_path / 'nope')!r} is not a folder written by scripts/benchmark.py"),
        ((rerun, rerun, "--json", str(tmp_path / "no" / "x.json")), "--json folder"),
        ((rerun, rerun, "--json", str(tmp_path)), "is a folder; give a file path"),
    ]
    for argv, message in cases:
        code, out, err, _ = compare_runs(*argv)
        lines = [line for line in err.splitlines() if line.strip()]
        assert code == 2 and len(lines) == 1 and message in lines[0], err
    unrelated = edited_copy(rerun, tmp_path / "unrelated", lambda r: r.update(config_id="x-" + r["config_id"]))
    code, _, err, _ = compare_runs(rerun, unrelated)
    assert code == 2 and "share no configuration" in err and len(err.strip().splitlines()) == 1, err
    module = load_script("compare_runs")
    with pytest.raises(SystemExit) as exit_info:
        run_cli(lambda: module.main([str(rerun)]))
    assert exit_info.value.code == 2


def test_the_json_is_written_whole_or_not_at_all(compare_runs, rerun, tmp_path):
    code, _, _, data = compare_runs(rerun, rerun)
    assert code == 0 and data["regressions"] == [] and data["statistics"]["floor"] == FLOOR
    assert not list(tmp_path.glob(".comparison.json.*"))  # no temporary file left behind


# --- the statistics ----------------------------------------------------------------------------

def test_t_quantiles_match_the_tables():
    for p, df, expected in [(0.975, 1, 12.706), (0.975, 2, 4.303), (0.995, 2, 9.925), (0.999, 7, 4.785),
                            (0.975, 30, 2.042)]:
        assert t_quantile(p, df) == pytest.approx(expected, abs=1e-3)
    assert t_quantile(LEVEL, 10_000) == pytest.approx(3.0, abs=1e-2)  # t tends to z = 3


def test_the_band_holds_its_false_alarm_rate_with_few_prompts_and_still_sees_a_big_slowdown():
    """Honest re-runs with 3 prompts and 20% per-prompt noise: z = 3 on the sample stderr would
    flag ~5% of rows; the t band stays near 0.135%. A 1.5x slowdown under 2% noise is caught."""
    rng = random.Random(0)
    trials = 20_000
    z_alarms = t_alarms = 0
    for _ in range(trials):
        d = [rng.gauss(0.0, 0.2) for _ in range(3)]
        change = log_change([math.exp(x) for x in d])
        t_alarms += change.drop
        z_alarms += change.mean_log < -max(3.0 * statistics.stdev(d) / math.sqrt(3), -math.log(1 - FLOOR))
    assert z_alarms / trials > 0.02 and t_alarms / trials < 0.005
    slowed = log_change([math.exp(rng.gauss(math.log(1 / 1.5), 0.02)) for _ in range(3)])
    assert slowed.drop and not slowed.pooled
    assert log_change([0.5]).band_log is None and not log_change([0.5]).drop  # one prompt: no noise estimate


def test_a_row_whose_prompts_agree_by_luck_gets_the_pooled_noise():
    """What flaked on the tiny model: one configuration's three prompts all 53% slower within 2%,
    the others scattering by 100%. Alone its band is 16%; pooled with its category it is not
    flagged, while the same shift with every row quiet still is."""
    lucky = [math.exp(x) for x in (-0.75, -0.76, -0.77)]
    noisy = [[math.exp(x) for x in d] for d in ([0.3, -1.7, 1.2], [-1.3, -1.7, 2.9], [-0.7, 0.4, 1.0])]
    assert log_change(lucky).drop
    pool = pooled_variance([log_change(r) for r in [lucky, *noisy]])
    change = log_change(lucky, pool)
    assert change.pooled and not change.drop and change.df == 8
    quiet = [[math.exp(x) for x in d] for d in ([0.01, -0.02, 0.0], [0.0, 0.02, -0.01], [0.01, 0.0, -0.01])]
    assert log_change(lucky, pooled_variance([log_change(r) for r in [lucky, *quiet]])).drop
    assert set_band(Change([-0.4]), pool).band_log is not None  # one prompt here, but a pool to borrow from


# --- (f) sampled rows ----------------------------------------------------------------------------

def test_rejection_rows_tau_is_reported_and_their_differences_expected_coupled_still_must_match(
        compare_runs, sampled_benchmark_run, tmp_path):
    """Rejection sampling: tau is a sample and output differs from target-only by design, so a tau
    drop and differing outputs are reported, not flagged; a coupled row that stops matching is."""
    base = sampled_benchmark_run[0]
    code, out, err, data = compare_runs(base, base)
    assert code == 0, out + err
    rejection = [c for c in overall(data) if c.endswith("-t0.9")]
    assert rejection == ["draft_model-k2-n12-t0.9", "prompt_lookup-k2-n12-t0.9"]
    assert "draft_model k=2 T=0.9 rejection" in out and "prompt_lookup k=2 T=0.9 coupled" in out

    def edit(r):
        if r["config_id"] == "draft_model-k2-n12-t0.9":  # one accepted draft fewer, and another output
            it = next(it for it in r["iterations"] if it["accepted"])
            it["accepted"] -= 1
            it["emitted"] -= 1
            r["output_ids"][0] += 1
            r["matches_target_only"], r["first_mismatch"] = False, 0
        if r["config_id"] == "draft_model-k2-n12-t0.9c" and r["prompt_index"] == 1:
            r["output_ids"][-1] += 1
            r["matches_target_only"], r["first_mismatch"] = False, len(r["output_ids"]) - 1

    edited = edited_copy(base, tmp_path / "edited", edit)
    code, out, err, data = compare_runs(base, edited)
    assert code == 1, out + err
    assert flagged(data) == {"draft_model-k2-n12-t0.9c": {"MISMATCH 1/2"}}
    row = overall(data)["draft_model-k2-n12-t0.9"]
    assert not row["regression"] and row["tau_new"] < row["tau_base"]
    assert row["tau_change"]["change_percent"] < 0  # tested as noise, like an auto budget's tau
    assert row["verdicts"][-1] == "differs (rejection: not token-equal, expected) 2/2"
    assert not any(v.startswith(("TAU DOWN", "MISMATCH")) for v in row["verdicts"])
