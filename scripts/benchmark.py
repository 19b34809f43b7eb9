#!/usr/bin/env python3
"""Benchmark sweep: every method x draft shape x length, target-only and transformers/llama.cpp peers, interleaved.

    python scripts/benchmark.py --bench_file ../shared/data/spec_bench/question.jsonl --per_category 4
    python scripts/benchmark.py --input_prompts sample_prompts/*.json --methods prompt_lookup --n_draft_tokens 2,4
    python scripts/benchmark.py --input_prompts sample_prompts/*.json --methods eagle,prompt_lookup \
        --tree_topk 1,2,4 --tree_depth 3,5 --tree_budget 8,16,32

Defaults: every method but target-only and multi (--methods), k = 4 (--n_draft_tokens), 128 new
tokens (--max_generated_tokens), chains only (--tree_topk 1), the default model smollm2-135m,
the chat template on (--instruct 1), prompts up to 2048 tokens with their answer (--max_seq_len),
prompt lookup n-grams up to 3 tokens (--max_ngram_size), every prompt of each category
(--per_category), and the peers on (--hf_peers 1, --llama_cpp_peers 1).

Peers, timed in the same interleaved loop: transformers' generate on the same weights (greedy and
its prompt lookup), and llama.cpp through llama-cpp-python (greedy and its prompt lookup,
LlamaPromptLookupDecoding) on the default model's own GGUF on CPU, when that optional package is
installed (bash scripts/setup.sh --with-llama-cpp); otherwise one line says how to add it.
llama.cpp runs the GGUF's quantized weights, so its tokens differ from the suite's fp32 ones: its
prompt lookup is checked against llama.cpp's own greedy output, not target-only.

Draft shapes: --tree_topk 1 (the default) is a chain at each --n_draft_tokens value (ids such as
eagle-k4-n128); each --tree_topk value above 1 x each --tree_depth (default: the --n_draft_tokens
values) x each --tree_budget (default: the device's, 16 on cpu, 32 on cuda) is a token tree
(eagle-t4d5b16-n128, label "eagle tree 4x5/16"). --proposers a,b feeds the multi method, which
the default --methods only include when it is given.

Sampling: --temperature 0,0.7 sweeps decoding modes like --n_draft_tokens sweeps k (default 0:
greedy only); each temperature above 0 runs with each --verify mode (rejection, the default, or
coupled), sharing --top_k, --top_p and --seed. Greedy ids stay as they are; sampled ids end in
-t0.7 (rejection) or -t0.7c (coupled), labels in "T=0.7 rejection". Target-only sampling at the
same mode is each one's reference and speedup denominator, and prompt i draws from the stream
(seed, i) in both, so a sweep reproduces from its seed. Coupled output must equal target-only's
token for token (a difference is a mismatch, as under greedy); rejection output is only
distributed as it (recorded, never counted as a mismatch). The transformers and llama.cpp peers
decode greedily only: at temperatures above 0 one line says they are left out.

Backends: --backend torch,transformers (a config file: "backend": ["torch", "transformers"]) loads
each backend's target (and drafts) and runs the same methods on each, all in the same interleaved
loop; each row is held to, and timed against, its own backend's target-only (ids of backends other
than torch end in @NAME, e.g. prompt_lookup-k4-n128@transformers). A configuration a backend cannot
run (a tree, a trained head) is skipped on that backend in one line and shown as "not run"; the
peers run once, timed against the first backend's target-only.

Weight formats: --weights fp32,gguf ("weights": ["fp32", "gguf"]) is a model axis like --backend:
each backend x format loads its own target (gguf: the torch backend's linears read the GGUF's own
blocks, outputs bit-identical to fp32), every method runs on each, held to and timed against its
own target-only (ids of a format other than the backend's own end in @gguf; tables name the
target "torch+gguf"). Without --weights each backend runs its own format, ids as before. A
combination a backend or the device cannot run (--backend transformers --weights gguf) is
skipped in one line while others remain, and is the run's error when none does.

Batch sizes: --batch_sizes 1,2,4,8,16 measures throughput instead (models/benchmark/batch_sweep.py):
target-only and each method decode all the prompts at each batch size (static batches, or
continuous batching with --continuous 1), and the summary gives throughput per batch size and
the crossover, the batch size from which a method is slower than target-only. Greedy, one length.

Writes meta.json, runs.jsonl (one line per configuration x prompt), summary.csv, summary.md and
done.json under --output_dir (default logs/<timestamp>/), and prints the Spec-Bench table.
An interrupted sweep (Ctrl-C, a kill) resumes: the same command with the same --output_dir skips
the prompts (with --batch_sizes: the batch sizes) already recorded for every configuration and
runs the rest; a folder holding another configuration's sweep, or a finished one, is refused.
`--config FILE` reads the same options from JSON ({"methods": ["prompt_lookup"], "n_draft_tokens":
[2, 4], ...}; flags on the command line win), plus "method_options": {METHOD: {RunConfig field:
value}} for knobs of one method (e.g. {"eagle": {"speculator": "PATH"}}).
"""

