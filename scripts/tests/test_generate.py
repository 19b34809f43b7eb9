"""scripts/generate.py: the output contract, equality across methods, and every bad input."""

import json
import os
import stat
from pathlib import Path

import pytest

from models.common.errors import UserError
from models.speculative.engine import RunConfig

TINY = "random:tiny-llama:31"
PROMPTS = [
    {"prompt": "count: one two three one two three one two"},
    {"prompt": "Summarize.", "context": "alpha beta gamma delta alpha beta gamma delta", "max_length": 30},
]


@pytest.fixture
def prompts_file(tmp_path):
    path = tmp_path / "prompts.json"
    path.write_text(json.dumps(PROMPTS))
    return path


def generate(run_script, prompts, out, *extra):
    argv = ["--input_prompts", str(prompts), "--output", str(out), "--model", TINY,
            "--max_generated_tokens", "24", "--max_seq_len", "256", *extra]
    return run_script("generate", argv)


def test_output_contract_and_equality_across_methods(run_script, prompts_file, tmp_path):
    outs = {}
    for method, extra in [
        ("target", []),
        ("prompt_lookup", ["--max_ngram_size", "2"]),
        ("self_draft", ["--draft_layers", "2"]),
        ("draft_model", ["--draft_model", "random:tiny-llama:32"]),
    ]:
        for k in ["1", "4"]:
            out = tmp_path / f"{method}-{k}.json"
            code, err = generate(run_script, prompts_file, out, "--method", method, "--n_draft_tokens", k, *extra)
            assert code == 0, err
            outs[method, k] = json.loads(out.read_text())
    for method, extra in [
        ("prompt_lookup", ["--tree_topk", "3", "--tree_budget", "8"]),
        ("suffix", ["--tree_topk", "2"]),
        ("self_draft", ["--draft_layers", "2", "--tree_topk", "2", "--tree_depth", "3", "--tree_budget", "auto"]),
        ("multi", ["--proposers", "suffix,prompt_lookup", "--tree_topk", "2", "--tree_budget", "6"]),
    ]:
        out = tmp_path / f"{method}-tree.json"
        code, err = generate(run_script, prompts_file, out, "--method", method, "--n_draft_tokens", "4", *extra)
        assert code == 0, err
        outs[method, "tree"] = json.loads(out.read_text())
        assert outs[method, "tree"]["config"]["tree"]["topk"] > 1
    ref = outs["target", "1"]
    assert set(ref) == {"config", "prompts", "stats"}
    assert {"acceptance_rate", "mean_accepted_tokens", "target_calls", "generated_tokens",
            "decode_tokens_per_s", "ttft_s"} <= set(ref["stats"])
    assert [p["index"] for p in ref["prompts"]] == [0, 1]
    assert all(isinstance(p["text"], str) and p["output_ids"] for p in ref["prompts"])
    for key, data in outs.items():
        assert [p["output_ids"] for p in data["prompts"]] == [p["output_ids"] for p in ref["prompts"]], key
        assert data["config"]["method"] == key[0]
    assert ref["stats"]["target_calls"] == ref["stats"]["generated_tokens"] - len(PROMPTS)
    assert ref["stats"]["throughput_tokens_per_s"] > 0


@pytest.mark.parametrize("batching", [["--batch_size", "2"], ["--batch_size", "8"], ["--full_batch_size", "2"]])
def test_batched_outputs_equal_one_at_a_time(run_script, tmp_path, batching):
    """Prompts of unequal lengths (fewer than --batch_size 8 too): each output equals its solo run."""
    path = tmp_path / "prompts.json"
    path.write_text(json.dumps(PROMPTS + [{"prompt": "zq"}, {"prompt": "one two one two one two one"}]))
    outs = {}
    for name, extra in [("solo", []), ("batched", batching)]:
        out = tmp_path / f"{name}.json"
        code, err = generate(run_script, path, out, "--method", "prompt_lookup", *extra)
        assert code == 0, err
        outs[name] = json.loads(out.read_text())
    ids = [[p["output_ids"] for p in outs[name]["prompts"]] for name in ("solo", "batched")]
    assert ids[0] == ids[1] and len(ids[0]) == 4
    stats = outs["batched"]["stats"]
    assert stats["throughput_tokens_per_s"] > 0 and stats["generated_tokens"] == sum(map(len, ids[0]))


