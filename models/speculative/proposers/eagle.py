"""EAGLE-style drafting: a one-layer feature-level draft chained k times.

The draft's cache holds one entry per target position: the pair (token after it, the target's
feature at it). After each verification the pairs built on drafted (predicted) features are
dropped and the accepted positions are re-read with the target's real features, then the
draft chains from its own predicted features.
"""

from __future__ import annotations

import torch

from models.llama.kv_cache import KVCache
from models.speculative.proposers.base import Proposer, ProposerContext
from models.speculative.speculators.heads import EagleHead


class EagleProposer(Proposer):
    name = "eagle"
    uses_target_hidden = True

    def __init__(self, head: EagleHead, label: str = ""):
        self.head = head
        self.label = label
        self.cache: KVCache | None = None
        self.real = 0  # draft-cache entries built on real target features

    def start(self, prompt: list[int], target_cache: KVCache) -> None:
        if self.cache is None or self.cache.max_seq_len < target_cache.max_seq_len:
            self.cache = self.head.layer.new_cache(target_cache.max_seq_len)
        self.cache.reset()
        self.real = 0

    def propose(self, ctx: ProposerContext, k: int) -> torch.Tensor:
        features, ctx.target_hidden = ctx.target_hidden, None
        layer, vocab = self.head.layer, self.head.draft_vocab
        device = features.device
        # The m positions that just entered the target cache end at its length; each pairs
        # with the token after it (the last of these is the target's newest token).
        end = ctx.target_cache.length
        m = features.shape[0]
        next_tokens = torch.tensor(ctx.tokens[end - m + 1 : end + 1], device=device)
        self.cache.rollback(self.real)
        x = self.head.inputs(next_tokens, features)
        logits, hidden = layer(None, self.cache, self.real, embeds=x[None], logits_for="last", return_hidden=True)
        self.real += m
        draft = vocab[logits[0, -1].argmax()]
        drafts = [draft]
        for _ in range(k - 1):
            x = self.head.inputs(draft.view(1), hidden[0, -1:])
            logits, hidden = layer(None, self.cache, self.cache.length, embeds=x[None], logits_for="last",
                                   return_hidden=True)
            draft = vocab[logits[0, -1].argmax()]
            drafts.append(draft)
        return torch.stack(drafts)

    def describe(self) -> dict:
        return {"method": self.name, "speculator": self.label, "draft_vocab_size": self.head.config.draft_vocab_size}