from __future__ import annotations

import dataclasses
import datetime
import itertools
import os
import platform
import shlex
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

import torch  # noqa: E402
import transformers  # noqa: E402
from loguru import logger  # noqa: E402

from models.benchmark import batch_sweep, llama_cpp_peer, sources  # noqa: E402
from models.benchmark.configurations import (  # noqa: E402
    GREEDY_MODE, HF_PEERS, LLAMA_PEERS, MODEL_AXES, MULTI, REJECTION, TARGET, Configuration, Mode, SweepPlan,
    Variant, build, default_methods, mode_config, sampling_modes, sweep_shapes, temperature_text,
)
from models.benchmark.runlog import (  # noqa: E402
    DONE, SUMMARY_CSV, SUMMARY_MD, RunRecord, RunWriter, check_output_dir, check_resumable, resume_records,
    write_meta,
)
from models.benchmark.summary import spec_bench_table, summary_markdown, summary_rows, to_csv  # noqa: E402
from models.benchmark.sweep import counts_as_mismatch, sweep  # noqa: E402
from models.common.cli import (  # noqa: E402
    ArgumentParser, bool01, read_json_file, run_cli, write_atomic, write_json_atomic,
)
from models.common.device import requested_device_name  # noqa: E402
from models.common.errors import UserError  # noqa: E402
from models.backends.registry import backend as backend_named  # noqa: E402
from models.llama.weights import DEFAULT_MODEL  # noqa: E402
from models.speculative.options import defaults, run_options, sweep_wide, swept  # noqa: E402
from models.speculative.engine import (  # noqa: E402
    AUTO, DEFAULT_TREE_BUDGET, DRAFT_MODEL_METHODS, METHODS, RunConfig,
)
from models.speculative.sampling import VERIFY_MODES  # noqa: E402

DEFAULT_K = "4"  # one k keeps a Spec-Bench sweep short on a 2-core CPU
DEFAULT_LENGTHS = "128"
DEFAULT_TOPK = "1"  # chains only
DEFAULT_MAX_SEQ_LEN = 2048  # Spec-Bench's longest first turn is 1598 tokens with SmolLM2's template
DEFAULT_TEMPERATURE = "0"  # greedy
# options a --config file may give as a JSON list: the benchmark's own, and every swept run option
LIST_OPTIONS = ("methods", "categories", "input_prompts", "proposers", *swept())
SAMPLING_FIELDS = sweep_wide()  # the decoding mode: sweep-wide, never per method