@pytest.mark.parametrize("shape", ["1x2", "2x1", "1x2+1x1"])
def test_a_mesh_writes_what_one_device_writes(run_script, prompts_file, tmp_path, shape):
    """1x2+1x1: a draft model on a device group of its own (--draft_mesh_shape)."""
    target_mesh, _, draft_mesh = shape.partition("+")
    method = ["--method", "draft_model", "--draft_model", TINY] if draft_mesh else ["--method", "prompt_lookup"]
    outs = {}
    for mesh, extra in (("1x1", []), (shape, ["--draft_mesh_shape", draft_mesh] if draft_mesh else [])):
        out = tmp_path / f"{mesh}.json"
        code, err = generate(run_script, prompts_file, out, *method, "--mesh_shape", mesh.partition("+")[0], *extra)
        assert code == 0, err
        outs[mesh] = json.loads(out.read_text())
    assert [p["output_ids"] for p in outs[shape]["prompts"]] == [p["output_ids"] for p in outs["1x1"]["prompts"]]
    assert outs[shape]["config"]["mesh_shape"] == target_mesh and outs[shape]["stats"]["mean_accepted_tokens"] > 1
    assert outs[shape]["config"]["draft_mesh_shape"] == (draft_mesh or None)


def test_sampling_reproduces_from_its_seed_and_coupled_equals_target_only(run_script, prompts_file, tmp_path):
    def outputs(name, *extra):
        out = tmp_path / f"{name}.json"
        code, err = generate(run_script, prompts_file, out, "--temperature", "0.9", "--top_k", "20", *extra)
        assert code == 0, err
        data = json.loads(out.read_text())
        assert data["config"]["temperature"] == 0.9
        return [p["output_ids"] for p in data["prompts"]]

    rejection = outputs("rej", "--method", "self_draft", "--draft_layers", "2", "--seed", "5")
    assert outputs("rej-again", "--method", "self_draft", "--draft_layers", "2", "--seed", "5") == rejection
    assert outputs("rej-seed6", "--method", "self_draft", "--draft_layers", "2", "--seed", "6") != rejection
    coupled_target = outputs("ct", "--method", "target", "--seed", "5", "--verify", "coupled")
    for method, extra in [("self_draft", ["--draft_layers", "2"]), ("prompt_lookup", ["--tree_topk", "2"])]:
        assert outputs(f"c-{method}", "--method", method, *extra, "--seed", "5", "--verify", "coupled") == coupled_target


