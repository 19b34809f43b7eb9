"""Where benchmark prompts come from: prompt files (category = file stem) or Spec-Bench.

Spec-Bench's question.jsonl holds {question_id, category, turns}; the first turn is the prompt
(single-turn). Its file has 13 categories, and Spec-Bench reports six: the eight MT-bench ones
(writing, roleplay, ...) are one, `mt_bench`, kept as each prompt's `subcategory`. A selection is
deterministic: the first N prompts of each category, taking its subcategories in turn (so 8
MT-bench prompts are one of each), in file order, so two runs with the same flags time the same
questions.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from models.common.errors import UserError
from models.common.prompts import load_prompts


@dataclasses.dataclass(frozen=True)
class BenchPrompt:
    text: str
    category: str
    source: str  # the file it came from
    question_id: int | str | None = None  # Spec-Bench's id; None for prompt files
    item: int = 0  # position in its file
    subcategory: str = ""  # Spec-Bench's own category when `category` groups several (MT-bench)

    def describe(self) -> str:
        qid = f" question_id={self.question_id}" if self.question_id is not None else f" item {self.item}"
        sub = f"/{self.subcategory}" if self.subcategory and self.subcategory != self.category else ""
        return f"{Path(self.source).name}{qid} ({self.category}{sub})"


def from_prompt_files(paths: list[str]) -> list[BenchPrompt]:
    """Prompt files in the suite's format; each file's stem is its category."""
    prompts = []
    for path in paths:
        for i, p in enumerate(load_prompts(path)):
            prompts.append(BenchPrompt(p.text, Path(path).stem, str(path), None, i))
    return prompts


def _read_questions(path: Path) -> list[dict]:
    if not path.is_file():
        raise UserError(f"bench file {str(path)!r} not found")
    questions = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            q = json.loads(line)
        except json.JSONDecodeError as exc:
            raise UserError(f"{path}: line {n} is not valid JSON ({exc.msg})") from None
        turns = q.get("turns") if isinstance(q, dict) else None
        if not isinstance(turns, list) or not turns or not isinstance(turns[0], str) or "category" not in q:
            raise UserError(f"{path}: line {n} needs 'category' and a non-empty 'turns' list of strings")
        questions.append(q)
    if not questions:
        raise UserError(f"{path}: no questions")
    return questions


MT_BENCH = "mt_bench"
MT_BENCH_CATEGORIES = ("writing", "roleplay", "reasoning", "math", "coding", "extraction", "stem", "humanities")


def from_spec_bench(path: str) -> list[BenchPrompt]:
    """Every question of a Spec-Bench file, its first turn as the prompt, in Spec-Bench's six categories."""
    prompts = []
    for i, q in enumerate(_read_questions(Path(path))):
        category = str(q["category"])
        group = MT_BENCH if category in MT_BENCH_CATEGORIES else category
        prompts.append(BenchPrompt(q["turns"][0], group, str(path), q.get("question_id"), i, category))
    return prompts


def _round_robin(prompts: list[BenchPrompt]) -> list[BenchPrompt]:
    """One category's prompts taking its subcategories in turn, each in file order."""
    rank: dict[str, int] = {}
    keyed = []
    for p in prompts:
        rank[p.subcategory] = rank.get(p.subcategory, 0) + 1
        keyed.append((rank[p.subcategory], p))
    order = list(dict.fromkeys(p.subcategory for p in prompts))
    return [p for _, p in sorted(keyed, key=lambda kp: (kp[0], order.index(kp[1].subcategory)))]


def select(prompts: list[BenchPrompt], categories: list[str] | None, per_category: int | None) -> list[BenchPrompt]:
    """The first `per_category` prompts of each selected category (or subcategory), subcategories
    taken in turn; the result keeps file order (deterministic)."""
    if per_category is not None and per_category < 1:
        raise UserError(f"--per_category must be >= 1, got {per_category}")
    known = list(dict.fromkeys(p.category for p in prompts))
    subs = [s for s in dict.fromkeys(p.subcategory for p in prompts) if s and s not in known]
    unknown = [c for c in categories or [] if c not in known and c not in subs]
    if unknown:
        raise UserError(f"unknown categor{'y' if len(unknown) == 1 else 'ies'} {', '.join(unknown)}; "
                        f"the prompts have {', '.join(known + subs)}")
    wanted = set(categories or known)
    kept = [p for p in prompts if p.category in wanted or p.subcategory in wanted]
    chosen: set[int] = set()
    for category in dict.fromkeys(p.category for p in kept):
        ordered = _round_robin([p for p in kept if p.category == category])
        chosen.update(id(p) for p in ordered[:per_category])
    return [p for p in kept if id(p) in chosen]