def build_parser() -> ArgumentParser:
    d = RunConfig()
    p = ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", default=None, help="JSON file with any of these options (flags win)")
    p.add_argument("--methods", default=None,
                   help="comma list (default: every method except target; multi only with --proposers)")
    p.add_argument("--n_draft_tokens", default=DEFAULT_K, help=f"comma list of k values (default: {DEFAULT_K})")
    p.add_argument("--max_generated_tokens", default=DEFAULT_LENGTHS,
                   help=f"comma list of lengths (default: {DEFAULT_LENGTHS})")
    p.add_argument("--tree_topk", default=DEFAULT_TOPK,
                   help=f"comma list of children per node; 1: chains at each k (default: {DEFAULT_TOPK})")
    p.add_argument("--tree_depth", default=None, help="comma list of tree levels (default: the k values)")
    p.add_argument("--tree_budget", default=None,
                   help="comma list of tree nodes verified per target call, or auto (default: the device's, "
                        + ", ".join(f"{n} on {kind}" for kind, n in DEFAULT_TREE_BUDGET.items()) + ")")
    p.add_argument("--proposers", default=None, help="the multi method's proposers, e.g. eagle,prompt_lookup")
    p.add_argument("--temperature", default=DEFAULT_TEMPERATURE,
                   help=f"comma list of temperatures; 0: greedy (default: {DEFAULT_TEMPERATURE})")
    p.add_argument("--top_k", type=int, default=d.top_k, help=f"sampling: keep the k likeliest tokens; 0: off "
                   f"(default: {d.top_k})")
    p.add_argument("--top_p", type=float, default=d.top_p, help=f"sampling: nucleus mass in (0, 1]; 1: off "
                   f"(default: {d.top_p:g})")
    p.add_argument("--seed", type=int, default=d.seed, help=f"sampling: prompt i draws from the stream (seed, i) "
                   f"(default: {d.seed})")
    p.add_argument("--verify", default=None,
                   help="comma list of sampled verification modes, rejection and/or coupled (default: rejection; "
                        "only with a --temperature above 0)")
    for axis in MODEL_AXES:  # the targets every method runs on
        default = defaults()[axis]
        p.add_argument(f"--{axis}", default=default,
                       help=f"comma list; each loads its own target and runs every method, held to and timed against "
                            f"its own target-only; {run_options()[axis].text()}"
                            + ("" if default is None else f" (default: {default})"))
    p.add_argument("--model", default=DEFAULT_MODEL,
                   help=f"{DEFAULT_MODEL}, a checkpoint folder, a .gguf, random:PRESET (default: {DEFAULT_MODEL})")
    p.add_argument("--input_prompts", nargs="+", default=None, help="prompt files; category = file stem")
    p.add_argument("--bench_file", default=None, help="Spec-Bench question.jsonl (first turn of each question)")
    p.add_argument("--categories", default=None, help="comma list of categories to keep")
    p.add_argument("--per_category", type=int, default=None,
                   help="first N prompts per category, in file order (default: all)")
    p.add_argument("--instruct", type=bool01, default=True, help="1: apply the chat template (default: 1)")
    p.add_argument("--output_dir", default=None,
                   help="folder for the logs: a new one, or an unfinished sweep's to resume it (default "
                        "logs/<timestamp>/)")
    p.add_argument("--device", default=None, help="cpu or cuda (default: $MESH_DEVICE, else cpu)")
    p.add_argument("--dtype", default=None, help="float32 or bfloat16 (default: float32 on cpu, bfloat16 on cuda)")
    p.add_argument("--max_seq_len", type=int, default=DEFAULT_MAX_SEQ_LEN,
                   help=f"prompt + answer; prompts that do not fit are skipped (default: {DEFAULT_MAX_SEQ_LEN})")
    p.add_argument("--draft_layers", type=int, default=None, help="self_draft's layers (default: 80%% of the target's)")
    p.add_argument("--draft_model", default=None, help="draft_model's draft (default: the target itself)")
    p.add_argument("--max_ngram_size", type=int, default=d.max_ngram_size,
                   help=f"prompt lookup: suite, transformers and llama.cpp (default: {d.max_ngram_size})")
    p.add_argument("--hf_peers", type=bool01, default=True,
                   help="1: also time transformers generate (greedy, lookup) (default: 1)")
    p.add_argument("--llama_cpp_peers", type=bool01, default=True,
                   help="1: also time llama.cpp (greedy, lookup) on the default model's GGUF on CPU, when "
                        "llama-cpp-python is installed (default: 1)")
    p.add_argument("--batch_sizes", default=None,
                   help="comma list: measure throughput at each batch size instead of per-prompt speedups")
    p.add_argument("--continuous", type=bool01, default=False,
                   help="with --batch_sizes: 1 for continuous batching over that many rows, 0 for static batches "
                        "(default: 0)")
    p.set_defaults(method_options={})
    return p


def load_config_file(path: str, parser: ArgumentParser) -> dict:
    """A JSON object of option names (as flags, without dashes); lists become comma lists."""
    data = read_json_file(path, "--config")
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a JSON object of options")
    known = ({a.dest for a in parser._actions} | {"method_options"}) - {"help", "config"}
    unknown = sorted(set(data) - known)
    if unknown:
        raise UserError(f"{path}: unknown option(s) {', '.join(unknown)}")
    method_options = data.get("method_options", {})
    if not isinstance(method_options, dict):
        raise UserError(f"{path}: method_options must be an object of {{METHOD: {{RunConfig field: value}}}}")
    for method, options in method_options.items():
        check_method_options(path, method, options)
    for key in LIST_OPTIONS:
        if isinstance(data.get(key), list) and key != "input_prompts":
            data[key] = ",".join(str(v) for v in data[key])
        elif isinstance(data.get(key), int | float) and not isinstance(data[key], bool):
            data[key] = str(data[key])  # "n_draft_tokens": 4 is the list [4]
    return data


