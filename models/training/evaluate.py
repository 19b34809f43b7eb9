"""How often a speculator's draft is right, teacher-forced on the target's own answers: the
figure that says whether a head learnt or only fitted (compare a held-out split with training).

multi_projection: head i at position p predicts the token at p + 2 + i, i.e. draft step i + 1.
eagle: step s unrolls s passes (the training-time test's passes), each on the previous pass's
predicted features, and predicts the token s + 1 places after the feature it started from.
Top-k: the true token among the k best drafts (what a tree of width k can catch at that step).
Tokens outside the draft vocabulary count as misses.

With the target's LM head, step 1 is also split by how sure the target itself was of the token
the head guesses (its top-1 probability at the position that predicts it, from the recorded
hidden states): a head that scores less on one set of prompts than another either meets more
tokens the target itself hesitates over, or scores less at the same certainty. Only the second
is something more or better-matched training data can fix.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import nn

from models.common.ops import linear
from models.speculative.speculators.heads import EagleHead, MultiProjectionHeads
from models.training.data import Example
from models.training.train import IGNORE, eagle_passes, pad_batch, target_to_draft

# upper edges of the target-certainty bins (top-1 probability); the last bin is >= the last edge
CERTAINTY_EDGES = (0.3, 0.6, 0.9)
COPY_KINDS = ("seen earlier", "new")


def certainty_bins() -> list[str]:
    edges = ("0", *(f"{e:g}" for e in CERTAINTY_EDGES))
    return [f"{lo}-{hi}" for lo, hi in zip(edges, edges[1:])] + [f">={CERTAINTY_EDGES[-1]:g}"]


def top_probability(hidden: torch.Tensor, lm_head: torch.Tensor, rows: int = 4096) -> torch.Tensor:
    """[N, D] final hidden states -> [N] the target's top-1 probability (in chunks: a full-vocabulary
    softmax over every position at once would not fit)."""
    out = [torch.empty(0, device=hidden.device)]
    for lo in range(0, hidden.shape[0], rows):
        logits = linear(hidden[lo : lo + rows].float(), lm_head.float())
        out.append((logits.max(-1).values - torch.logsumexp(logits, -1)).exp())
    return torch.cat(out)


def seen_before(tokens: torch.Tensor, pad: torch.Tensor) -> torch.Tensor:
    """[B, W] bool: whether each position's token already appeared earlier in its (left-padded)
    sequence, prompt or answer: a token the target could be copying."""
    flags = []
    for row, skip in zip(tokens.tolist(), pad.tolist()):
        seen: set[int] = set()
        marks = [False] * skip
        for t in row[skip:]:
            marks.append(t in seen)
            seen.add(t)
        flags.append(marks)
    return torch.tensor(flags, dtype=torch.bool, device=tokens.device)


def _step_logits(head: nn.Module, tokens, feats, pad, steps: int) -> Iterator[torch.Tensor]:
    """Per draft step s (0-based), logits [B, W, V'] where position p predicts token p + 2 + s,
    one step at a time (with a large draft vocabulary all steps' logits at once would not fit)."""
    if isinstance(head, MultiProjectionHeads):
        features = head.features(feats[..., -head.config.dim :])  # [B, W, n_heads, D]
        for i in range(min(steps, head.config.n_heads)):
            yield linear(features[:, :, i], head.lm_head)
        return
    assert isinstance(head, EagleHead)
    # eagle's pass s output at pair q predicts token q + 2 from a chain that started at q - s
    for s, hidden in enumerate(eagle_passes(head, tokens, feats[:, :-1], pad, steps)):
        logits = linear(hidden, head.layer.output)  # [B, W-1, V'], pair q -> token q + 2
        shifted = torch.full((*logits.shape[:1], feats.shape[1], logits.shape[2]), float("-inf"),
                             dtype=logits.dtype, device=logits.device)
        shifted[:, : logits.shape[1] - s] = logits[:, s:]  # index by the starting position q - s
        del logits
        yield shifted


@torch.inference_mode()
def accuracy(head: nn.Module, examples: list[Example], *, steps: int = 5, topk: int = 4,
             batch_size: int = 16, target_lm_head: torch.Tensor | None = None) -> dict:
    """{"top1": [per step], f"top{topk}": [per step], "positions": [per step]} over every answer
    position each step can be scored at; "step1_by_copy": step-1 top-1 on tokens seen earlier in
    the sequence and on new ones; "outside_draft_vocab": the share of step-1 labels the head
    cannot draft; with target_lm_head also "step1_by_certainty": per certainty bin, its positions
    and step-1 top-1."""
    device = next(iter(head.buffers())).device
    t2d = target_to_draft(head.draft_vocab, head.config.vocab_size)
    hits1: list[int] = [0] * steps
    hitsk: list[int] = [0] * steps
    counted: list[int] = [0] * steps
    n_bins = len(CERTAINTY_EDGES) + 1
    bin_hits, bin_counted = [0] * n_bins, [0] * n_bins
    edges = torch.tensor(CERTAINTY_EDGES, device=device)
    copy_hits, copy_counted, outside = [0, 0], [0, 0], 0
    for lo in range(0, len(examples), batch_size):
        tokens, feats, pad, start = pad_batch(examples[lo : lo + batch_size], device)
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
            first = top[..., 0] == mapped
            hits1[s] += int((first & valid).sum())
            hitsk[s] += int(((top == mapped[..., None]).any(-1) & valid).sum())
            counted[s] += int(valid.sum())
            if s > 0:
                continue
            right = first[valid]
            copied = seen_before(tokens, pad)[:, offset:][valid]
            for k, kind in enumerate((copied, ~copied)):
                copy_counted[k] += int(kind.sum())
                copy_hits[k] += int((kind & right).sum())
            outside += int((label == IGNORE)[valid].sum())
            if target_lm_head is not None:
                # position p + 1's hidden state is where the target chose the token at p + 2
                sure = top_probability(feats[:, 1 : width - 1, -target_lm_head.shape[1] :][valid], target_lm_head)
                which = torch.bucketize(sure, edges, right=True)
                for b in range(n_bins):
                    bin_counted[b] += int((which == b).sum())
                    bin_hits[b] += int(((which == b) & right).sum())
    scores: dict = {
        "top1": [h / c if c else 0.0 for h, c in zip(hits1, counted)],
        f"top{topk}": [h / c if c else 0.0 for h, c in zip(hitsk, counted)],
        "positions": counted,
        "step1_by_copy": [{"tokens": name, "positions": c, "top1": h / c if c else 0.0}
                          for name, h, c in zip(COPY_KINDS, copy_hits, copy_counted)],
        "outside_draft_vocab": outside / counted[0] if counted[0] else 0.0,
    }
    if target_lm_head is not None:
        scores["step1_by_certainty"] = [{"certainty": name, "positions": c, "top1": h / c if c else 0.0}
                                        for name, h, c in zip(certainty_bins(), bin_hits, bin_counted)]
    return scores
