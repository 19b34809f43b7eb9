"""Tokenizers behind one small interface: transformers' for real models, bytes for random ones.

Random test models get a byte tokenizer so end-to-end tests need no model files at all.
"""

from __future__ import annotations

from typing import Protocol


class Tokenizer(Protocol):
    eos_token_ids: tuple[int, ...]
    vocab_size: int

    def encode(self, text: str, *, chat: bool = False) -> list[int]: ...

    def encode_chat(self, messages: list[dict[str, str]]) -> list[int]: ...

    def decode(self, ids: list[int]) -> str: ...

    def token_strings(self, ids: list[int]) -> list[str]: ...


class HFTokenizer:
    """transformers tokenizer; chat=True applies the model's own chat template."""

    def __init__(self, tokenizer, eos_token_ids: tuple[int, ...]):
        self.hf = tokenizer
        ids = set(eos_token_ids)
        if tokenizer.eos_token_id is not None:
            ids.add(int(tokenizer.eos_token_id))
        self.eos_token_ids = tuple(sorted(ids))
        self.vocab_size = len(tokenizer)

    def encode(self, text: str, *, chat: bool = False) -> list[int]:
        if chat:
            return self.encode_chat([{"role": "user", "content": text}])
        return list(self.hf(text)["input_ids"])

    def encode_chat(self, messages: list[dict[str, str]]) -> list[int]:
        """A conversation (role/content turns) in the model's chat template, ready for the
        assistant's next turn."""
        if not getattr(self.hf, "chat_template", None):
            from models.common.errors import UserError

            raise UserError("--instruct 1 needs a chat template, and this model's tokenizer has none; use --instruct 0")
        text = self.hf.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return list(self.hf(text, add_special_tokens=False)["input_ids"])

    def decode(self, ids: list[int]) -> str:
        return self.hf.decode(ids, skip_special_tokens=False)

    def token_strings(self, ids: list[int]) -> list[str]:
        """Each id's own text, for per-token views (byte-level pieces decoded one at a time)."""
        return [self.hf.decode([i], skip_special_tokens=False) for i in ids]


class ByteTokenizer:
    """UTF-8 bytes as ids 3..258; 0 = pad, 1 = bos, 2 = eos. Chat wraps the prompt in markers."""

    OFFSET = 3

    def __init__(self, vocab_size: int = 259):
        if vocab_size < 259:
            raise ValueError(f"ByteTokenizer needs vocab_size >= 259, got {vocab_size}")
        self.vocab_size = vocab_size
        self.eos_token_ids = (2,)

    def encode(self, text: str, *, chat: bool = False) -> list[int]:
        if chat:
            return self.encode_chat([{"role": "user", "content": text}])
        return [1] + [b + self.OFFSET for b in text.encode("utf-8")]

    def encode_chat(self, messages: list[dict[str, str]]) -> list[int]:
        text = "".join(f"<{m['role']}>\n{m['content']}\n" for m in messages) + "<assistant>\n"
        return [1] + [b + self.OFFSET for b in text.encode("utf-8")]

    def decode(self, ids: list[int]) -> str:
        data = bytes(i - self.OFFSET for i in ids if self.OFFSET <= i < 256 + self.OFFSET)
        return data.decode("utf-8", errors="replace")

    def token_strings(self, ids: list[int]) -> list[str]:
        return [self.decode([i]) if i >= self.OFFSET else f"<{i}>" for i in ids]