def check_method_options(path: str, method: str, options: object) -> None:
    """RunConfig fields with values of their type, so a typo fails here in one line, not mid-build."""
    fields = {f.name: str(f.type) for f in dataclasses.fields(RunConfig) if f.name != "method"}
    bad = sorted(set(options) - set(fields)) if isinstance(options, dict) else ["(not an object)"]
    if bad:
        raise UserError(f"{path}: method_options.{method}: unknown field(s) {', '.join(bad)}")
    wide = [name for name in options if name in SAMPLING_FIELDS]
    if wide:
        raise UserError(f"{path}: method_options.{method}.{wide[0]} is sweep-wide; use --{wide[0]}")
    for name, value in options.items():
        wants_int = fields[name].startswith("int") and "str" not in fields[name]  # tree_budget may be "auto"
        if value is not None and wants_int and (isinstance(value, bool) or not isinstance(value, int)):
            raise UserError(f"{path}: method_options.{method}.{name} must be an integer, got {value!r}")


def parse_args(argv: list[str]):
    parser = build_parser()
    first, _ = parser.parse_known_args(argv)
    from_file = load_config_file(first.config, parser) if first.config else {}
    parser.set_defaults(**from_file)
    args = parser.parse_args(argv)
    # options the user set (file or flag): a default method they configured is not skipped quietly
    args.given = set(from_file) | {a.lstrip("-").split("=")[0] for a in argv if a.startswith("--")}
    return args


def comma_list(value: str | None) -> list[str]:
    return [v.strip() for v in (value or "").split(",") if v.strip()]


def int_list(flag: str, value: str) -> list[int]:
    try:
        values = [int(v) for v in comma_list(value)]
    except ValueError:
        raise UserError(f"--{flag} expects a comma list of integers, got {value!r}") from None
    if not values:
        raise UserError(f"--{flag} is empty")
    bad = [v for v in values if v < 1]
    if bad:
        raise UserError(f"--{flag} values must be >= 1, got {bad[0]}")
    return list(dict.fromkeys(values))


def optional_int_list(flag: str, value: str | None) -> list[int] | None:
    return None if value is None else int_list(flag, value)


def budget_list(value: str | None) -> list[int | str] | None:
    """--tree_budget: integers and/or 'auto' (the budget tuned per iteration from measured costs)."""
    if value is None:
        return None
    items = comma_list(value)
    numbers = int_list("tree_budget", ",".join(v for v in items if v != AUTO)) if set(items) - {AUTO} else []
    return numbers + ([AUTO] if AUTO in items else [])


def temperature_list(value: str) -> list[float]:
    try:
        values = [float(v) for v in comma_list(value)]
    except ValueError:
        raise UserError(f"--temperature expects a comma list of numbers, got {value!r}") from None
    if not values:
        raise UserError("--temperature is empty")
    return list(dict.fromkeys(values))


def model_variants(args) -> list[Variant]:
    """The targets every method runs on: each combination of the model axes' comma lists
    (--backend torch,transformers --weights fp32,gguf); an unknown value is one line naming it and
    the valid ones. --weights not given: each backend's default for this target and device (torch:
    gguf for a GGUF target on the CPU, the format scripts/generate.py and the demo run)."""
    lists: list[list[str | None]] = []
    for axis in MODEL_AXES:
        if getattr(args, axis) is None:
            lists.append([None])
            continue
        values = list(dict.fromkeys(comma_list(getattr(args, axis))))
        if not values:
            raise UserError(f"--{axis} is empty")
        choices = run_options()[axis].choices or ()
        bad = [v for v in values if choices and v not in choices]
        if bad:
            raise UserError(f"unknown --{axis} {bad[0]!r}; choose from {', '.join(choices)}")
        lists.append(values)
    device = requested_device_name(args.device)
    combos = [dict(zip(MODEL_AXES, values, strict=True)) for values in itertools.product(*lists)]
    for combo in combos:
        if combo["weights"] is None:
            combo["weights"] = backend_named(combo["backend"]).weight_format(None, args.model, device, args.dtype)
    return list(dict.fromkeys(Variant(**combo) for combo in combos))


def runnable_variants(variants: list[Variant], config: RunConfig) -> list[Variant]:
    """The variants this machine runs, each checked (its device opened) before any model loads. An
    unavailable backend is the run's error; a weight format that a backend or the device cannot read
    (--backend torch,transformers --weights gguf) is skipped in one line while other variants remain,
    and is the run's error when none does."""
    kept, skipped = [], []
    for variant in variants:
        backend_named(variant.backend).check()
        try:
            variant.applied(config).prepare()
        except UserError as exc:
            if variant.own_format:  # not the format's doing
                raise
            skipped.append((variant, exc))
            continue
        kept.append(variant)
    if not kept:
        raise skipped[0][1]
    for variant, exc in skipped:
        logger.warning(f"skipping {variant.text}: {exc}")
    return kept


