"""Prompt files: a JSON list of {"prompt": str, "context"?: str, "max_length"?: int}.

`context` is text placed before the prompt; `max_length` keeps that many of its first
characters. Every malformed file is refused with one line naming the file, item and field.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from models.common.cli import read_json_file
from models.common.errors import UserError

ALLOWED_KEYS = {"prompt", "context", "max_length"}


@dataclasses.dataclass(frozen=True)
class Prompt:
    prompt: str
    context: str | None = None
    max_length: int | None = None

    @property
    def text(self) -> str:
        if not self.context:
            return self.prompt
        context = self.context[: self.max_length] if self.max_length else self.context
        return f"{context}\n\n{self.prompt}"


def _check_encodable(text: str | None, where: str) -> None:
    """JSON may escape a lone surrogate (\\ud800), which is no character: no tokenizer can encode it."""
    if text is None:
        return
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        bad = text[exc.start]
        raise UserError(f"{where} holds a lone surrogate {ascii(bad)} at character {exc.start}, which is not text; "
                        "remove it or pair it") from None


def parse_prompts(data: object, source: str) -> list[Prompt]:
    if not isinstance(data, list) or not data:
        raise UserError(f"{source}: expected a non-empty JSON list of prompt objects")
    prompts = []
    for i, item in enumerate(data):
        where = f"{source}: item {i}"
        if not isinstance(item, dict):
            raise UserError(f"{where} is a {type(item).__name__}, expected an object with a 'prompt' string")
        unknown = set(item) - ALLOWED_KEYS
        if unknown:
            raise UserError(f"{where} has unknown field(s) {sorted(unknown)}; allowed: {sorted(ALLOWED_KEYS)}")
        prompt = item.get("prompt")
        if not isinstance(prompt, str) or not prompt.strip():
            raise UserError(f"{where}: 'prompt' must be a non-empty string")
        context = item.get("context")
        if context is not None and not isinstance(context, str):
            raise UserError(f"{where}: 'context' must be a string")
        for field in ("prompt", "context"):
            _check_encodable(item.get(field), f"{where}: '{field}'")
        max_length = item.get("max_length")
        bad_type = isinstance(max_length, bool) or not isinstance(max_length, int)
        if max_length is not None and (bad_type or max_length < 1):
            raise UserError(f"{where}: 'max_length' must be a positive integer (characters of context kept)")
        prompts.append(Prompt(prompt, context, max_length))
    return prompts


def load_prompts(path: str | Path) -> list[Prompt]:
    return parse_prompts(read_json_file(path, "prompts file"), str(path))