BAD = [
    # (description, argv tweak, expected fragment of the one-line error)
    ("missing prompts", ["--input_prompts", "nope.json"], "not found"),
    ("prompts a folder", ["--input_prompts", "/"], "prompts file '/' is a folder; give a JSON file"),
    ("n_draft_tokens < 1", ["--method", "prompt_lookup", "--n_draft_tokens", "0"], "--n_draft_tokens must be >= 1"),
    ("draft_layers too high", ["--method", "self_draft", "--draft_layers", "4"], "--draft_layers 4 is outside [1, 3]"),
    ("draft_layers zero", ["--method", "self_draft", "--draft_layers", "0"], "--draft_layers must be >= 1"),
    ("draft model too short", ["--method", "draft_model", "--draft_layers", "9"], "outside [1, 4]"),
    ("self_draft without layers", ["--method", "self_draft"], "needs --draft_layers"),
    ("target_layers too high", ["--target_layers", "5"], "--target_layers 5 is outside [1, 4]"),
    ("too long", ["--max_seq_len", "40"], "exceeds max_seq_len=40"),
    ("unknown method", ["--method", "medusa7"], "unknown method 'medusa7'"),
    ("unknown device", ["--device", "tpu"], "unknown device 'tpu'"),
    ("tenstorrent", ["--device", "n150"], "Tenstorrent ttnn backend, which is not available here"),
    ("qualcomm", ["--device", "qaic"], "Qualcomm QEfficient backend, which is not available here"),
    ("batch zero", ["--batch_size", "0"], "--batch_size must be >= 1, got 0"),
    ("full batch zero", ["--full_batch_size", "0"], "--full_batch_size must be >= 1, got 0"),
    ("both batchings", ["--batch_size", "2", "--full_batch_size", "4"], "exclude each other"),
    ("batch past memory", ["--batch_size", "100000000", "--max_seq_len", "256"],
     "--batch_size 100000000 needs"),
    ("unknown model", ["--model", "no/such/model"], "model 'no/such/model' not found"),
    ("bad random preset", ["--model", "random:huge"], "unknown random preset 'huge'"),
    ("instruct", ["--instruct", "2"], "expected 0 or 1"),
    ("k not int", ["--n_draft_tokens", "four"], "invalid int value"),
    ("dtype", ["--dtype", "int3"], "unknown dtype 'int3'"),
    ("tree_topk zero", ["--method", "prompt_lookup", "--tree_topk", "0"], "--tree_topk must be >= 1, got 0"),
    ("tree_depth zero", ["--method", "prompt_lookup", "--tree_depth", "0"], "--tree_depth must be >= 1, got 0"),
    ("tree_budget zero", ["--method", "prompt_lookup", "--tree_budget", "0"], "--tree_budget must be >= 1, got 0"),
    ("tree_budget word", ["--tree_budget", "lots"], "expected a number of nodes or 'auto', got 'lots'"),
    ("tree_budget too big", ["--method", "prompt_lookup", "--tree_topk", "4", "--tree_budget", "64"],
     "--tree_budget 64 is above the largest tree verified in one pass (63)"),
    ("tree_budget past cache", ["--method", "prompt_lookup", "--tree_topk", "4", "--tree_budget", "40",
                                "--max_seq_len", "40"], "--tree_budget 40 cannot fit --max_seq_len 40"),
    ("unknown proposer", ["--method", "multi", "--proposers", "prompt_lookup,medusa"],
     "unknown proposer 'medusa' in --proposers"),
    ("proposers without multi", ["--method", "prompt_lookup", "--proposers", "suffix"],
     "--proposers is for --method multi, not --method prompt_lookup"),
    ("multi without proposers", ["--method", "multi"], "--method multi needs --proposers"),
    ("negative temperature", ["--temperature", "-0.5"], "--temperature must be a finite number >= 0"),
    ("top_p zero", ["--temperature", "0.7", "--top_p", "0"], "--top_p must be in (0, 1]"),
    ("top_p above one", ["--temperature", "0.7", "--top_p", "1.5"], "--top_p must be in (0, 1]"),
    ("top_k negative", ["--temperature", "0.7", "--top_k", "-1"], "--top_k must be >= 0"),
    ("unknown verify", ["--temperature", "0.7", "--verify", "gumbel"], "invalid choice: 'gumbel'"),
    ("verify at temperature 0", ["--verify", "coupled"], "--verify coupled is for sampling (--temperature > 0)"),
    ("kv cache past memory", ["--max_seq_len", "1000000000"], "GiB of KV cache (the target's), but cpu has"),
    ("mesh malformed", ["--mesh_shape", "0x2"], "mesh shape '0x2' is not DPxTP"),
    ("mesh tp past the KV heads", ["--mesh_shape", "1x3"], "tensor parallel 3 exceeds the model's 2 KV heads"),
    ("draft mesh without a draft", ["--method", "prompt_lookup", "--draft_mesh_shape", "1x1"],
     "--method prompt_lookup has no draft model"),
    ("mesh with auto trees", ["--mesh_shape", "1x2", "--method", "prompt_lookup", "--tree_topk", "2",
                              "--tree_budget", "auto"], "--tree_budget auto times one device"),
    ("draft model unread", ["--method", "prompt_lookup", "--draft_model", TINY],
     "--draft_model is for --method draft_model (or multi with draft_model in --proposers); --method prompt_lookup "
     "loads no draft model"),
    ("draft model unread by multi", ["--method", "multi", "--proposers", "suffix,prompt_lookup", "--draft_model", TINY],
     "--method multi --proposers suffix,prompt_lookup loads no draft model"),
    ("speculator with target", ["--method", "target", "--speculator", "some/folder"],
     "--speculator is for --method eagle or multi_projection (or multi with one in --proposers); --method target "
     "reads no speculator"),
    ("speculator with a draft model", ["--method", "draft_model", "--speculator", "some/folder"],
     "--method draft_model reads no speculator"),
]