def check_same_prompt_ids(targets: dict, selected: list[tuple[int, object, list[int]]], instruct: bool) -> None:
    """Every configuration is fed the same prompt ids, so every target's tokenizer must give them."""
    for variant, engine in targets.items():
        for i, prompt, ids in selected:
            if engine.tokenizer.encode(prompt.text, chat=instruct) != ids:
                raise UserError(f"prompt {i} ({prompt.describe()}) tokenizes otherwise on {variant.text}; "
                                "run that backend in a sweep of its own")


def choose_modes(base: RunConfig, temperatures: str, verify: str | None) -> list[Mode]:
    """The (temperature, verify) modes to sweep; every value is checked by RunConfig's own rules
    (one line naming the first bad one) before any model loads."""
    temps = temperature_list(temperatures)
    verifies = None if verify is None else list(dict.fromkeys(comma_list(verify)))
    if verifies is not None and not verifies:
        raise UserError("--verify is empty")
    for v in verifies or []:
        if v not in VERIFY_MODES:
            raise UserError(f"unknown --verify {v!r}; choose from {', '.join(VERIFY_MODES)}")
    for t in temps:
        dataclasses.replace(base, temperature=t).validate()
    if verifies and not any(t > 0 for t in temps):
        dataclasses.replace(base, verify=verifies[0]).validate()  # greedy: verify does not apply
    modes = sampling_modes(temps, verifies)
    for mode in modes:
        mode_config(base, mode).validate()
    return modes


def peers_for(modes: list[Mode], hf_peers: bool, llama_cpp: bool) -> tuple[bool, bool]:
    """The peers decode greedily: at temperatures above 0 there is nothing to compare token for token
    (they sample with their own random numbers), so they run at temperature 0 only; one line says so."""
    sampled = sorted({t for t, _ in modes if t > 0})
    if not sampled or not (hf_peers or llama_cpp):
        return hf_peers, llama_cpp
    temps = ", ".join(temperature_text(t) for t in sampled)
    greedy = GREEDY_MODE in modes
    where = "run at temperature 0 only" if greedy else "skipped"
    logger.info(f"transformers and llama.cpp peers {where} (not at temperature {temps}): they sample with their "
                "own random numbers, so there is nothing to compare token for token")
    return hf_peers and greedy, llama_cpp and greedy


def choose_methods(value: str | None, with_multi: bool = False) -> list[str]:
    """The --methods list; the default is every engine method (multi only with its proposers)."""
    if value is None:
        return default_methods(with_multi)
    methods = [m for m in comma_list(value) if m != TARGET]  # target-only always runs
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        choices = ", ".join(m for m in METHODS if m != TARGET)
        peers = " (transformers peers are on with --hf_peers 1)" if set(unknown) & set(HF_PEERS) else ""
        if set(unknown) & set(LLAMA_PEERS):
            peers = " (llama.cpp peers are on with --llama_cpp_peers 1)"
        raise UserError(f"unknown method {unknown[0]!r}; choose from {choices}{peers}")
    return list(dict.fromkeys(methods))


def check_tree_flags(base: RunConfig, topks: list[int], depths: list[int] | None,
                     budgets: list[int | str] | None) -> None:
    """Tree depth and budget shape trees only, and every value must be one the engine can verify;
    both are checked here, before any model loads, so a bad sweep writes nothing."""
    if max(topks) == 1:
        for flag, values in (("tree_depth", depths), ("tree_budget", budgets)):
            if values is not None:
                raise UserError(f"--{flag} shapes token trees; add a --tree_topk value above 1 "
                                "(--tree_topk 1 sweeps chains at each --n_draft_tokens)")
    for budget in budgets or []:
        dataclasses.replace(base, tree_budget=budget).validate()


def check_proposers(methods: list[str], proposers: str | None) -> None:
    if proposers is not None and MULTI not in methods:
        raise UserError(f"--proposers {proposers!r} is for the multi method; add multi to --methods")


def load_bench_prompts(args) -> list[sources.BenchPrompt]:
    if bool(args.input_prompts) == bool(args.bench_file):
        raise UserError("give either --input_prompts FILE... or --bench_file question.jsonl")
    if args.bench_file:
        prompts = sources.from_spec_bench(args.bench_file)
    else:
        prompts = sources.from_prompt_files([str(p) for p in args.input_prompts])
    return sources.select(prompts, comma_list(args.categories) or None, args.per_category)


