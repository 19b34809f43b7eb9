"""Prompt sources beyond the authored templates, so every Spec-Bench category has a counterpart
in the training data (summarisation, retrieval-style questions, extraction, translation, maths
word problems, questions, coding, writing) without ever reading an evaluation prompt.

Passages come from the docstrings of the Python standard library that runs this code (PSF
licence, present on every machine); word problems are generated from authored templates; the
foreign-language text for translation is written by the target itself. Every list is
deterministic for a seed, and its first n items do not depend on how many are asked for.
"""

from __future__ import annotations

import ast
import random
import re
import sysconfig
from pathlib import Path

from models.training.corpus import LANGUAGES, SELF_WRITTEN, TOPICS

SKIP_DIRS = {"test", "tests", "idlelib", "lib2to3", "site-packages", "dist-packages", "turtledemo", "__pycache__"}


def stdlib_passages(min_words: int = 30, max_words: int = 300) -> list[tuple[str, str]]:
    """(dotted name, docstring) for the standard library's documented modules, classes and
    functions, in a stable order; doctest lines dropped, whitespace normalised."""
    root = Path(sysconfig.get_paths()["stdlib"])
    passages: list[tuple[str, str]] = []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root)
        if SKIP_DIRS & set(rel.parts) or rel.name.startswith("_") and rel.name != "__init__.py":
            continue
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, ValueError):
            continue
        module = ".".join(rel.with_suffix("").parts).removesuffix(".__init__")
        for node in [tree, *ast.walk(tree)]:
            if not isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef)):
                continue
            if isinstance(node, (ast.ClassDef, ast.FunctionDef)) and node.name.startswith("_"):
                continue
            doc = ast.get_docstring(node)
            if not doc:
                continue
            text = "\n".join(line for line in doc.splitlines() if not line.lstrip().startswith((">>>", "...")))
            text = re.sub(r"[ \t]+", " ", re.sub(r"\n{3,}", "\n\n", text)).strip()
            n = len(text.split())
            if min_words <= n <= max_words:
                name = module if isinstance(node, ast.Module) else f"{module}.{node.name}"
                passages.append((name, text))
    unique: dict[str, tuple[str, str]] = {}
    for name, text in passages:
        unique.setdefault(text, (name, text))
    return list(unique.values())


PASSAGE_TASKS = [
    "Summarize: {passage}",
    "Summarize the following documentation in two sentences.\n\n{passage}",
    "Explain in plain words what `{name}` does, based on its documentation:\n\n{passage}",
    "{passage}\n\nBased on the text above, when would a programmer use `{name}`?",
    "Here is a passage from the Python documentation:\n\n{passage}\n\nWrite three questions a reader could ask about it, and answer them.",
    "Rewrite the following text so that a beginner can understand it:\n\n{passage}",
    "Continue this text with one more paragraph:\n\n{passage}",
    "Extract the key terms from the text below as a bulleted list, with a short definition of each.\n\n{passage}",
    "Write a short Python example that uses `{name}`, based on this description:\n\n{passage}",
    "Answer the question using the passage.\nPassage: {passage}\nQuestion: What does `{name}` do, and what does it return?",
    "{passage}\n\nList the facts stated in this text, one per line.",
    "Read the text and say whether it describes a function, a class or a module, and why.\n\n{passage}",
]


def _distinct(n: int, rng: random.Random, *choices: list) -> list[tuple]:
    """Up to n distinct combinations of one item from each list, in a shuffled order (greedy
    decoding answers a repeated prompt identically: a repeat is wasted time)."""
    combos = [()]
    for items in choices:
        combos = [c + (item,) for c in combos for item in items]
    rng.shuffle(combos)
    return combos[:n]


def passage_prompts(n: int, seed: int, passages: list[tuple[str, str]]) -> list[str]:
    """n distinct tasks over the passages."""
    return [task.format(name=name, passage=text)
            for (name, text), task in _distinct(n, random.Random(seed + 11), passages, PASSAGE_TASKS)]


def first_sentences(passages: list[tuple[str, str]], min_words: int = 8, max_words: int = 30) -> list[str]:
    """Plain first sentences of the passages, for translation."""
    out = []
    for _, text in passages:
        sentence = re.split(r"(?<=[.!?])\s", text.replace("\n", " "), maxsplit=1)[0].strip()
        if min_words <= len(sentence.split()) <= max_words and not re.search(r"[`*_:{}\[\]<>=]", sentence):
            out.append(sentence)
    return list(dict.fromkeys(out))


TRANSLATE_TO = [
    "Translate English to {language}: {sentence}",
    "Translate this sentence into {language}: {sentence}",
    "How would you say this in {language}? \"{sentence}\"",
]


def translation_prompts(n: int, seed: int, sentences: list[str]) -> list[str]:
    """English sentences to translate into another language (the target's own answer is the data)."""
    return [template.format(language=language, sentence=sentence) for template, language, sentence
            in _distinct(n, random.Random(seed + 12), TRANSLATE_TO, LANGUAGES, sentences)]


def foreign_text_requests(n: int, seed: int, sentences: list[str]) -> list[tuple[str, str]]:
    """(request, wrapper): the target translates an English sentence, and its translation becomes
    a translate-into-English prompt, the shape of Spec-Bench's translation questions."""
    return [(f"Translate into {language}. Write only the translation.\n\n{sentence}",
             f"Translate {language} to English: {{text}}")
            for language, sentence in _distinct(n, random.Random(seed + 13), FOREIGN, sentences)]


FOREIGN = ["German", "French", "Spanish", "Italian"]


