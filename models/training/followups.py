"""Second turns: a follow-up request after the target's own first answer.

A chat's later turns read differently from its first: the reply leans on the assistant's own
earlier words (shorten it, list it, translate it, check it). Spec-Bench's multi-turn category
and any chat use are such turns, and first-turn prompts alone never show the heads one. A
follow-up conversation is a training prompt (user, the target's answer, a follow-up request)
whose next answer the target gives greedily like any other.

The requests are written here, for this suite. They are frozen: which prompt gets which request
is drawn from the list, so an edit changes the conversations and the saved follow-up answers no
longer match them (a changed list needs a new data folder).
"""

from __future__ import annotations

import random

from models.training.corpus import LANGUAGES

Conversation = list[dict[str, str]]

REQUESTS = [
    "Can you say that again in fewer words?",
    "Explain that to a ten-year-old.",
    "Give one concrete example of that.",
    "Turn your answer into a numbered list of steps.",
    "Which part of your answer matters most, and why?",
    "Expand on the last point you made.",
    "Rewrite your reply in a formal, professional tone.",
    "Sum up your reply in a single sentence.",
    "Check your answer for mistakes and correct any you find.",
    "Write a short title for what you just wrote.",
    "Please continue.",
    "What would someone who disagrees with you say?",
    "Make it more detailed.",
    "Now put it as a short poem.",
    "List three questions a reader might ask after reading that.",
    "Rewrite it as an email to a colleague.",
    "What are the pros and cons of what you described?",
    "Can you give me a real-world use for this?",
    "Pick the key terms from your answer and define each in one line.",
    "Say the same thing, but for an expert audience.",
    "Translate your previous answer into {language}.",
    "Walk me through the reasoning behind your answer.",
    "Give me a shorter version I can post online.",
    "How sure are you about that? What could be wrong?",
    "Add one more paragraph with something new.",
    "Rewrite it without any technical words.",
    "What should I do first?",
    "Thanks! Can you also put that in a small table?",
    "Could you write Python code that shows this?",
    "Compare that with a common alternative.",
]


def conversations(prompts: list[str], answers: list[str], share: float, seed: int, chunk: int) -> list[Conversation]:
    """Follow-up conversations for about `share` of a chunk's prompts (drawn for the seed and the
    chunk; prompts whose answer is empty are passed over), in the chunk's order."""
    rng = random.Random(f"followups-{seed}-{chunk}")
    picked = sorted(rng.sample(range(len(prompts)), round(share * len(prompts))))
    chosen: list[Conversation] = []
    for i in picked:
        request = rng.choice(REQUESTS).format(language=rng.choice(LANGUAGES))
        if answers[i]:
            chosen.append([{"role": "user", "content": prompts[i]}, {"role": "assistant", "content": answers[i]},
                           {"role": "user", "content": request}])
    return chosen


def text(conversation: Conversation) -> str:
    """Every turn's words, for the evaluation-overlap check (the target's answer included)."""
    return "\n".join(turn["content"] for turn in conversation)
