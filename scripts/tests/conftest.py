"""Load scripts/*.py as modules and run their main like the command line does."""

import importlib.util
import json
from pathlib import Path

import pytest

from models.common.cli import run_cli

SCRIPTS = Path(__file__).resolve().parents[1]


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(f"script_{name}", SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def run_script(capsys):
    """run_script(name, argv) -> (exit code, stderr), exactly as `python scripts/NAME.py argv`."""

    def run(name: str, argv: list[str]):
        module = load_script(name)
        with pytest.raises(SystemExit) as exit_info:
            run_cli(lambda: module.main(argv))
        return exit_info.value.code, capsys.readouterr().err

    return run


def assert_refused_in_one_line(run_script, name: str, argv: list[str], message: str, out: Path) -> None:
    """The script exits 2 with one line (beside INFO logs) holding message, and writes no out."""
    code, err = run_script(name, argv)
    lines = [line for line in err.splitlines() if line.strip() and " | INFO " not in line]
    assert code == 2 and len(lines) == 1 and message in lines[0], err
    assert not out.exists()


def default_variant():
    """The torch variant a sweep of the default model runs without --weights: gguf where the CPU
    kernels are built (its ids then end in @gguf), else fp32."""
    from models.benchmark.configurations import Variant
    from models.speculative.engine import RunConfig

    return Variant("torch", RunConfig().weight_format)


BENCH_MODEL = "random:tiny-llama:1"
BENCH_PROMPTS = [
    {"prompt": "count: one two three one two three one two"},
    {"prompt": "Summarize.", "context": "alpha beta gamma delta alpha beta gamma delta", "max_length": 30},
    {"prompt": "Repeat: red green blue red green blue red"},
]


def sweep(root: Path, extra: list[str], bench_prompts: list[dict] = BENCH_PROMPTS):
    """scripts/benchmark.py on the tiny prompts into root/run: (run folder, prompts file, exit code)."""
    prompts = root / "tiny_prompts.json"
    prompts.write_text(json.dumps(bench_prompts))
    folder = root / "run"
    argv = ["--model", BENCH_MODEL, "--input_prompts", str(prompts), "--max_generated_tokens", "16",
            "--instruct", "0", "--max_seq_len", "256", "--output_dir", str(folder), *extra]
    module = load_script("benchmark")
    with pytest.raises(SystemExit) as exit_info:
        run_cli(lambda: module.main(argv))
    return folder, prompts, exit_info.value.code


@pytest.fixture(scope="session")
def benchmark_run(tmp_path_factory):
    """One tiny end-to-end sweep (suite methods, target-only and transformers peers), shared by
    the benchmark and report tests: (run folder, prompts file, exit code)."""
    return sweep(tmp_path_factory.mktemp("bench"),
                 ["--methods", "draft_model,self_draft,prompt_lookup", "--n_draft_tokens", "2"])


TREE_ARGV = ["--methods", "prompt_lookup,suffix,multi", "--proposers", "prompt_lookup,suffix", "--n_draft_tokens", "2",
             "--tree_topk", "1,2", "--tree_depth", "3", "--tree_budget", "6", "--hf_peers", "0"]


@pytest.fixture(scope="session")
def tree_benchmark_run(tmp_path_factory):
    """A tiny sweep of chains and token trees, model-free proposers and their multi-draft merge:
    (run folder, prompts file, exit code). The first prompt comes again last, so suffix drafting
    has an earlier sequence of the run to draft from (the warm-up's is forgotten)."""
    return sweep(tmp_path_factory.mktemp("bench_tree"), TREE_ARGV, BENCH_PROMPTS + BENCH_PROMPTS[:1])


SAMPLED_ARGV = ["--methods", "draft_model,prompt_lookup", "--n_draft_tokens", "2", "--max_generated_tokens", "12",
                "--temperature", "0,0.9", "--verify", "rejection,coupled", "--hf_peers", "0"]
SAMPLED_PROMPTS = BENCH_PROMPTS[:2]


@pytest.fixture(scope="session")
def sampled_benchmark_run(tmp_path_factory):
    """A tiny sweep at temperature 0 (greedy) and 0.9, verified by rejection and coupled sampling,
    on 2 prompts: (run folder, prompts file, exit code)."""
    return sweep(tmp_path_factory.mktemp("bench_sampled"), SAMPLED_ARGV, SAMPLED_PROMPTS)