def wrapped_passage_requests(n: int, seed: int, topics: list[str]) -> list[tuple[str, str | None]]:
    """(request, wrapper): the target writes a passage on a topic, and a summarise / extract /
    answer instruction wraps it (the shape of Spec-Bench's summarisation and RAG questions)."""
    return [(request.format(topic=topic), wrapper)
            for (request, wrapper), topic in _distinct(n, random.Random(seed + 16), SELF_WRITTEN, topics)]


NAMES = ["Ana", "Ben", "Chloe", "Dev", "Elena", "Farid", "Grace", "Hugo", "Ines", "Jonas", "Kira", "Liam",
         "Maya", "Noah", "Omar", "Priya", "Quinn", "Rosa", "Sam", "Tara", "Umar", "Vera", "Wei", "Yusuf", "Zoe"]
ITEMS = ["pencils", "apples", "stickers", "books", "marbles", "cookies", "tickets", "plants", "cards", "bottles"]

WORD_PROBLEMS = [
    "{name} buys {a} {items} at ${p} each and pays with a ${bill} bill. How much change does {name} get?",
    "{name} has {a} {items}. {name} gives {b} to {name2} and then buys {c} packs of {d} {items}. How many {items} does {name} have now?",
    "A bus travels at {s} km per hour for {h} hours, then at {s2} km per hour for {h2} hours. How far does it travel in total?",
    "{name} earns ${w} per hour and works {h} hours a day for {d} days. {name} spends {pct}% of the money on rent. How much is left?",
    "A jacket costs ${p0}. It goes on sale for {pct}% off, and then {name} uses a ${c} coupon. What does {name} pay?",
    "A recipe needs {a} cups of flour for {b} cookies. How many cups of flour are needed for {c2} cookies?",
    "{name} reads {a} pages on Monday, twice as many on Tuesday, and {b} fewer than Tuesday on Wednesday. How many pages does {name} read in the three days?",
    "A garden is {a} metres long and {b} metres wide. A path {c0} metre wide runs around its outside. What is the area of the path?",
    "{name} saves ${a} every week. How many weeks will it take to buy a bike that costs ${big}?",
    "There are {a} students in a class. {pct}% of them walk to school and {b} of the rest come by bus. How many come another way?",
    "{name} is {a} years old. {name2} is {b} years older than twice {name}'s age. How old will {name2} be in {c} years?",
    "A tank holds {big} litres of water. It leaks {a} litres an hour while a tap adds {b} litres an hour. How long until it is empty if it starts full?",
    "What is the sum of all whole numbers from {a} to {big}?",
    "If {pct}% of a number is {a}, what is the number?",
    "The points ({x1}, {y1}), ({x2}, {y2}) and ({x3}, {y3}) form a triangle. What is its area?",
    "Solve the system: {a}x + {b}y = {c3}, x - y = {d}.",
    "A shop sells {items} in boxes of {d}. {name} needs {big} {items}. How many boxes must {name} buy, and how many {items} are left over?",
    "{name} runs {a} laps of a {b}00-metre track every day for {d} days. How many kilometres is that?",
]


def word_problems(n: int, seed: int) -> list[str]:
    """Multi-step arithmetic word problems (the shape of GSM8K and MT-bench maths), all distinct."""
    rng = random.Random(seed + 14)
    out: list[str] = []
    seen: set[str] = set()
    while len(out) < n:
        a, b, c, d = rng.randint(2, 40), rng.randint(2, 20), rng.randint(2, 12), rng.randint(3, 12)
        p = rng.randint(2, 15)
        x = rng.randint(-5, 5)
        text = rng.choice(WORD_PROBLEMS).format(
            name=rng.choice(NAMES), name2=rng.choice(NAMES), items=rng.choice(ITEMS), a=a, b=b, c=c, d=d, p=p,
            bill=(a * p // 10 + 1) * 10, s=rng.randint(30, 90), s2=rng.randint(30, 90), h=rng.randint(1, 8),
            h2=rng.randint(1, 6), w=rng.randint(10, 40), pct=rng.choice([5, 10, 15, 20, 25, 30, 40, 50, 60, 75]),
            p0=rng.randint(20, 200), c2=b * rng.randint(2, 5), c0=rng.randint(1, 3), big=rng.randint(50, 500),
            x1=rng.randint(-5, 5), y1=rng.randint(-5, 5), x2=rng.randint(-5, 5), y2=rng.randint(-5, 5),
            x3=rng.randint(-5, 5), y3=rng.randint(-5, 5), c3=a * x + b * (x - d),
        )
        if text not in seen:
            seen.add(text)
            out.append(text)
    return out


ASKERS = ["a curious student", "a journalist", "a doctor", "a ten-year-old", "an engineer", "a historian",
          "a farmer", "a tourist", "a teacher", "a software developer", "a chef", "a lawyer"]
QUESTION_KINDS = ["a why question", "a how question", "a question comparing two things", "a short factual question",
                  "a question asking for advice", "a question asking for a list", "a what-if question"]
SELF_INSTRUCT = [
    "Write {kind} that {asker} might ask about {topic}. Write only the question.",
    "Write one instruction that {asker} might give an assistant about {topic}. Write only the instruction.",
]


def self_instruct_requests(n: int, seed: int, topics: list[str]) -> list[tuple[str, str | None]]:
    """(request, None): the target writes a question or an instruction, which becomes a prompt.
    Greedy decoding repeats itself for a repeated request, so each request is distinct."""
    return [(s.format(kind=k, asker=a, topic=t), None)
            for t, a, k, s in _distinct(n, random.Random(seed + 15), topics, ASKERS, QUESTION_KINDS, SELF_INSTRUCT)]


def topics_from(passages: list[tuple[str, str]]) -> list[str]:
    """The authored topics plus a topic per standard-library module ("the Python module json")."""
    modules = sorted({name.split(".")[0] for name, _ in passages})
    return TOPICS + [f"the Python module {m}" for m in modules]
