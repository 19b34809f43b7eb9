"""Prompt lookup: draft the continuation of an earlier occurrence of the context's last n-gram.

Free to propose (no model call), and strong wherever the output copies its input: summaries,
edits, code, retrieval answers.
"""

from __future__ import annotations

import torch

from models.speculative.proposers.base import Proposer, ProposerContext


def ngram_lookup(tokens: list[int], k: int, max_ngram_size: int, min_ngram_size: int = 1) -> list[int]:
    """Draft up to k tokens that followed an earlier match of the context's suffix.

    Longer suffixes are tried first. Among matches of one length, the one with the longest
    continuation (capped at k) wins, and among those the most recent. Matches may overlap the
    suffix itself (a repeating pattern); the suffix matching itself gives nothing. No match:
    an empty list.
    """
    n_tokens = len(tokens)
    if k < 1 or n_tokens < 2:
        return []
    ctx = torch.tensor(tokens, dtype=torch.int64)
    for n in range(min(max_ngram_size, n_tokens - 1), min_ngram_size - 1, -1):
        suffix = ctx[n_tokens - n :]
        windows = ctx[: n_tokens - 1].unfold(0, n, 1)  # every n-gram that has a token after it
        starts = torch.nonzero((windows == suffix).all(dim=1)).flatten()
        if starts.numel() == 0:
            continue
        cont_len = torch.clamp(n_tokens - (starts + n), max=k)
        best = int(starts[cont_len == cont_len.max()].max())
        return tokens[best + n : best + n + min(k, n_tokens - best - n)]
    return []


class PromptLookupProposer(Proposer):
    name = "prompt_lookup"

    def __init__(self, max_ngram_size: int = 3, device: torch.device | str = "cpu"):
        if max_ngram_size < 1:
            raise ValueError(f"max_ngram_size must be >= 1, got {max_ngram_size}")
        self.max_ngram_size = max_ngram_size
        self.device = device

    def propose(self, ctx: ProposerContext, k: int) -> torch.Tensor:
        drafts = ngram_lookup(ctx.tokens, k, self.max_ngram_size)
        return torch.tensor(drafts, dtype=torch.int64, device=self.device)

    def describe(self) -> dict:
        return {"method": self.name, "max_ngram_size": self.max_ngram_size}
