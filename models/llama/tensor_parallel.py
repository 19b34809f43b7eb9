"""Tensor parallelism for the lean model (Megatron's split): each tp rank holds a shard.

q|k|v and gate|up are split by output (column parallel: whole heads, whole hidden units), o and
down by input (row parallel: each rank's partial sums are added across ranks), the KV cache
holds the rank's own KV heads, and the LM head is split by vocabulary rows (its logits are
gathered). Embeddings and norms are replicated.

The cross-rank sum is computed the same way for any number of rows: every rank gathers all
partial sums and adds them in rank order. torch's all_reduce would choose its summation order by
tensor size, so a token verified among drafts could round differently from the same token decoded
alone; here, as on one device, speculative output equals target-only output bit for bit in fp32.
The mesh's sums differ from one device's in the last bits, so a mesh's target-only output may
differ from a single device's at a near-tie (as bf16 does), never from its own speculative run.
"""

from __future__ import annotations

import dataclasses
import time

import torch
import torch.distributed as dist
from torch import nn

from models.common.errors import UserError
from models.llama.model import Transformer


@dataclasses.dataclass
class TensorParallel:
    """A rank's place in its tensor-parallel group and the two collectives the model needs."""

    rank: int
    size: int
    group: object | None  # a torch.distributed process group; None when size is 1
    seconds: float = 0.0  # wall time spent in this rank's collectives (the cost of the mesh)

    def _gather(self, t: torch.Tensor) -> list[torch.Tensor]:
        """Every rank's t, in rank order (timed: the mesh's cost)."""
        t0 = time.perf_counter()
        parts = [torch.empty_like(t) for _ in range(self.size)]
        dist.all_gather(parts, t.contiguous(), group=self.group)
        self.seconds += time.perf_counter() - t0
        return parts

    def sum(self, partial: torch.Tensor) -> torch.Tensor:
        """The sum of every rank's partial, in rank order (the same bits for any row count)."""
        if self.size == 1:
            return partial
        parts = self._gather(partial)
        total = parts[0]
        for part in parts[1:]:
            total = total + part
        return total

    def gather_vocab(self, shard_logits: torch.Tensor, vocab_size: int) -> torch.Tensor:
        """Full logits [..., V] from every rank's vocabulary shard (shards padded to one size)."""
        if self.size == 1:
            return shard_logits
        return torch.cat(self._gather(shard_logits), dim=-1)[..., :vocab_size]


def check_fits(args, tp: int) -> None:
    """At least one whole KV head (and its query heads) per rank, or a one-line refusal."""
    if tp > args.n_kv_heads:
        raise UserError(f"tensor parallel {tp} exceeds the model's {args.n_kv_heads} KV heads; "
                        f"use a tp of at most {args.n_kv_heads}")


def _span(total: int, parts: int, rank: int) -> tuple[int, int]:
    """Rank's [lo, hi) of total items split as evenly as can be (the first ranks take one more)."""
    base, extra = divmod(total, parts)
    lo = rank * base + min(rank, extra)
    return lo, lo + base + (1 if rank < extra else 0)


def _rows(t: torch.Tensor, parts: list[tuple[int, int]]) -> torch.Tensor:
    return torch.cat([t[lo:hi] for lo, hi in parts]).clone()


def shard(model: Transformer, tp: TensorParallel) -> Transformer:
    """This rank's shard of model (a new Transformer; model is left whole). KV heads are split as
    evenly as they go, each with its query heads (SmolLM2's 3 KV heads over 2 ranks: 2 and 1)."""
    a = model.args
    check_fits(a, tp.size)
    if tp.size == 1:
        return model
    r, n, hd = tp.rank, tp.size, a.head_dim
    group = a.n_heads // a.n_kv_heads  # query heads per KV head
    kv_lo, kv_hi = _span(a.n_kv_heads, n, r)
    h_lo, h_hi = _span(a.hidden_dim, n, r)
    nkv, nh, hidden = kv_hi - kv_lo, (kv_hi - kv_lo) * group, h_hi - h_lo
    local = dataclasses.replace(a, n_heads=nh, n_kv_heads=nkv, hidden_dim=hidden)
    q_rows = (kv_lo * group * hd, kv_hi * group * hd)
    k_base, v_base = a.n_heads * hd, (a.n_heads + a.n_kv_heads) * hd
    kv_rows = [(k_base + kv_lo * hd, k_base + kv_hi * hd), (v_base + kv_lo * hd, v_base + kv_hi * hd)]
    gate_up_rows = [(h_lo, h_hi), (a.hidden_dim + h_lo, a.hidden_dim + h_hi)]
    per_rank = -(-a.vocab_size // n)  # vocabulary rows per rank, the last shard zero-padded
    out = model.output.detach()
    vocab = torch.zeros(per_rank, a.dim, dtype=out.dtype, device=out.device)
    rows = out[r * per_rank : (r + 1) * per_rank]
    vocab[: rows.shape[0]] = rows

    sharded = Transformer(local, dtype=model.dtype, device=model.device, tok_embeddings=model.tok_embeddings,
                          output=nn.Parameter(vocab, requires_grad=False))
    sharded.norm = model.norm
    for mine, whole in zip(sharded.layers, model.layers):
        mine.wqkv = nn.Parameter(_rows(whole.wqkv, [q_rows, *kv_rows]), requires_grad=False)
        if whole.bqkv is not None:
            mine.bqkv = nn.Parameter(_rows(whole.bqkv, [q_rows, *kv_rows]), requires_grad=False)
        mine.wo = nn.Parameter(whole.wo[:, q_rows[0] : q_rows[1]].clone(), requires_grad=False)
        mine.w_gate_up = nn.Parameter(_rows(whole.w_gate_up, gate_up_rows), requires_grad=False)
        mine.w_down = nn.Parameter(whole.w_down[:, h_lo:h_hi].clone(), requires_grad=False)
        mine.attn_norm, mine.ffn_norm = whole.attn_norm, whole.ffn_norm
        mine.q_norm, mine.k_norm = whole.q_norm, whole.k_norm  # per head_dim: the same on every rank
        mine.post_attn_norm, mine.post_ffn_norm = whole.post_attn_norm, whole.post_ffn_norm
    sharded.tp = tp
    sharded.unsharded = model
    return sharded