def fitting_prompts(prompts, target, max_new_tokens: int, instruct: bool) -> list[tuple[int, object, list[int]]]:
    """(index, prompt, ids) for prompts that fit max_seq_len; each one that does not is named and skipped."""
    kept = []
    for i, prompt in enumerate(prompts):
        ids = target.tokenizer.encode(prompt.text, chat=instruct)
        try:
            target.generator.check_fits(len(ids), max_new_tokens)
        except UserError as exc:
            logger.warning(f"skipping prompt {i} ({prompt.describe()}): {exc}")
            continue
        kept.append((i, prompt, ids))
    if not kept:
        raise UserError(f"no prompt fits --max_seq_len {target.config.max_seq_len}; raise it")
    return kept


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def run_header(args, argv: list[str], device) -> dict:
    """meta.json's first keys: the command, when, the model and the machine."""
    return {
        "command": "python scripts/benchmark.py " + shlex.join(argv),
        "started": datetime.datetime.now().isoformat(timespec="seconds"),
        "model": args.model, "device": device.describe(), "cpu": cpu_name(), "cpu_count": os.cpu_count(),
        "load_average_at_start": [round(v, 2) for v in os.getloadavg()],  # other work skews every timing
    }


def versions() -> dict:
    """What meta.json records, and a resumed sweep must match (its timings would mix versions)."""
    return {"torch": torch.__version__, "transformers": transformers.__version__, "python": platform.python_version()}


def resumed_meta(previous: dict, argv: list[str], recorded: int, total: int, unit: str) -> dict:
    """The interrupted sweep's meta.json, plus when and by what it resumed (its timings mix sessions)."""
    entry = {"command": "python scripts/benchmark.py " + shlex.join(argv),
             "at": datetime.datetime.now().isoformat(timespec="seconds"), f"{unit}s_recorded": recorded,
             f"{unit}s_total": total, "load_average_at_start": [round(v, 2) for v in os.getloadavg()]}
    return {**previous, "resumed": [*previous.get("resumed", []), entry]}


def log_resume(output_dir: Path, done: list[int], total: int, unit: str) -> None:
    """One line: what a resumed sweep skips (unit: prompt or batch_size)."""
    units = unit.replace("_", " ") + "s"
    logger.info(f"resuming the sweep in {output_dir}: {len(done)} of {total} {units} already recorded for every "
                f"configuration are skipped ({spans(done) or 'none'}); {total - len(done)} to run")


def spans(values: list[int]) -> str:
    """'0-46, 48' for 0, 1, ..., 46, 48: a long sweep's recorded prompts in a short line."""
    runs: list[list[int]] = []
    for v in sorted(values):
        if runs and v == runs[-1][1] + 1:
            runs[-1][1] = v
        else:
            runs.append([v, v])
    return ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in runs)


def resume_sweep(output_dir: Path, previous: dict, meta: dict, configs: list[Configuration],
                 argv: list[str]) -> tuple[dict, list[RunRecord]]:
    """The unfinished sweep in output_dir goes on if it is this one (the same configurations and
    prompts; else one line names the difference): (its meta.json noting the resume, the records of
    its prompts recorded for every configuration)."""
    check_resumable(output_dir, previous, {k: meta.get(k) for k in ("configurations", "prompts", "skipped_prompts",
                                                                    "llama_cpp")})
    records = resume_records(output_dir, [c.id for c in configs])
    done = sorted({r.prompt_index for r in records})
    log_resume(output_dir, done, len(meta["prompts"]), "prompt")
    return resumed_meta(previous, argv, len(done), len(meta["prompts"]), "prompt"), records


def configuration_meta(config: Configuration, with_length: bool, base: RunConfig, with_variant: bool = False) -> dict:
    """meta.json's entry for a configuration: its id, label, target (backend), draft shape (None:
    nothing drafted) and decoding (temperature 0 and verify greedy, or how it sampled)."""
    topk, depth, budget = config.shape or (None, None, None)
    return {"id": config.id, "label": config.label(with_length, with_variant), **dataclasses.asdict(config.variant),
            "method": config.method, "k": config.k,
            "tree_topk": topk, "tree_depth": depth, "tree_budget": budget,
            "max_generated_tokens": config.max_generated_tokens, "temperature": config.temperature,
            "verify": config.verify, "top_k": base.top_k, "top_p": base.top_p, "seed": base.seed}


