"""Prompt lookup: draft the continuations of earlier occurrences of the context's last n-gram.

Free to propose (no model call), and strong wherever the output copies its input: summaries,
edits, code, retrieval answers. As a chain it drafts the best match's continuation; as a tree
it merges the continuations of several matches into one trie, so when the context repeats a
phrase that went on differently in different places, every way it went is verified at once.
"""

from __future__ import annotations

import torch

from models.speculative.proposers.base import BuildContext, Proposer, ProposerContext, register
from models.speculative.tree import DraftTree, TreeSpec, TrieBuilder


def ngram_continuations(tokens: list[int], k: int, max_ngram_size: int, min_ngram_size: int = 1,
                        limit: int = 1) -> list[list[int]]:
    """Up to `limit` continuations (each up to k tokens) of earlier matches of the context's
    suffix, best first.

    Longer suffixes are tried first and shorter ones only add more matches when the longer
    gave fewer than `limit`. Among matches of one length, longer continuations (capped at k)
    win, then the most recent. Matches may overlap the suffix itself (a repeating pattern); the
    suffix matching itself gives nothing.
    """
    n_tokens = len(tokens)
    if k < 1 or n_tokens < 2:
        return []
    ctx = torch.tensor(tokens, dtype=torch.int64)
    found: list[list[int]] = []
    seen_starts: set[int] = set()  # continuation start positions already taken
    for n in range(min(max_ngram_size, n_tokens - 1), min_ngram_size - 1, -1):
        suffix = ctx[n_tokens - n :]
        windows = ctx[: n_tokens - 1].unfold(0, n, 1)  # every n-gram that has a token after it
        starts = torch.nonzero((windows == suffix).all(dim=1)).flatten()
        if starts.numel() == 0:
            continue
        cont_len = torch.clamp(n_tokens - (starts + n), max=k)
        order = sorted(zip(cont_len.tolist(), starts.tolist()), reverse=True)
        for length, start in order:
            if start + n in seen_starts:
                continue
            seen_starts.add(start + n)
            found.append(tokens[start + n : start + n + length])
            if len(found) >= limit:
                return found
    return found


def ngram_lookup(tokens: list[int], k: int, max_ngram_size: int, min_ngram_size: int = 1) -> list[int]:
    """The chain draft: the best match's continuation, or [] without a match."""
    found = ngram_continuations(tokens, k, max_ngram_size, min_ngram_size, limit=1)
    return found[0] if found else []


class PromptLookupProposer(Proposer):
    name = "prompt_lookup"

    def __init__(self, max_ngram_size: int = 3, device: torch.device | str = "cpu"):
        if max_ngram_size < 1:
            raise ValueError(f"max_ngram_size must be >= 1, got {max_ngram_size}")
        self.max_ngram_size = max_ngram_size
        self.device = device

    def propose(self, ctx: ProposerContext, spec: TreeSpec) -> DraftTree:
        if spec.is_chain:
            return DraftTree.chain(ngram_lookup(ctx.tokens, spec.depth, self.max_ngram_size), self.device)
        # topk bounds the branches: the number of distinct matches merged
        trie = TrieBuilder(spec.budget)
        for cont in ngram_continuations(ctx.tokens, spec.depth, self.max_ngram_size, limit=spec.topk):
            trie.add_path(cont)
            if trie.full:
                break
        return trie.build(self.device)

    def describe(self) -> dict:
        return {"method": self.name, "max_ngram_size": self.max_ngram_size}


@register("prompt_lookup", "n-gram lookup in the prompt and output so far (--max_ngram_size); no model")
def build(b: BuildContext) -> Proposer:
    return PromptLookupProposer(b.config.max_ngram_size, device=b.device.torch_device)
