"""Multi-projection heads (Medusa / QEfficient "Turbo"): k drafts from one hidden state.

The target's verification pass already produced the hidden state of the last accepted token;
the heads turn it into k drafts with one small matmul per block and one pass over the draft
LM head for all heads. No draft model, no draft cache.
"""

from __future__ import annotations

import torch

from models.speculative.proposers.base import Proposer, ProposerContext
from models.speculative.speculators.heads import MultiProjectionHeads


class MultiProjectionProposer(Proposer):
    name = "multi_projection"
    uses_target_hidden = True

    def __init__(self, heads: MultiProjectionHeads, label: str = ""):
        self.heads = heads
        self.label = label

    def propose(self, ctx: ProposerContext, k: int) -> torch.Tensor:
        hidden, ctx.target_hidden = ctx.target_hidden, None
        k = min(k, self.heads.config.n_heads)
        logits = self.heads.logits(hidden[-1:])[0, :k]  # [k, V']
        return self.heads.draft_vocab[logits.argmax(dim=-1)]

    def describe(self) -> dict:
        c = self.heads.config
        return {"method": self.name, "speculator": self.label, "n_heads": c.n_heads, "n_blocks": c.n_blocks,
                "draft_vocab_size": c.draft_vocab_size}