def not_run_meta(not_run: dict[Configuration, str], with_length: bool) -> dict:
    """meta.json's not_run: each configuration a backend of the sweep could not run, and why ({} if none)."""
    if not not_run:
        return {}
    return {"not_run": [{"id": c.id, "label": c.label(with_length), **dataclasses.asdict(c.variant), "reason": why}
                        for c, why in not_run.items()]}


def with_draft_model(method_options: dict, draft_model: str | None, proposers: str | None) -> dict:
    """--draft_model, given to the configurations that load a draft only (RunConfig refuses it on
    any other); a method_options entry of their own wins."""
    if draft_model is None:
        return method_options
    multi_reads = bool(RunConfig(method=MULTI, proposers=proposers).drafters & set(DRAFT_MODEL_METHODS))
    readers = [*DRAFT_MODEL_METHODS] + ([MULTI] if multi_reads else [])
    return {**method_options, **{m: {"draft_model": draft_model, **method_options.get(m, {})} for m in readers}}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    proposers = args.proposers
    with_multi = proposers is not None or "proposers" in args.method_options.get(MULTI, {})
    methods = choose_methods(args.methods, with_multi)
    check_proposers(methods, proposers)
    ks = int_list("n_draft_tokens", args.n_draft_tokens)
    lengths = int_list("max_generated_tokens", args.max_generated_tokens)
    topks = int_list("tree_topk", args.tree_topk)
    depths = optional_int_list("tree_depth", args.tree_depth)
    budgets = budget_list(args.tree_budget)
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    output_dir = Path(args.output_dir) if args.output_dir else REPO_ROOT / "logs" / stamp
    previous = check_output_dir(output_dir)  # an unfinished sweep's meta.json, to resume it
    prompts = load_bench_prompts(args)
    options = {k: v for k, v in vars(args).items() if k != "given"}

    common = RunConfig(
        model=args.model, method=TARGET, max_seq_len=args.max_seq_len, max_generated_tokens=max(lengths),
        instruct=args.instruct, device=requested_device_name(args.device), dtype=args.dtype,
        max_ngram_size=args.max_ngram_size,
        top_k=args.top_k, top_p=args.top_p, seed=args.seed,
    )
    variants = runnable_variants(model_variants(args), common)  # before any model loads
    base = variants[0].applied(common)
    modes = choose_modes(base, args.temperature, args.verify)
    check_tree_flags(base, topks, depths, budgets)
    explicit = set(methods if "methods" in args.given else []) | set(args.method_options)
    explicit |= {"self_draft"} if "draft_layers" in args.given else set()
    explicit |= {"draft_model"} if "draft_model" in args.given else set()
    explicit |= {MULTI} if "proposers" in args.given else set()
    device = base.prepare()
    if previous is not None:  # before any model loads
        check_resumable(output_dir, previous, {"options": options, "versions": versions(),
                                               "device": device.describe()})
    greedy = GREEDY_MODE in modes  # the peers decode greedily only
    llama_cpp = greedy and llama_cpp_peer.wanted(args.model, device.type, args.llama_cpp_peers,
                                                 "llama_cpp_peers" in args.given)
    hf_peers, llama_cpp = peers_for(modes, args.hf_peers, llama_cpp if greedy else args.llama_cpp_peers)
    method_options = with_draft_model(args.method_options, args.draft_model, proposers)
    plan = SweepPlan(base, methods, ks, lengths, args.draft_layers, method_options, hf_peers, explicit,
                     shapes=sweep_shapes(ks, topks, depths, budgets), proposers=proposers, llama_cpp_peers=llama_cpp,
                     modes=modes, variants=variants)
    if args.batch_sizes is not None:
        if len(variants) > 1:
            axis = next(a for a in MODEL_AXES if len({getattr(v, a) for v in variants}) > 1)
            raise UserError(f"--batch_sizes measures one target; give one --{axis}, not {getattr(args, axis)!r}")
        return batch_main(args, argv, plan, device, prompts, output_dir, previous, options)
    if args.continuous:
        raise UserError("--continuous is for --batch_sizes")
    built = build(plan, device)
    selected = fitting_prompts(prompts, built.target, max(lengths), args.instruct)
    check_same_prompt_ids(built.targets, selected, args.instruct)
    configs = list(built.runners)
    several = len(variants) > 1
    on = f" on {', '.join(v.text for v in variants)}" if several else ""
    logger.info(f"{len(configs)} configurations{on} x {len(selected)} prompts on {device.describe()} -> {output_dir}")

    meta = {
        **run_header(args, argv, device),
        "versions": versions(),
        "options": options,
        "configurations": [configuration_meta(c, len(lengths) > 1, base, several) for c in configs],
        **not_run_meta(built.not_run, len(lengths) > 1),
        "prompts": [{"index": i, "category": p.category, "subcategory": p.subcategory, "source": p.source,
                     "question_id": p.question_id,
                     "prompt_tokens": len(ids), "text": p.text} for i, p, ids in selected],
        "skipped_prompts": len(prompts) - len(selected),
        **built.peer_meta,  # llama_cpp: the GGUF, its weights' type, llama-cpp-python's version, threads
    }
    records: list[RunRecord] = []
    if previous is not None:
        meta, records = resume_sweep(output_dir, previous, meta, configs, argv)
    by_id = {c.id: c for c in configs}
    earlier_mismatches = sum(counts_as_mismatch(by_id[r.config_id], r) for r in records)
    t0 = time.perf_counter()
    writer = RunWriter(output_dir, meta)

    def keep(batch: list[RunRecord]) -> None:
        writer.append(batch)
        records.extend(batch)

    try:
        mismatches = earlier_mismatches + sweep(selected, built.runners, built.target.tokenizer.token_strings, keep,
                                                base.sampling, done={r.prompt_index for r in records})
    except BaseException:
        logger.error(f"sweep stopped; the partial logs in {output_dir} have no {DONE}: the same command with "
                     f"--output_dir {shlex.quote(str(output_dir))} resumes it")
        raise
    finally:
        writer.close()

    rows = summary_rows(records)
    write_atomic(output_dir / SUMMARY_CSV, to_csv(rows))
    write_atomic(output_dir / SUMMARY_MD, summary_markdown(rows, meta))
    write_json_atomic(output_dir / DONE, {
        "finished": datetime.datetime.now().isoformat(timespec="seconds"),
        "elapsed_s": round(time.perf_counter() - t0, 1), "runs": len(records), "mismatches": mismatches,
        "resumed": len(meta.get("resumed", [])),  # elapsed_s is the last session's alone
        "load_average_at_end": [round(v, 2) for v in os.getloadavg()],
    })
    print(spec_bench_table(rows, meta.get("not_run")))
    against = " (llama.cpp prompt lookup: from llama.cpp greedy)" if llama_cpp else ""
    rejection = [r for r in records if r.verify == REJECTION and r.method != TARGET]
    if rejection:  # recorded, not counted: distribution-equal, not token-equal
        against += (f"; {sum(not r.matches_target_only for r in rejection)}/{len(rejection)} rejection-sampled runs "
                    "differ from their target-only sample (expected: distribution-equal, not token-equal)")
    logger.info(f"{len(records)} runs, {mismatches} differing from target-only{against} -> {output_dir}")
    return 0


