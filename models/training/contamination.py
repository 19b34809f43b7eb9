"""Training prompts must share no long word n-gram with any prompt an evaluation uses.

Exact-string checks miss a benchmark question pasted into a longer prompt, or one the model
repeats while writing its own prompts; a shared run of N words (N = 8 by default, lowercased,
punctuation dropped) catches both, and a template's short fixed wording never trips it.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from models.common.errors import UserError
from models.common.prompts import load_prompts

REPO = Path(__file__).resolve().parents[2]
NGRAM = 8
PROMPT_FILES = "*prompts*.json"  # in a source folder, the files read as prompt files
UNSEEN_PROMPTS = REPO / "docs" / "benchmarks" / "unseen_prompts"
HELD_OUT_PROMPTS = Path(__file__).resolve().parent / "held_out_prompts.json"  # test_shipped_speculators' prompts
# what the suite evaluates on: the demo's prompts, the benchmark's prompt files, the prompts
# nobody here wrote (scripts/unseen_prompts.py), the held-out speculator prompts, and Spec-Bench
# where this machine has it (it is not part of the repo)
EVALUATION_SOURCES = (
    REPO / "sample_prompts",
    REPO / "docs" / "benchmarks",
    *sorted(UNSEEN_PROMPTS.glob("*.json")),
    HELD_OUT_PROMPTS,
    REPO.parent / "shared" / "data" / "spec_bench" / "question.jsonl",
)


def words(text: str) -> list[str]:
    return re.findall(r"\w+", text.lower())


def ngrams(text: str, n: int = NGRAM) -> set[tuple[str, ...]]:
    w = words(text)
    return {tuple(w[i : i + n]) for i in range(len(w) - n + 1)}


def evaluation_texts(sources=EVALUATION_SOURCES) -> tuple[list[str], list[Path]]:
    """Every prompt text in the sources (prompt files, Spec-Bench jsonl turns, folders of them),
    and the sources that were found."""
    texts: list[str] = []
    found: list[Path] = []
    for source in map(Path, sources):
        files = sorted(source.rglob(PROMPT_FILES)) if source.is_dir() else [source] if source.exists() else []
        for path in files:
            found.append(path)
            if path.suffix == ".jsonl":
                for line in path.read_text(encoding="utf-8").splitlines():
                    if line.strip():
                        texts += json.loads(line).get("turns", [])
            else:
                data = json.loads(path.read_text(encoding="utf-8"))
                if not isinstance(data, list):  # say, a result file whose name happens to match
                    raise UserError(f"{path} is named like a prompt file ({PROMPT_FILES}) but holds no list of "
                                    f"prompts; rename it, since the contamination check reads every such file")
                texts += data if data and isinstance(data[0], str) else [p.text for p in load_prompts(path)]
    return texts, found


class Contamination:
    """Which texts share an n-gram with the evaluation texts. An evaluation text shorter than n
    words (a short question) is matched whole, from MIN_WHOLE words up."""

    MIN_WHOLE = 5

    def __init__(self, evaluation: list[str], n: int = NGRAM):
        self.n = n
        self.grams: set[tuple[str, ...]] = set()
        self.lengths = {n}
        for text in evaluation:
            w = words(text)
            if self.MIN_WHOLE <= len(w) < n:
                self.grams.add(tuple(w))
                self.lengths.add(len(w))
            else:
                self.grams |= ngrams(text, n)

    def shared(self, text: str) -> set[tuple[str, ...]]:
        return set().union(*(ngrams(text, length) & self.grams for length in self.lengths))

    def clean(self, texts: list[str]) -> tuple[list[int], list[int]]:
        """(indices of texts that share nothing, indices of those that do)."""
        keep, drop = [], []
        for i, text in enumerate(texts):
            (drop if self.shared(text) else keep).append(i)
        return keep, drop
