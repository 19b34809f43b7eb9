"""The training prompt mix: how many prompts each source gives, in one interleaved order.

Direct prompts are used as they are; written ones come from requests the target answers first
(its question, passage or translation becomes the prompt). The order interleaves the sources
evenly, so any first part of the list, and so any first chunks of the answers, is a fair sample
of the whole: the learning curve trains on such prefixes.
"""

from __future__ import annotations

from models.training import corpus, sources

DIRECT = {"authored": 0.16, "passage": 0.42, "word_problem": 0.16, "translation": 0.08}
WRITTEN = {"self_instruct": 0.10, "wrapped_passage": 0.04, "foreign_text": 0.04}


def counts(n: int, shares: dict[str, float]) -> dict[str, int]:
    return {source: round(n * share) for source, share in shares.items()}


def direct_prompts(n: int, seed: int, passages: list[tuple[str, str]]) -> dict[str, list[str]]:
    c = counts(n, DIRECT)
    return {
        "authored": corpus.authored_prompts(c["authored"], seed),
        "passage": sources.passage_prompts(c["passage"], seed, passages),
        "word_problem": sources.word_problems(c["word_problem"], seed),
        "translation": sources.translation_prompts(c["translation"], seed, sources.first_sentences(passages)),
    }


def writing_requests(n: int, seed: int, passages: list[tuple[str, str]]) -> list[tuple[str, str, str | None]]:
    """(source, request, wrapper): wrapper None uses the target's answer as the prompt, otherwise
    the answer fills the wrapper's {text}."""
    c = counts(n, WRITTEN)
    topics = sources.topics_from(passages)
    groups = {
        "self_instruct": sources.self_instruct_requests(c["self_instruct"], seed, topics),
        "wrapped_passage": sources.wrapped_passage_requests(c["wrapped_passage"], seed, topics),
        "foreign_text": sources.foreign_text_requests(c["foreign_text"], seed, sources.first_sentences(passages)),
    }
    return [(source, request, wrapper) for source, items in groups.items() for request, wrapper in items]


def interleave(groups: dict[str, list[str]]) -> list[tuple[str, str]]:
    """(source, prompt) with every source spread evenly over the list (stable for the input)."""
    keyed = [((i + 0.5) / len(items), s, source, prompt)
             for s, (source, items) in enumerate(groups.items()) for i, prompt in enumerate(items)]
    return [(source, prompt) for _, _, source, prompt in sorted(keyed, key=lambda k: (k[0], k[1]))]