@pytest.mark.parametrize("name, tweak, message", BAD, ids=[b[0] for b in BAD])
def test_bad_input_is_one_line_and_writes_nothing(run_script, prompts_file, tmp_path, name, tweak, message):
    out = tmp_path / "out.json"
    argv = ["--input_prompts", str(prompts_file), "--output", str(out), "--model", TINY,
            "--max_generated_tokens", "24", "--max_seq_len", "256"]
    for i in range(0, len(tweak), 2):  # a tweak replaces the flag's value, or adds the flag
        if tweak[i] in argv:
            argv[argv.index(tweak[i]) + 1] = tweak[i + 1]
        else:
            argv += tweak[i : i + 2]
    code, err = run_script("generate", argv)
    assert code == 2
    assert message in err
    assert len(err.strip().splitlines()) == 1, err
    assert not out.exists()
    assert not list(tmp_path.glob(".out.json.*"))


@pytest.mark.parametrize("method, proposers, flag", [
    ("draft_model", None, "draft_model"), ("eagle", None, "speculator"), ("multi_projection", None, "speculator"),
    ("multi", "prompt_lookup,draft_model", "draft_model"), ("multi", "eagle,suffix", "speculator"),
])
def test_a_flag_its_method_reads_is_accepted(method, proposers, flag):
    """The other side of the unread-flag errors above: --method multi reads what its proposers read."""
    RunConfig(method=method, proposers=proposers, **{flag: "some/path"}).validate()


@pytest.mark.parametrize(
    "content, message",
    [
        ("{not json", "not valid JSON"),
        ('{"prompt": "x"}', "expected a non-empty JSON list"),
        ("[]", "expected a non-empty JSON list"),
        ('["just a string"]', "item 0 is a str"),
        ('[{"text": "x"}]', "unknown field(s) ['text']"),
        ('[{"prompt": ""}]', "'prompt' must be a non-empty string"),
        ('[{"prompt": "x", "max_length": -3}]', "'max_length' must be a positive integer"),
        ('[{"prompt": "x", "context": 5}]', "'context' must be a string"),
        ('[{"prompt": "x"}, {"prompt": "a \\ud800 b"}]',
         "item 1: 'prompt' holds a lone surrogate '\\ud800' at character 2"),
        ('[{"prompt": "x", "context": "\\udfff"}]', "item 0: 'context' holds a lone surrogate '\\udfff'"),
    ],
)
def test_malformed_prompts_files(run_script, tmp_path, content, message):
    bad = tmp_path / "bad.json"
    bad.write_text(content)
    out = tmp_path / "out.json"
    code, err = generate(run_script, bad, out)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert not out.exists()


def test_missing_output_folder(run_script, prompts_file, tmp_path):
    code, err = generate(run_script, prompts_file, tmp_path / "nope" / "out.json")
    assert code == 2 and "does not exist" in err


