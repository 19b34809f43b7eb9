#!/usr/bin/env python3
"""Teacher-forced draft accuracy of a speculator on the target's own answers, per draft step.

    python scripts/speculator_accuracy.py --kind eagle                       # the shipped head, held-out split
    python scripts/speculator_accuracy.py --speculator PATH --split train --output acc.json

The held-out split is the data folder's first chunk of answers, which training never reads; the
train split is a sample of the chunks it does read. A head that scores far better on train than
held out has fitted its data rather than learnt the target. See
models/speculative/speculators/evaluate.py for what each step scores.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from loguru import logger

from models.common.cli import ArgumentParser, run_cli, write_json_atomic
from models.common.device import open_device
from models.common.errors import UserError
from models.llama.weights import DEFAULT_MODEL, load_model
from models.speculative.speculators import heads
from models.speculative.speculators.dataset import HELD_OUT_CHUNKS, DataFolder, answers_chunk, data_name, load_chunk
from models.speculative.speculators.evaluate import accuracy

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
    p.add_argument("--output", default=None, help="also write the figures as JSON here")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if (args.kind is None) == (args.speculator is None):
        raise UserError("give one of --kind (the shipped speculator) or --speculator PATH")
    for flag in ("max_examples", "steps", "topk"):
        if getattr(args, flag) < 1:
            raise UserError(f"--{flag} must be >= 1, got {getattr(args, flag)}")
    name = data_name(args.model)
    folder = DataFolder(Path(args.data_dir) if args.data_dir else REPO / "data" / "speculator" / name)
    work = Path(args.work_dir) if args.work_dir else REPO / ".cache" / "train" / name
    work.mkdir(parents=True, exist_ok=True)
    prompts = folder.prompts()
    size = folder.settings["chunk_size"]
    loaded = load_model(args.model, device=open_device("cpu", "float32").torch_device)
    path = Path(args.speculator) if args.speculator else heads.SHIPPED / f"{name}-{args.kind}"
    head = heads.load(path, loaded.model)

    chunks = range(HELD_OUT_CHUNKS) if args.split == "held_out" else range(HELD_OUT_CHUNKS, -(-len(prompts) // size))
    examples = []
    for n in chunks:
        chunk = load_chunk(folder, work, loaded.model, loaded.tokenizer, answers_chunk(n), prompts[n * size : (n + 1) * size])
        if chunk is None:
            continue  # not answered yet
        examples += chunk[1]
        if len(examples) >= args.max_examples:
            break
    if not examples:
        raise UserError(f"{folder.folder} has no answered chunk in the {args.split} split yet")
    examples = examples[: args.max_examples]
    scores = accuracy(head, examples, steps=args.steps, topk=args.topk)
    top = f"top{args.topk}"
    logger.info(f"{path.name} on {len(examples)} {args.split} examples of {folder.folder}")
    print(f"| step | top-1 | top-{args.topk} | positions |\n|---:|---:|---:|---:|")
    for s, (a1, ak, n) in enumerate(zip(scores["top1"], scores[top], scores["positions"]), start=1):
        print(f"| {s} | {a1:.1%} | {ak:.1%} | {n} |")
    if args.output:
        write_json_atomic(Path(args.output), {"speculator": str(path), "split": args.split,
                                              "examples": len(examples), **scores})
    return 0


if __name__ == "__main__":
    run_cli(main)
