"""Training loops for the speculators, on self-distillation examples (see data.py).

multi_projection: head i reads the target feature at position p and learns the token at
p + 1 + i (cross-entropy over the draft vocabulary; the LM head stays frozen).

eagle: pair p = (token p+1, feature p) goes through the draft layer; the output regresses the
feature at p+1 (smooth L1) and its projection learns token p+2 (cross-entropy). Training-time
test (as EAGLE-3 and HASS do): `unroll_steps` passes, each after the first fed the previous
pass's predicted features (detached, shifted one position) in place of the real ones, and
attending as drafting does: to the real-feature pairs up to its chain's start and to its own
chain's earlier nodes (eagle_passes), so pass s learns exactly what drafting step s + 1 sees.

Both: AdamW, linear warm-up then cosine decay, gradient clipping, a fixed seed and data order,
and a checkpoint (weights, optimiser, step) every `checkpoint_every` steps for resuming.
"""

from __future__ import annotations

import dataclasses
import math
import time
import random
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from loguru import logger
from tqdm import tqdm

from models.common.ops import linear, rms_norm
from models.speculative.speculators.heads import EagleHead, MultiProjectionHeads
from models.training.data import Example

IGNORE = -100
# bumped whenever a loss learns something else, so that a checkpoint of another version is never
# resumed (2: eagle's unrolled passes attend as drafting does)
TRAINING_VERSION = 2


@dataclasses.dataclass
class TrainConfig:
    epochs: float = 2.0
    batch_size: int = 8
    lr: float = 3e-3
    warmup_steps: int = 20
    weight_decay: float = 0.0
    clip: float = 1.0
    feature_noise: float = 0.05  # eagle: gaussian noise on input features, x the features' std
    cls_weight: float = 1.0  # eagle: cross-entropy weight beside the feature regression
    own_feature_weight: float = 0.5  # eagle: weight of each pass on its own predicted features
    unroll_steps: int = 2  # eagle: passes per batch (1: real features only; 2: one on its own, as before)
    seed: int = 0
    checkpoint_every: int = 50


def _batches(examples: list[Example], batch_size: int, epochs: float, seed: int) -> list[list[int]]:
    """Deterministic batches of similar-length examples, shuffled, for `epochs` passes."""
    rng = random.Random(seed)
    batches: list[list[int]] = []
    for _ in range(math.ceil(epochs)):
        order = sorted(range(len(examples)), key=lambda i: (len(examples[i].tokens), rng.random()))
        chunk = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
        rng.shuffle(chunk)
        batches.extend(chunk)
    return batches[: max(1, round(len(batches) * epochs / math.ceil(epochs)))]