def batch_main(args, argv: list[str], plan, device, prompts, output_dir: Path, previous: dict | None,
               options: dict) -> int:
    """--batch_sizes: throughput of target-only and each method at each batch size."""
    sizes = int_list("batch_sizes", args.batch_sizes)
    engines = batch_sweep.build_engines(plan, device, max(sizes))
    target = next(iter(engines.values()))
    selected = fitting_prompts(prompts, target, plan.lengths[0], args.instruct)
    meta = {
        **run_header(args, argv, device),
        "versions": versions(), "options": options,
        "batch_sizes": sizes, "continuous": bool(args.continuous),
        "configurations": [c.id for c in engines],
        "prompts": [{"index": i, "category": p.category, "question_id": p.question_id, "prompt_tokens": len(ids),
                     "text": p.text} for i, p, ids in selected],
    }
    done, reference = [], None
    if previous is not None:
        check_resumable(output_dir, previous, {k: meta[k] for k in ("configurations", "prompts")})
        done, reference = batch_sweep.resume_rows(output_dir, meta["configurations"])
        recorded = sorted({r.batch_size for r in done})
        log_resume(output_dir, recorded, len(sizes), "batch_size")
        meta = resumed_meta(previous, argv, len(recorded), len(sizes), "batch_size")
    write_meta(output_dir, meta)
    logger.info(f"{len(engines)} configurations x batch sizes {sizes} over {len(selected)} prompts on "
                f"{device.describe()} -> {output_dir}")
    rows = batch_sweep.batch_sweep(engines, [ids for _, _, ids in selected], sizes, bool(args.continuous), output_dir,
                                   done, reference)
    print(batch_sweep.write_summary(rows, meta, output_dir))
    mismatches = sum(r.mismatches for r in rows)
    logger.info(f"{len(rows)} runs, {mismatches} outputs differing from target-only -> {output_dir}")
    return 1 if mismatches else 0


if __name__ == "__main__":
    run_cli(main)
