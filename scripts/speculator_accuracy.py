#!/usr/bin/env python3
"""Teacher-forced draft accuracy of a speculator on the target's own answers, per draft step.

    python scripts/speculator_accuracy.py --kind eagle                       # the shipped head, held-out split
    python scripts/speculator_accuracy.py --speculator PATH --split train --output acc.json

    python scripts/speculator_accuracy.py --kind eagle --per_category 8 \
        --bench_file ../shared/data/spec_bench/question.jsonl   # the target's answers to Spec-Bench, by category

The held-out split is the data folder's first chunk of answers, which training never reads; the
train split is the first --max_examples first turns of the chunks it does read. A head that scores
far better on train than held out has fitted its data rather than learnt the target. --bench_file
(or --input_prompts) scores the target's own greedy answers to evaluation prompts instead, decoded
here, per category: set beside the held-out split, it says how far the training prompts' domain
carries. A second table splits step 1 by how sure the target itself was of each token (its top-1
probability): it tells a domain the head lacks (lower top-1 at the same certainty) from answers the
target hesitates over (more positions in the low bins). See
models/training/evaluate.py for what each step scores. A third table splits step 1
into tokens that already appeared earlier in the sequence (the target may be copying them from the
prompt) and new ones, and gives the share of labels outside the head's draft vocabulary;
--full_vocab scores the same head drafting from the target's whole vocabulary.
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
from loguru import logger

from models.common.cli import (
    ArgumentParser, check_writable, prompt_context_arg, read_json_file, run_cli, write_json_atomic,
)
from models.common.device import open_device
from models.common.errors import UserError
from models.benchmark.sources import from_prompt_files, from_spec_bench, select
from models.llama.weights import DEFAULT_MODEL, load_model
from models.speculative.generator import Generator
from models.speculative.speculators import heads
from models.training import data
from models.training.dataset import HELD_OUT_CHUNKS, DataFolder, answers_chunk, data_name, load_chunk
from models.training.evaluate import accuracy, certainty_bins

REPO = Path(__file__).resolve().parents[1]


def parse_args(argv=None):
    p = ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--kind", choices=heads.KINDS, help="the speculator shipped for --model")
    p.add_argument("--speculator", help="a speculator folder (instead of --kind)")
    p.add_argument("--model", default=DEFAULT_MODEL)
    p.add_argument("--data_dir", default=None, help="default: data/speculator/MODEL")
    p.add_argument("--work_dir", default=None, help="hidden-state cache (default: .cache/train/MODEL)")
    p.add_argument("--split", choices=("held_out", "train"), default="held_out")
    p.add_argument("--max_examples", type=int, default=256)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--topk", type=int, default=4)
    p.add_argument("--bench_file", default=None, help="score on Spec-Bench's first turns instead of a split")
    p.add_argument("--input_prompts", nargs="+", default=None, help="score on prompt files instead of a split")
    p.add_argument("--per_category", type=int, default=None, help="with --bench_file: the first N of each category")
    p.add_argument("--max_new_tokens", type=int, default=128, help="the target's answer length on evaluation prompts")
    p.add_argument("--prompt_context", type=prompt_context_arg, default=None,
                   help="prompt positions the head sees before each answer: a number, or all (default, as drafting)")
    p.add_argument("--certainty_reference", default=None,
                   help="an --output of this script (say the held-out split's): also give the step-1 top-1 these "
                        "positions would score at its accuracy per certainty bin, the part of the difference the "
                        "target's own certainty explains")
    p.add_argument("--full_vocab", action="store_true",
                   help="draft from the target's whole vocabulary instead of the head's draft vocabulary (the same "
                        "weights: what a larger draft vocabulary could buy)")
    p.add_argument("--output", default=None, help="also write the figures as JSON here")
    return p.parse_args(argv)


def evaluation_examples(args, loaded, layers: tuple[int, ...]) -> tuple[list, list[str]]:
    """The target's greedy answers to evaluation prompts, with the hidden states decoding made (of
    `layers` too, for a head that reads them), and each prompt's category (never training data:
    this only scores)."""
    prompts = from_spec_bench(args.bench_file) if args.bench_file else from_prompt_files(args.input_prompts)
    prompts = select(prompts, None, args.per_category)
    ids = [loaded.tokenizer.encode(p.text, chat=True) for p in prompts]
    generator = Generator(loaded.model, max_seq_len=max(map(len, ids)) + args.max_new_tokens,
                          eos_token_ids=loaded.tokenizer.eos_token_ids, record_hidden=True)
    generator.record_layers = layers
    results = data.answer_prompts(generator, ids, args.max_new_tokens, rows=16, desc="the target's answers")
    return data.keep_context(data.examples_from(ids, results), args.prompt_context), [p.category for p in prompts]


def main(argv=None) -> int:
    args = parse_args(argv)
    if (args.kind is None) == (args.speculator is None):
        raise UserError("give one of --kind (the shipped speculator) or --speculator PATH")
    if args.bench_file and args.input_prompts:
        raise UserError("give --bench_file or --input_prompts, not both")
    for flag in ("max_examples", "steps", "topk", "max_new_tokens"):
        if getattr(args, flag) < 1:
            raise UserError(f"--{flag} must be >= 1, got {getattr(args, flag)}")
    if args.output:
        check_writable(args.output)  # before the model loads, not after the scoring
    reference = reference_accuracy(Path(args.certainty_reference)) if args.certainty_reference else None
    name = data_name(args.model)
    bench = bool(args.bench_file or args.input_prompts)
    data_dir = Path(args.data_dir) if args.data_dir else REPO / "data" / "speculator" / name
    folder = None if bench else DataFolder(data_dir)
    loaded = load_model(args.model, device=open_device("cpu", "float32").torch_device)
    path = Path(args.speculator) if args.speculator else heads.SHIPPED / f"{name}-{args.kind}"
    head = heads.load(path, loaded.model)
    if args.full_vocab:
        head = heads.with_draft_vocab(head, torch.arange(loaded.model.vocab_size), loaded.model)
    if folder is None:
        split = "bench"
        examples, categories = evaluation_examples(args, loaded, head.config.hidden_layers)
        source = args.bench_file or ", ".join(args.input_prompts)
    else:
        split, categories = args.split, None
        examples = split_examples(args, loaded, folder, name, head.config.hidden_layers)
        source = str(folder.folder)
    # a step's logits over the full vocabulary are six times the draft vocabulary's: fewer rows at once
    score = functools.partial(accuracy, head, steps=args.steps, topk=args.topk, target_lm_head=loaded.model.output,
                              batch_size=2 if args.full_vocab else 16)
    scores = score(examples)
    top = f"top{args.topk}"
    logger.info(f"{path.name} on {len(examples)} {split} examples of {source}")
    rows = [("all", scores)]
    if categories is not None:
        for category in dict.fromkeys(categories):
            mine = [e for e, c in zip(examples, categories) if c == category]
            rows.append((category, score(mine)))
    print(f"| examples | step | top-1 | top-{args.topk} | positions |\n|---|---:|---:|---:|---:|")
    for label, figures in rows:
        for s, (a1, ak, n) in enumerate(zip(figures["top1"], figures[top], figures["positions"]), start=1):
            print(f"| {label} | {s} | {a1:.1%} | {ak:.1%} | {n} |")
    print("\n| examples | target's top-1 probability | share of step-1 positions | step-1 top-1 |\n|---|---|---:|---:|")
    for label, figures in rows:
        total = max(1, sum(b["positions"] for b in figures["step1_by_certainty"]))
        for b in figures["step1_by_certainty"]:
            print(f"| {label} | {b['certainty']} | {b['positions'] / total:.1%} | {b['top1']:.1%} |")
    print("\n| examples | step-1 top-1: tokens seen earlier in the sequence (share) | new tokens | labels outside the "
          "draft vocabulary |\n|---|---:|---:|---:|")
    for label, figures in rows:
        (seen, new), n = figures["step1_by_copy"], max(1, figures["positions"][0])
        print(f"| {label} | {seen['top1']:.1%} ({seen['positions'] / n:.0%}) | {new['top1']:.1%} | "
              f"{figures['outside_draft_vocab']:.1%} |")
    if reference is not None:
        print(f"\n| examples | step-1 top-1 | at {args.certainty_reference}'s accuracy per certainty |\n|---|---:|---:|")
        for label, figures in rows:
            figures["step1_at_reference_certainty"] = at_certainty_of(figures, reference)
            print(f"| {label} | {figures['top1'][0]:.1%} | {figures['step1_at_reference_certainty']:.1%} |")
    if args.output:
        by_category = {label: figures for label, figures in rows[1:]}
        write_json_atomic(Path(args.output), {"speculator": str(path), "split": split, "source": source,
                                              "examples": len(examples), "full_vocab": args.full_vocab, **scores,
                                              **({"certainty_reference": args.certainty_reference} if reference else {}),
                                              **({"by_category": by_category} if by_category else {})})
    return 0


def reference_accuracy(path: Path) -> dict[str, float]:
    """--certainty_reference: step-1 top-1 per certainty bin from an earlier --output."""
    figures = read_json_file(path, "--certainty_reference")
    bins = figures.get("step1_by_certainty") if isinstance(figures, dict) else None
    if not bins or [b.get("certainty") for b in bins] != certainty_bins():
        raise UserError(f"--certainty_reference {path} has no step-1 figures per certainty bin "
                        f"({certainty_bins()}); give an --output of this script")
    return {b["certainty"]: b["top1"] for b in bins}


def at_certainty_of(figures: dict, reference: dict[str, float]) -> float:
    """Step-1 top-1 if each certainty bin scored as in the reference: these positions' mix of
    certainty, the reference's accuracy at each."""
    bins = figures["step1_by_certainty"]
    total = sum(b["positions"] for b in bins)
    return sum(b["positions"] * reference[b["certainty"]] for b in bins) / total if total else 0.0


def split_examples(args, loaded, folder: DataFolder, name: str, layers: tuple[int, ...]) -> list:
    """Up to --max_examples examples of the data folder's held-out or training split (hidden states
    of `layers` too, for a head that reads them)."""
    work = Path(args.work_dir) if args.work_dir else REPO / ".cache" / "train" / name
    work.mkdir(parents=True, exist_ok=True)
    prompts = folder.prompts()
    size = folder.settings["chunk_size"]
    chunks = range(HELD_OUT_CHUNKS) if args.split == "held_out" else range(HELD_OUT_CHUNKS, -(-len(prompts) // size))
    examples = []
    for n in chunks:
        part = prompts[n * size : (n + 1) * size]
        chunk = load_chunk(folder, work, loaded.model, loaded.tokenizer, answers_chunk(n), part,
                           context=args.prompt_context, layers=layers)
        if chunk is None:
            continue  # not answered yet
        examples += chunk[1]
        if len(examples) >= args.max_examples:
            break
    if not examples:
        raise UserError(f"{folder.folder} has no answered chunk in the {args.split} split yet")
    return examples[: args.max_examples]


if __name__ == "__main__":
    run_cli(main)