def pad_batch(examples: list[Example], device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Left-padded tokens [B, W], features [B, W, D] (fp32; (n + 1) D with n feature layers), pad [B],
    answer start [B] (absolute)."""
    width = max(len(e.tokens) for e in examples)
    dim = examples[0].features.shape[1]
    tokens = torch.zeros(len(examples), width, dtype=torch.int64)
    feats = torch.zeros(len(examples), width, dim)
    pad = torch.zeros(len(examples), dtype=torch.int64)
    start = torch.zeros(len(examples), dtype=torch.int64)
    for b, e in enumerate(examples):
        p = width - len(e.tokens)
        tokens[b, p:], feats[b, p:], pad[b], start[b] = e.tokens, e.features.float(), p, p + e.answer_start
    return tokens.to(device), feats.to(device), pad.to(device), start.to(device)


def target_to_draft(draft_vocab: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """Each target token's index in the draft vocabulary (IGNORE outside it): labels in the heads' terms."""
    t2d = torch.full((vocab_size,), IGNORE, dtype=torch.int64, device=draft_vocab.device)
    t2d[draft_vocab] = torch.arange(draft_vocab.numel(), device=draft_vocab.device)
    return t2d


def multi_projection_loss(heads: MultiProjectionHeads, batch: list[Example], t2d: torch.Tensor) -> torch.Tensor:
    device = heads.weight.device
    tokens, feats, pad, start = pad_batch(batch, device)
    width = tokens.shape[1]
    pos = torch.arange(width, device=device)
    features = heads.features(feats[:, : max(0, width - 2), -heads.config.dim :])  # [B, W-2, n_heads, D]: the inference path
    losses = []
    for i in range(heads.config.n_heads):
        offset = i + 2  # head i at position p predicts the token at p + 1 + (i + 1)
        if width <= offset:
            break
        p = pos[: width - offset]
        label = t2d[tokens[:, offset:]]  # token at p + offset
        # used at the last accepted position, which is the last prompt token or later
        valid = (p[None, :] >= start[:, None] - 1) & (label != IGNORE)
        if not bool(valid.any()):
            continue
        x = features[:, : width - offset, i][valid]  # [N, D]
        losses.append(F.cross_entropy(linear(x, heads.lm_head), label[valid]))
    return torch.stack(losses).mean()


def eagle_passes(head: EagleHead, tokens: torch.Tensor, in_feats: torch.Tensor, pad: torch.Tensor,
                 steps: int) -> list[torch.Tensor]:
    """The draft layer's output [B, W-1, D] for `steps` passes over pairs (token p+1, feature p),
    each pass s (0-based) at pair q computing exactly what drafting step s + 1 computes for a chain
    that starts from the real feature at q - s (with the true tokens as its drafts):

    - input: pass 0 reads in_feats (the target's hidden states, fused when the head reads
      several layers); pass s reads pass s-1's output one pair back (detached), the feature the
      head itself predicted for position q;
    - attention: the pairs built on real features up to q - s (pass 0's keys), then its own chain:
      pass k's key at pair q - s + k for k = 1..s (EAGLE-3's training-time test). Drafting keeps
      real features in its cache and only the chain's nodes on predicted ones, so a pass that
      attended over its own predictions everywhere would learn a context drafting never shows.
    """
    layer = head.layer
    args = layer.args
    bsz, width = tokens.shape[0], tokens.shape[1] - 1
    nh, nkv = args.n_heads, args.n_kv_heads
    device = in_feats.device
    pos = torch.arange(width, device=device)
    positions = (pos[None, :] - pad[:, None]).clamp(min=0)  # RoPE counts from each row's first real token
    cos_t, sin_t = layer.rope_tables(width, args.layer_kinds[0])
    cos, sin = cos_t[positions].unsqueeze(-2), sin_t[positions].unsqueeze(-2)
    real = pos[None, :] >= pad[:, None]  # [B, W]
    keys: list[torch.Tensor] = []  # per pass: [B, H, W, hd] (GQA heads expanded)
    values: list[torch.Tensor] = []
    outs: list[torch.Tensor] = []
    in_feats = head.target_features(in_feats)
    feats = in_feats
    for s in range(steps):
        def attention(_: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, s: int = s) -> torch.Tensor:
            keys.append(k.transpose(1, 2).repeat_interleave(nh // nkv, dim=1))
            values.append(v.transpose(1, 2).repeat_interleave(nh // nkv, dim=1))
            qh = q.transpose(1, 2) * layer.attn_scale  # [B, H, W, hd]
            # the real-feature pairs up to the chain's start q - s
            base = qh @ keys[0].transpose(-1, -2)  # [B, H, W, W]
            seen = (pos[None, :] <= pos[:, None] - s)[None] & real[:, None, :]
            if s == 0:  # the query's own pair is among these: a padding query still sees itself
                seen = seen | torch.eye(width, dtype=torch.bool, device=device)[None]
            base = base.masked_fill(~seen[:, None], float("-inf"))
            # the chain's own nodes: pass k's key at q - s + k (k = s: the query's own pair)
            chain, chain_v = [], []
            for k_pass in range(1, s + 1):
                back = s - k_pass  # pass k's node sits `back` pairs before q
                kk = F.pad(keys[k_pass], (0, 0, back, 0))[:, :, :width]
                vv = F.pad(values[k_pass], (0, 0, back, 0))[:, :, :width]
                # a node in the padding is hidden; a padding query still sees itself (no empty row)
                ok = (pos - back >= 0)[None, :] & torch.roll(real, back, dims=1) if back else torch.ones_like(real)
                chain.append(((qh * kk).sum(-1)).masked_fill(~ok[:, None], float("-inf")))
                chain_v.append(vv)
            scores = torch.cat([base] + [c[..., None] for c in chain], dim=-1)
            probs = torch.softmax(scores, dim=-1)
            out = probs[..., :width] @ values[0]
            for i, vv in enumerate(chain_v):
                out = out + probs[..., width + i, None] * vv
            return out.transpose(1, 2)  # [B, W, H, hd]

        x = head.inputs(tokens[:, 1:], feats)
        h = layer.block(layer.layers[0], 0, x, cos, sin, attention)
        hidden = rms_norm(h, layer.norm, args.norm_eps)
        outs.append(hidden)
        feats = torch.cat([in_feats[:, :1], hidden[:, :-1].detach()], dim=1)
    return outs


def eagle_loss(head: EagleHead, batch: list[Example], t2d: torch.Tensor, config: TrainConfig,
               generator: torch.Generator) -> torch.Tensor:
    device = head.fc_weight.device
    tokens, feats, pad, start = pad_batch(batch, device)
    width = tokens.shape[1]
    n_pairs = width - 1
    pos = torch.arange(n_pairs, device=device)
    # pair p: token p+1 and feature p -> feature p+1 and token p+2; learn where p+2 is an answer token
    real = pos[None, :] >= pad[:, None]
    learn = real & (pos[None, :] + 2 >= start[:, None] + 1)
    label = torch.full((len(batch), n_pairs), IGNORE, dtype=torch.int64, device=device)
    label[:, :-1] = t2d[tokens[:, 2:]]
    cls_mask = learn & (label != IGNORE)

    in_feats = feats[:, :-1]
    if config.feature_noise:
        scale = config.feature_noise * in_feats[real].std()
        in_feats = in_feats + scale * torch.randn(in_feats.shape, generator=generator, device=device)
    steps = max(1, config.unroll_steps if config.own_feature_weight else 1)
    loss = torch.zeros((), device=device)
    for s, hidden in enumerate(eagle_passes(head, tokens, in_feats, pad, steps)):
        starts = pos[None, :] - s >= pad[:, None]  # pass s at pair q drafts for a chain from q - s
        where, cls_where = learn & starts, cls_mask & starts
        reg = F.smooth_l1_loss(hidden[where], feats[:, 1:, -hidden.shape[-1]:][where])  # the final state
        logits = hidden[cls_where] @ head.layer.output.T  # only where a token is learnt
        cls = F.cross_entropy(logits, label[cls_where]) if bool(cls_where.any()) else reg * 0
        loss = loss + (1.0 if s == 0 else config.own_feature_weight) * (reg + config.cls_weight * cls)
    return loss


def train(
    head: torch.nn.Module,
    examples: list[Example],
    config: TrainConfig,
    *,
    checkpoint: Path | None = None,
    log: Callable[[int, float], None] | None = None,
) -> list[float]:
    """Train in place; resumes from `checkpoint` when it exists. Returns the per-step losses."""
    torch.manual_seed(config.seed)
    eagle = isinstance(head, EagleHead)
    params = head.trainable() if eagle else [head.weight, head.bias]
    for p in params:
        p.requires_grad_(True)
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    batches = _batches(examples, config.batch_size, config.epochs, config.seed)
    total = len(batches)

    def lr_at(step: int) -> float:
        if step < config.warmup_steps:
            return (step + 1) / config.warmup_steps
        progress = (step - config.warmup_steps) / max(1, total - config.warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_at)
    losses: list[float] = []
    step, seconds_before = 0, 0.0
    if checkpoint is not None and checkpoint.exists():
        state = torch.load(checkpoint, weights_only=False)
        head.load_state_dict(state["head"], strict=False)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        step, losses = state["step"], state["losses"]
        seconds_before = state.get("seconds", 0.0)
        logger.info(f"resuming from {checkpoint} at step {step}/{total}")
    generator = torch.Generator(device=params[0].device).manual_seed(config.seed + step)
    t2d = target_to_draft(head.draft_vocab, head.config.vocab_size)
    head.train()
    started = time.perf_counter()
    with tqdm(total=total, initial=step, desc=f"training {head.config.kind}", unit="step") as bar:
        while step < total:
            batch = [examples[i] for i in batches[step]]
            loss = (eagle_loss(head, batch, t2d, config, generator) if eagle
                    else multi_projection_loss(head, batch, t2d))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, config.clip)
            optimizer.step()
            scheduler.step()
            step += 1
            losses.append(loss.item())
            bar.set_postfix(loss=f"{sum(losses[-20:]) / len(losses[-20:]):.4f}")
            bar.update(1)
            if log is not None:
                log(step, losses[-1])
            if checkpoint is not None and (step % config.checkpoint_every == 0 or step == total):
                tmp = checkpoint.with_suffix(".tmp")
                torch.save({"head": head.state_dict(), "optimizer": optimizer.state_dict(),
                            "scheduler": scheduler.state_dict(), "step": step, "losses": losses,
                            "seconds": seconds_before + time.perf_counter() - started}, tmp)
                tmp.replace(checkpoint)
    head.eval()
    for p in params:
        p.requires_grad_(False)
    return losses
