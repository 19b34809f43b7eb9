"""Acceptance rules: given the target's logits over a verified block, which drafts stand.

Each rule is a pure function of tensors so it can be tested on hand-built logits. The block
layout is the one the generator verifies: position 0 is the last accepted token, positions
1..k the drafts, so logits[i] is the target's prediction for the token after position i.
"""

from __future__ import annotations

import dataclasses

import torch


@dataclasses.dataclass(frozen=True)
class Acceptance:
    n_accepted: int  # drafts accepted (a prefix of the proposal)
    tokens: list[int]  # accepted drafts followed by the target's own next token


def greedy_accept(draft_tokens: torch.Tensor, logits: torch.Tensor) -> Acceptance:
    """Longest prefix of drafts equal to the target's argmax, plus the target's next token.

    draft_tokens: [k] (k may be 0); logits: [k + 1, V]. The emitted tokens are exactly what
    target-only greedy decoding would produce, whatever the drafts were.
    """
    k = draft_tokens.numel()
    if logits.shape[0] != k + 1:
        raise ValueError(f"need {k + 1} rows of logits for {k} drafts, got {logits.shape[0]}")
    target_tokens = logits.argmax(dim=-1)
    matches = (draft_tokens.to(target_tokens.device) == target_tokens[:k]).to(torch.int64)
    n = int(matches.cumprod(0).sum()) if k else 0
    return Acceptance(n, target_tokens[: n + 1].tolist())

