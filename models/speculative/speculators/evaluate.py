"""How often a speculator's draft is right, teacher-forced on the target's own answers: the
figure that says whether a head learnt or only fitted (compare a held-out split with training).

multi_projection: head i at position p predicts the token at p + 2 + i, i.e. draft step i + 1.
eagle: step s unrolls s passes (the training-time test's passes), each on the previous pass's
predicted features, and predicts the token s + 1 places after the feature it started from.
Top-k: the true token among the k best drafts (what a tree of width k can catch at that step).
Tokens outside the draft vocabulary count as misses.
"""

from __future__ import annotations

import torch
from torch import nn

from models.llama.model import linear
from models.speculative.speculators.data import Example
from models.speculative.speculators.heads import EagleHead, MultiProjectionHeads
from models.speculative.speculators.train import IGNORE, _pad_batch, _target_to_draft, eagle_passes


def _step_logits(head: nn.Module, tokens, feats, pad, steps: int) -> list[torch.Tensor]:
    """Per draft step s (0-based), logits [B, W, V'] where position p predicts token p + 2 + s."""
    if isinstance(head, MultiProjectionHeads):
        logits = head.logits(feats)  # [B, W, n_heads, V']
        return [logits[:, :, i] for i in range(min(steps, head.config.n_heads))]
    assert isinstance(head, EagleHead)
    # eagle's pass s output at pair q predicts token q + 2 from a chain that started at q - s
    outs = eagle_passes(head, tokens, feats[:, :-1], pad, steps)
    result = []
    for s, hidden in enumerate(outs):
        logits = linear(hidden, head.layer.output)  # [B, W-1, V'], pair q -> token q + 2
        shifted = torch.full((*logits.shape[:1], feats.shape[1], logits.shape[2]), float("-inf"),
                             dtype=logits.dtype, device=logits.device)
        shifted[:, : logits.shape[1] - s] = logits[:, s:]  # index by the starting position q - s
        result.append(shifted)
    return result


@torch.inference_mode()
def accuracy(head: nn.Module, examples: list[Example], *, steps: int = 5, topk: int = 4,
             batch_size: int = 16) -> dict[str, list[float]]:
    """{"top1": [per step], f"top{topk}": [per step], "positions": [per step]} over every answer
    position each step can be scored at."""
    device = next(iter(head.buffers())).device
    t2d = _target_to_draft(head.draft_vocab, head.config.vocab_size)
    hits1: list[int] = [0] * steps
    hitsk: list[int] = [0] * steps
    counted: list[int] = [0] * steps
    for lo in range(0, len(examples), batch_size):
        tokens, feats, pad, start = _pad_batch(examples[lo : lo + batch_size], device)
        width = tokens.shape[1]
        pos = torch.arange(width, device=device)
        for s, logits in enumerate(_step_logits(head, tokens, feats, pad, steps)):
            offset = s + 2  # position p predicts the token at p + offset
            if width <= offset:
                break
            label = t2d[tokens[:, offset:]]  # [B, W - offset]
            p = pos[: width - offset]
            # scored where drafting can start (the last prompt token or later) and the label is an answer token
            valid = (p[None, :] >= start[:, None] - 1) & (p[None, :] >= pad[:, None])
            top = logits[:, : width - offset].topk(topk, dim=-1).indices
            mapped = torch.where(label == IGNORE, -1, label)
            hits1[s] += int(((top[..., 0] == mapped) & valid).sum())
            hitsk[s] += int(((top == mapped[..., None]).any(-1) & valid).sum())
            counted[s] += int(valid.sum())
    return {
        "top1": [h / c if c else 0.0 for h, c in zip(hits1, counted)],
        f"top{topk}": [h / c if c else 0.0 for h, c in zip(hitsk, counted)],
        "positions": counted,
    }
