"""Drafting with a model: a separate smaller model, or the target's own first layers."""

from __future__ import annotations

import torch

from models.common.errors import UserError
from models.llama.kv_cache import KVCache
from models.llama.model import Transformer
from models.speculative.proposers.base import Proposer, ProposerContext


def draft_chain(model: Transformer, cache: KVCache, pending: torch.Tensor, k: int) -> torch.Tensor:
    """Feed the pending tokens [P], then draft k tokens greedily, one forward each.

    Tokens stay on the device (no host read per step). On return the cache holds the pending
    tokens and the first k - 1 drafts; the last draft was never fed.
    """
    logits = model(pending.view(1, -1), cache, cache.length, logits_for="last")
    token = logits[0, -1].argmax()
    drafts = [token]
    for _ in range(k - 1):
        logits = model(token.view(1, 1), cache, cache.length, logits_for="last")
        token = logits[0, -1].argmax()
        drafts.append(token)
    return torch.stack(drafts)


class DraftModelProposer(Proposer):
    """A separate model with the target's vocabulary and its own KV cache.

    The cache is kept in step with the context from lengths alone: after a verification that
    accepted n drafts, the first min(n, k - 1) drafts the model fed are still valid.
    """

    name = "draft_model"

    def __init__(self, draft: Transformer, max_seq_len: int, *, target_vocab_size: int, label: str = ""):
        if draft.args.vocab_size != target_vocab_size:
            raise UserError(
                f"draft model vocabulary ({draft.args.vocab_size}) differs from the target's "
                f"({target_vocab_size}); a draft must share the target's tokenizer"
            )
        self.model = draft
        self.max_seq_len = max_seq_len
        self.label = label
        self.cache: KVCache | None = None
        self._ctx_len = 0
        self._fed_drafts = 0

    def start(self, prompt: list[int], target_cache: KVCache) -> None:
        if self.cache is None or self.cache.max_seq_len < target_cache.max_seq_len:
            self.cache = self.model.new_cache(target_cache.max_seq_len)
        self.cache.reset()
        self._ctx_len = 0
        self._fed_drafts = 0

    def propose(self, ctx: ProposerContext, k: int) -> torch.Tensor:
        tokens = ctx.tokens
        if k < 1:
            return torch.empty(0, dtype=torch.int64, device=self.model.device)
        if self._ctx_len:
            new = len(tokens) - self._ctx_len  # accepted drafts + the target's token
            self.cache.rollback(self._ctx_len + min(new - 1, self._fed_drafts))
        pending = torch.tensor(tokens[self.cache.length :], dtype=torch.int64, device=self.model.device)
        drafts = draft_chain(self.model, self.cache, pending, k)
        self._ctx_len, self._fed_drafts = len(tokens), k - 1
        return drafts

    def describe(self) -> dict:
        return {"method": self.name, "draft_model": self.label, "draft_layers": self.model.args.n_layers}


class SelfDraftProposer(Proposer):
    """The target truncated to its first n layers (LayerSkip-style), sharing weights and cache.

    The target's cache already holds layers [0, n) for every accepted token, so the draft only
    feeds the one token the target has not processed yet and never prefills.
    """

    name = "self_draft"

    def __init__(self, target: Transformer, n_layers: int):
        if not 1 <= n_layers < target.args.n_layers:
            raise UserError(
                f"--draft_layers {n_layers} is outside [1, {target.args.n_layers - 1}] "
                f"for a target of {target.args.n_layers} layers"
            )
        self.model = target.truncated(n_layers)
        self.cache: KVCache | None = None

    def start(self, prompt: list[int], target_cache: KVCache) -> None:
        self.cache = KVCache.view(target_cache, self.model.args.n_layers)

    def propose(self, ctx: ProposerContext, k: int) -> torch.Tensor:
        if k < 1:
            return torch.empty(0, dtype=torch.int64, device=self.model.device)
        self.cache.length = ctx.target_cache.length
        pending = torch.tensor(ctx.tokens[self.cache.length :], dtype=torch.int64, device=self.model.device)
        return draft_chain(self.model, self.cache, pending, k)

    def describe(self) -> dict:
        return {"method": self.name, "draft_layers": self.model.args.n_layers}