def test_a_byte_order_mark_is_read_and_a_symlink_output_written_where_it_points(run_script, tmp_path):
    prompts = tmp_path / "bom.json"
    prompts.write_bytes(b"\xef\xbb\xbf" + json.dumps(PROMPTS[:1]).encode())  # as some editors save UTF-8
    (tmp_path / "results").mkdir()
    target = tmp_path / "results" / "out.json"
    link = tmp_path / "out.json"
    link.symlink_to(target)
    code, err = generate(run_script, prompts, link, "--method", "target", "--max_generated_tokens", "4")
    assert code == 0, err
    assert link.is_symlink() and json.loads(target.read_text())["prompts"][0]["output_ids"]
    assert sorted(p.name for p in (tmp_path / "results").iterdir()) == ["out.json"]


NOT_REGULAR = "is not a regular file (a device, fifo or socket); give a file path"


def _bad_output(tmp_path, kind) -> tuple[Path, str]:
    """An --output that cannot take the result (made in tmp_path where it can) and its one-line error."""
    if kind in ("fifo", "link to a fifo"):
        os.mkfifo(tmp_path / "pipe")
        if kind == "fifo":
            return tmp_path / "pipe", f"--output {str(tmp_path / 'pipe')!r} {NOT_REGULAR}"
        (tmp_path / "link").symlink_to(tmp_path / "pipe")
        return tmp_path / "link", f"--output {str(tmp_path / 'link')!r} {NOT_REGULAR}"
    if kind == "file as folder":
        (tmp_path / "file").write_text("x")
        return tmp_path / "file" / "out.json", f"--output folder {str(tmp_path / 'file')!r} is not a folder"
    if kind == "folder":
        return tmp_path, f"--output {str(tmp_path)!r} is a folder; give a file path"
    if kind == "device":
        return Path("/dev/null"), f"--output '/dev/null' {NOT_REGULAR}"
    return Path("/sys/kernel/out.json"), "--output folder '/sys/kernel' is not writable ("  # root too


@pytest.mark.parametrize("kind", ["fifo", "link to a fifo", "device", "folder", "file as folder", "unwritable folder"])
def test_a_bad_output_is_refused_before_the_model_loads(run_script, prompts_file, tmp_path, kind):
    """The model named does not exist: the output's error, not the model's, proves the order;
    nothing is replaced or left behind."""
    if kind == "unwritable folder" and not Path("/sys/kernel").is_dir():
        pytest.skip("no /sys here")
    out, message = _bad_output(tmp_path, kind)
    code, err = generate(run_script, prompts_file, out, "--model", "no/such/model")
    assert code == 2 and err.startswith(f"error: {message}") and len(err.strip().splitlines()) == 1, err
    if kind in ("fifo", "link to a fifo", "device"):
        assert not stat.S_ISREG(os.stat(out).st_mode)  # still the fifo or device, not a file put in its place
    assert not list(tmp_path.glob(".*.tmp"))


@pytest.mark.default_model
def test_vocabulary_mismatch(run_script, prompts_file, tmp_path, default_model):
    out = tmp_path / "out.json"
    code, err = generate(run_script, prompts_file, out, "--method", "draft_model", "--draft_model", "smollm2-135m")
    assert code == 2 and "different vocabulary" in err, err
    assert not out.exists()


def test_decode_step_bench_runs_on_cpu_and_reports_ratios(run_script, tmp_path):
    out = tmp_path / "step.json"
    code, err = run_script("decode_step_bench", ["--shape", "random:tiny-llama", "--device", "cpu", "--q", "2,5",
                                                 "--context", "16", "--repeats", "3", "--copy_mb", "4",
                                                 "--output", str(out)])
    assert code == 0, err
    result = json.loads(out.read_text())
    assert set(result["verify_over_decode"]) == {"2", "5"}
    assert result["decode_step_ms"] > 0 and result["copy_bandwidth_gb_s"] > 0
    assert 0 < result["decode_fraction_of_copy_bandwidth"]
    code, err = run_script("decode_step_bench", ["--shape", "llama-9000", "--output", str(tmp_path / "x.json")])
    assert code == 2 and "unknown --shape 'llama-9000'" in err
    code, err = run_script("decode_step_bench", ["--shape", "random:tiny-llama", "--weights", "gguf",
                                                 "--output", str(tmp_path / "x.json")])
    assert code == 2 and "give --model" in err


def test_decode_step_bench_times_both_weight_formats_against_their_rooflines(run_script, tmp_path, default_model):
    out = tmp_path / "step.json"
    code, err = run_script("decode_step_bench", ["--model", "smollm2-135m", "--weights", "fp32,gguf", "--device",
                                                 "cpu", "--q", "4", "--context", "32", "--repeats", "3",
                                                 "--copy_mb", "64", "--output", str(out)])
    assert code == 0, err
    formats = json.loads(out.read_text())["formats"]
    assert set(formats) == {"fp32", "gguf"}
    assert formats["gguf"]["weight_bytes"] < 0.2 * formats["fp32"]["weight_bytes"]
    for f in formats.values():
        assert set(f["over_roofline"]) == {"1", "4"} and all(r > 0 for r in f["over_roofline"].values())
        assert f["decode_spread_ms"]["p10"] <= f["decode_spread_ms"]["median"] <= f["decode_spread_ms"]["p90"]
        assert f["break_even_tau"]["4"] == f["verify_over_decode"]["4"]


def test_decode_step_bench_times_each_kernel_instruction_set(run_script, tmp_path, default_model):
    from models.common import quantized

    isas = ["avx2"]
    try:
        chosen = quantized.kernel_isa("")
        quantized.kernel_isa("avx512")
        quantized.kernel_isa(chosen)
        isas.append("avx512")
    except RuntimeError as exc:
        if "kernels" in str(exc):
            pytest.skip("no CPU kernels here")
    out = tmp_path / "step.json"
    code, err = run_script("decode_step_bench", ["--model", "smollm2-135m", "--weights", "gguf", "--kernel_isa",
                                                 ",".join(isas), "--device", "cpu", "--q", "2", "--context", "16",
                                                 "--repeats", "2", "--copy_mb", "16", "--output", str(out)])
    assert code == 0, err
    formats = json.loads(out.read_text())["formats"]
    assert set(formats) == {f"gguf {isa}" for isa in isas}
    assert {f["kernel_isa"] for f in formats.values()} == set(isas)
    code, err = run_script("decode_step_bench", ["--model", "smollm2-135m", "--weights", "gguf", "--kernel_isa",
                                                 "sse", "--output", str(tmp_path / "x.json")])
    assert code == 2 and "--kernel_isa sse: " in err and len(err.strip().splitlines()) == 1


def test_the_options_are_checked_and_the_device_opened_once(run_script, prompts_file, tmp_path, monkeypatch):
    """generate.py checks its options and opens the device before any work; the Engine it then
    builds in this process reuses both, and a changed value is checked again."""
    from models.speculative import engine

    checks, opens = [], []
    check, open_device = RunConfig._check, engine.open_device
    monkeypatch.setattr(RunConfig, "_check", lambda self: checks.append(1) or check(self))
    monkeypatch.setattr(engine, "open_device", lambda *a, **kw: opens.append((*a, kw)) or open_device(*a, **kw))
    code, err = generate(run_script, prompts_file, tmp_path / "out.json", "--method", "prompt_lookup")
    assert code == 0, err
    assert (len(checks), opens) == (1, [("cpu", None, {"weights": "fp32"})])
    config = RunConfig(method="target")
    config.prepare()
    config.max_generated_tokens = 0
    with pytest.raises(UserError, match="--max_generated_tokens must be >= 1"):
        config.validate()
