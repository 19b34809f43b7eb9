"""The lean Llama-family model: Llama, Mistral, Qwen2 and Gemma-3 in plain torch.

forward(tokens, start, cache) writes the new tokens' keys and values at cache slots
[start, start + T) and returns logits (and, on request, the final hidden states). Attention
uses an explicit mask, so the same call verifies a chain of drafts (causal block) or a token
tree (ancestor mask, RoPE position = depth), and stale cache entries past the block are never
seen. Weights live in fused tensors (q|k|v, gate|up) so a step is few, large matmuls. A model
may have several kinds of attention layer (Gemma-3: local layers with a sliding window and a
RoPE base of their own, global ones): each kind gets its own RoPE table and mask per call.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from models.backends.interface import Capabilities, RowBlock, hidden_layers_fit
from models.common import quantized
from models.common.ops import cpu_kernels_for, linear, rms_norm
from models.llama.config import ModelArgs
from models.llama.kv_cache import KVCache, cache_bytes_per_token


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin_signed: torch.Tensor) -> torch.Tensor:
    """x * cos + rotate_half(x) * sin, with the sign of rotate_half folded into the table."""
    return x * cos + x.roll(x.shape[-1] // 2, dims=-1) * sin_signed


# attention(layer index, q [B, T, H, hd], k, v [B, T, Hkv, hd]) -> [B, T, H, hd]: stores k and v
# in the cache and attends over it.
Attention = Callable[[int, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


class Block(nn.Module):
    def __init__(self, args: ModelArgs, dtype: torch.dtype, device: torch.device | str):
        super().__init__()
        qkv_out = args.head_dim * (args.n_heads + 2 * args.n_kv_heads)

        def empty(*shape: int) -> nn.Parameter:
            return nn.Parameter(torch.empty(shape, dtype=dtype, device=device), requires_grad=False)

        self.wqkv = empty(qkv_out, args.dim)
        self.bqkv = empty(qkv_out) if args.qkv_bias else None
        self.wo = empty(args.dim, args.n_heads * args.head_dim)
        self.w_gate_up = empty(2 * args.hidden_dim, args.dim)
        self.w_down = empty(args.dim, args.hidden_dim)
        self.attn_norm = empty(args.dim)
        self.ffn_norm = empty(args.dim)
        self.q_norm = empty(args.head_dim) if args.qk_norm else None
        self.k_norm = empty(args.head_dim) if args.qk_norm else None
        self.post_attn_norm = empty(args.dim) if args.sandwich_norm else None
        self.post_ffn_norm = empty(args.dim) if args.sandwich_norm else None


ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "silu": F.silu,
    "gelu_tanh": lambda x: F.gelu(x, approximate="tanh"),
}


class Transformer(nn.Module):
    """Owns the weights; `truncated(n)` gives a view on the first n layers sharing them. The
    torch backend's TargetModel (models/backends/interface.py): every capability, traced only
    through models.llama.trace.TracedModel."""

    backend = "torch"

    @property
    def capabilities(self) -> Capabilities:
        """Every capability; bit-exact batch invariance where the batch-invariant kernels run (fp32
        on the CPU), and traced only through models.llama.trace.TracedModel."""
        return Capabilities(tree_masks=True, hidden_states=True, batch_rows=True, layer_skip=True, traced=False,
                            batch_invariant=self.device.type == "cpu" and self.dtype == torch.float32,
                            torch_weights=True, dtypes=("float32", "bfloat16"))

    def __init__(
        self,
        args: ModelArgs,
        *,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
        tok_embeddings: nn.Parameter | None = None,
        output: nn.Parameter | None = None,
    ):
        """tok_embeddings / output: another model's tensors to share (a draft head reuses the
        target's embedding and LM head rows instead of holding copies)."""
        super().__init__()
        self.args = args
        if tok_embeddings is None:
            tok_embeddings = nn.Parameter(
                torch.empty(args.vocab_size, args.dim, dtype=dtype, device=device), requires_grad=False
            )
        self.tok_embeddings = tok_embeddings
        self.layers = nn.ModuleList(Block(args, dtype, device) for _ in range(args.n_layers))
        self.norm = nn.Parameter(torch.empty(args.dim, dtype=dtype, device=device), requires_grad=False)
        if output is None:
            output = self.tok_embeddings if args.tie_embeddings else nn.Parameter(
                torch.empty(args.vocab_size, args.dim, dtype=dtype, device=device), requires_grad=False
            )
        self.output = output
        self._rope_cache: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}  # per attention kind
        self.tp = None  # a TensorParallel when this holds one rank's shard (tensor_parallel.shard)
        self.unsharded: Transformer | None = None  # that shard's whole model

    @property
    def dtype(self) -> torch.dtype:
        """The activations' dtype (the norms are never quantized; the linear weights may be)."""
        return self.norm.dtype

    @property
    def weights(self) -> str:
        """fp32 (or the dtype's) weights, or gguf: some linears hold the GGUF's own blocks."""
        return "gguf" if any(quantized.is_quantized(p) for p in self.parameters()) else "fp32"

    @property
    def device(self) -> torch.device:
        return self.tok_embeddings.device

    @property
    def vocab_size(self) -> int:
        return self.args.vocab_size

    @property
    def n_layers(self) -> int:
        return self.args.n_layers

    def check_seq_len(self, max_seq_len: int) -> None:
        self.args.check_seq_len(max_seq_len)

    def cache_bytes_per_token(self) -> int:
        a = self.args
        return cache_bytes_per_token(a.n_layers, a.n_kv_heads, a.head_dim, self.dtype)

    def cache_view(self, cache: KVCache, n_layers: int) -> KVCache:
        return KVCache.view(cache, n_layers)

    def draft_layer(self, output: nn.Parameter) -> Transformer:
        """A one-layer model of this architecture (its own, uninitialised layer) that shares this
        model's embeddings and reads `output` as its LM head: an EAGLE head's draft layer."""
        return Transformer(self.args.with_layers(1), dtype=self.dtype, device=self.device,
                           tok_embeddings=self.tok_embeddings, output=output)

    def truncated(self, n_layers: int) -> Transformer:
        """The first n_layers plus the final norm and LM head, sharing (not copying) weights."""
        if not 1 <= n_layers <= self.args.n_layers:
            raise ValueError(f"n_layers={n_layers} outside [1, {self.args.n_layers}]")
        view = Transformer.__new__(Transformer)
        nn.Module.__init__(view)
        view.args = self.args.with_layers(n_layers)
        view.tok_embeddings = self.tok_embeddings
        view.layers = nn.ModuleList(list(self.layers[:n_layers]))
        view.norm = self.norm
        view.output = self.output
        view._rope_cache = self._rope_cache
        view.tp = self.tp
        view.unsharded = None if self.unsharded is None else self.unsharded.truncated(n_layers)
        return view

    def _summed(self, partial: torch.Tensor) -> torch.Tensor:
        """A row-parallel layer's output: this rank's partial sum, added across the tp group."""
        return partial if self.tp is None else self.tp.sum(partial)

    def _logits(self, h: torch.Tensor, any_rows: bool = False) -> torch.Tensor:
        logits = linear(h, self.output, any_rows)
        return logits if self.tp is None else self.tp.gather_vocab(logits, self.args.vocab_size)

    def new_cache(self, max_seq_len: int, batch_size: int = 1) -> KVCache:
        self.args.check_seq_len(max_seq_len)
        return KVCache(
            self.args.n_layers,
            self.args.n_kv_heads,
            self.args.head_dim,
            max_seq_len,
            batch_size=batch_size,
            dtype=self.dtype,
            device=self.device,
        )

    def rope_tables(self, max_seq_len: int, kind: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and sign-folded sin of one attention kind for positions [0, max_seq_len), computed
        as transformers does."""
        cached = self._rope_cache.get(kind)
        if cached is None or cached[0].shape[0] < max_seq_len:
            spec = self.args.attention_kinds[kind]
            inv_freq = torch.tensor(spec.inv_freq, dtype=torch.float32, device=self.device)
            pos = torch.arange(max_seq_len, device=self.device, dtype=torch.int64).float()
            freqs = pos[:, None] * inv_freq[None, :]
            emb = torch.cat((freqs, freqs), dim=-1)
            scale = spec.rope_attention_scaling
            sin = emb.sin() * scale
            half = sin.shape[-1] // 2
            sin_signed = torch.cat((-sin[:, :half], sin[:, half:]), dim=-1)
            cached = self._rope_cache[kind] = ((emb.cos() * scale).to(self.dtype), sin_signed.to(self.dtype))
        return cached

    def _rope(self, positions: torch.Tensor, max_seq_len: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per attention kind: cos and sin at these positions, [..., 1, hd] (one head axis to broadcast)."""
        rope = []
        for kind in range(len(self.args.attention_kinds)):
            cos_t, sin_t = self.rope_tables(max_seq_len, kind)
            rope.append((cos_t[positions].unsqueeze(-2), sin_t[positions].unsqueeze(-2)))
        return rope

    def embed(self, tokens: torch.Tensor) -> torch.Tensor:
        """The tokens' input vectors (Gemma scales its embeddings, in the weights' dtype)."""
        h = quantized.rows(self.tok_embeddings, tokens)
        scale = self.args.embed_scale
        return h if scale is None else h * torch.tensor(scale).to(h.dtype)

    @property
    def attn_scale(self) -> float:
        return self.args.attn_scale if self.args.attn_scale is not None else self.args.head_dim**-0.5

    def forward(
        self,
        tokens: torch.Tensor,
        cache: KVCache,
        start: int | torch.Tensor,
        *,
        positions: torch.Tensor | None = None,
        tree_mask: torch.Tensor | None = None,
        pad: torch.Tensor | None = None,
        embeds: torch.Tensor | None = None,
        logits_for: str = "all",
        return_hidden: bool = False,
        hidden_layers: tuple[int, ...] = (),
    ) -> torch.Tensor | tuple[torch.Tensor | None, torch.Tensor]:
        """Run T new tokens [B, T] stored at cache slots [start, start + T).

        start: an int (eager: attend over the filled prefix only, cache.length is advanced), or a
          0-d device tensor (static: attend over the whole cache under a mask, no host value
          read, so the call can be captured in a CUDA graph; the caller sets cache.length).
        positions: RoPE positions [T] (default start..start+T-1; a tree passes start + depth).
        tree_mask: [T, W] bool (W >= T), True where new token i may attend to token j of the last W
          slots up to the block's end (default causal). W = T: a tree verified in one pass;
          W > T: a tree grown level by level, its earlier levels already cached (tree drafting).
        pad: [B] left-padding slots per row, for a batch of prompts of unequal length: padding is
          never attended to, and RoPE positions count from each row's first real token.
        embeds: [B, T, D] input vectors used instead of the tokens' embeddings (a draft head).
        logits_for: "all", "last" (prefill) or "none" (hidden states only).
        hidden_layers: with return_hidden, the hidden states are [the output of each of these
          layers ; the final state], all through the final norm (the output of layer i is what a
          target cut to i + 1 layers returns), [..., (len + 1) D]: EAGLE-3's features from several
          depths, normed so that their scales match; the final state stays last, so its slice is
          what a single-layer reader takes.
        """
        bsz, seqlen = tokens.shape if embeds is None else embeds.shape[:2]
        static = isinstance(start, torch.Tensor)
        kv_len = cache.max_seq_len if static else start + seqlen
        if not static:
            cache.check_append(start, seqlen)
        device = self.device
        slots = start + torch.arange(seqlen, device=device)
        if positions is None:
            positions = slots if pad is None else (slots[None, :] - pad[:, None]).clamp(min=0)
        rope = self._rope(positions, cache.max_seq_len)  # per kind: [(B,) T, 1, hd]
        masks = self._attention_masks(slots, kv_len, tree_mask, need=static or seqlen > 1 or pad is not None,
                                      positions=positions)
        if pad is not None:  # per row: hide the padding (a padding query still sees itself)
            cols = torch.arange(kv_len, device=device)
            real = cols[None, :] >= pad[:, None]
            masks = [((m[None] & real[:, None, :]) | (cols[None, None, :] == slots[None, :, None]))[:, None]
                     for m in masks]  # [B, 1, T, kv_len]

        h = self.embed(tokens) if embeds is None else embeds
        attention = self._cache_attention(cache, slots, kv_len, masks, bsz)
        logits, hidden = self._through_layers(h, rope, attention, hidden_layers, logits_for)
        if not static:
            cache.length = kv_len
        return (logits, hidden) if return_hidden else logits

    def _through_layers(self, h: torch.Tensor, rope: list[tuple[torch.Tensor, torch.Tensor]], attention: Attention,
                        hidden_layers: tuple[int, ...], logits_for: str,
                        any_rows: bool = False) -> tuple[torch.Tensor | None, torch.Tensor]:
        """The one layer loop both entry points run (forward's blocks and forward_rows' flattened
        rows differ only in how they place tokens and attend): h [B, T, D] through every layer and
        the final norm; logits for all, the last or no position; the hidden states (hidden_layers'
        outputs, normed, then the final state)."""
        depths = self._check_hidden_layers(hidden_layers)
        kept = []
        for i, layer in enumerate(self.layers):
            h = self.block(layer, i, h, *rope[self.args.layer_kinds[i]], attention, any_rows)
            if i in depths:
                kept.append(rms_norm(h, self.norm, self.args.norm_eps))
        h = rms_norm(h, self.norm, self.args.norm_eps)
        logits = None if logits_for == "none" else self._logits(h[:, -1:] if logits_for == "last" else h, any_rows)
        return logits, (torch.cat([*kept, h], dim=-1) if kept else h)

    def _check_hidden_layers(self, hidden_layers: tuple[int, ...]) -> frozenset[int]:
        if not hidden_layers:
            return frozenset()
        if not hidden_layers_fit(hidden_layers, self.args.n_layers):
            raise ValueError(f"hidden_layers {hidden_layers}: increasing layer indices below the last "
                             f"({self.args.n_layers - 1}) expected")
        return frozenset(hidden_layers)

    def _cache_attention(self, cache: KVCache, slots: torch.Tensor, kv_len: int, masks: list[torch.Tensor | None],
                         bsz: int) -> Attention:
        """masks: per attention kind."""
        gqa = self.args.n_kv_heads != self.args.n_heads
        scale, sdpa_scale = self.attn_scale, self.args.attn_scale  # SDPA's None: its own 1 / sqrt(hd)

        def attention(index: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
            cache.k[index].index_copy_(2, slots, k.transpose(1, 2))
            cache.v[index].index_copy_(2, slots, v.transpose(1, 2))
            mask = masks[self.args.layer_kinds[index]]
            kernels = cpu_kernels_for(q, q.shape[1]) if bsz == 1 and (mask is None or mask.dim() == 2) else None
            if kernels is not None:
                m = torch.empty(0, dtype=torch.bool) if mask is None else mask
                return kernels.attend(q[0], cache.k[index, 0], cache.v[index, 0], m, kv_len, scale)[None]
            keys = cache.k[index, :, :, :kv_len]
            values = cache.v[index, :, :, :kv_len]
            return F.scaled_dot_product_attention(
                q.transpose(1, 2), keys, values, attn_mask=mask, enable_gqa=gqa, scale=sdpa_scale
            ).transpose(1, 2)

        return attention

    def forward_rows(self, tokens: torch.Tensor, blocks: list[RowBlock], cache: KVCache,
                     return_hidden: bool = False,
                     hidden_layers: tuple[int, ...] = ()) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Several sequences' new tokens in one call, flattened (vLLM's layout, no padding):
        tokens [N] holds each block's tokens in turn. Returns logits [N, V] (and hidden [N, D], or as
        forward with hidden_layers).

        Every weight is read once for the whole batch; a finished sequence costs nothing and a
        sequence's rows compute exactly as in `forward` for it alone (fp32 on the CPU: the
        batch-invariant kernels at any row count), so batching never changes a token.
        cache: the batch cache whose rows the blocks' caches are."""
        device = self.device
        width = max(b.cache.length + b.n_tokens for b in blocks)
        decode_only = all(b.n_tokens == 1 and b.tree_mask is None for b in blocks)
        # per attention kind: whether this call needs a mask (decode steps that see every slot do not)
        kinds = range(len(self.args.attention_kinds))
        needed = [not (decode_only and self._window_unseen(kind, width)) for kind in kinds]
        slots, rows, kv_lens, positions, block_masks = [], [], [], [], []
        for block in blocks:
            start, n = block.cache.length, block.n_tokens
            block.cache.check_append(start, n)
            block_slots = torch.arange(start, start + n, device=device)
            block_positions = block_slots if block.positions is None else block.positions.to(device)
            slots.append(block_slots)
            rows.append(torch.full((n,), block.cache.batch_row, dtype=torch.int64, device=device))
            kv_lens.append(torch.full((n,), start + n, dtype=torch.int64, device=device))
            positions.append(block_positions)
            if any(needed):
                block_masks.append(self._attention_masks(block_slots, start + n, block.tree_mask, need=True,
                                                         positions=block_positions))
        slots_t, rows_t, kv_t, pos_t = (torch.cat(x) for x in (slots, rows, kv_lens, positions))
        masks: list[torch.Tensor | None] = []
        for kind in kinds:  # one [N, width] mask per attention kind; a row never reads past its kv_len
            if not needed[kind]:
                masks.append(None)
                continue
            mask = torch.zeros(len(slots_t), width, dtype=torch.bool, device=device)
            row = 0
            for block, per_kind in zip(blocks, block_masks):
                mask[row : row + block.n_tokens, : block.cache.length + block.n_tokens] = per_kind[kind]
                row += block.n_tokens
            masks.append(mask)
        rope = self._rope(pos_t[None], cache.max_seq_len)  # per kind: [1, N, 1, hd]
        attention = self._rows_attention(cache, blocks, slots_t, rows_t, kv_t, masks)
        logits, hidden = self._through_layers(self.embed(tokens)[None], rope, attention, hidden_layers,
                                              "all", any_rows=True)
        for block in blocks:
            block.cache.length += block.n_tokens
        return (logits[0], hidden[0]) if return_hidden else logits[0]

    def _rows_attention(self, cache: KVCache, blocks: list[RowBlock], slots: torch.Tensor, rows: torch.Tensor,
                        kv_lens: torch.Tensor, masks: list[torch.Tensor | None]) -> Attention:
        """masks: per attention kind."""
        hd, nkv = self.args.head_dim, self.args.n_kv_heads
        gqa = nkv != self.args.n_heads
        scale, sdpa_scale = self.attn_scale, self.args.attn_scale
        kernels = cpu_kernels_for(cache.k, None)
        empty = torch.empty(0, dtype=torch.bool)
        # where (row, head, slot) lives in a layer's cache seen as [B * Hkv * S, hd]: one index_copy_
        heads = torch.arange(nkv, device=slots.device)
        flat = ((rows[:, None] * nkv + heads[None, :]) * cache.max_seq_len + slots[:, None]).reshape(-1)
        n_rows = cache.batch_size * nkv * cache.max_seq_len

        def attention(index: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
            cache.k[index].view(n_rows, hd).index_copy_(0, flat, k[0].reshape(-1, hd))
            cache.v[index].view(n_rows, hd).index_copy_(0, flat, v[0].reshape(-1, hd))
            mask = masks[self.args.layer_kinds[index]]
            if kernels is not None:
                m = empty if mask is None else mask
                return kernels.attend_rows(q[0], cache.k[index], cache.v[index], rows, kv_lens, m, scale)[None]
            out, row = [], 0  # elsewhere: each sequence's attention on its own
            for block in blocks:
                n, b, kv_len = block.n_tokens, block.cache.batch_row, block.cache.length + block.n_tokens
                m = None if mask is None else mask[row : row + n, :kv_len]
                out.append(F.scaled_dot_product_attention(
                    q[:, row : row + n].transpose(1, 2), cache.k[index, b : b + 1, :, :kv_len],
                    cache.v[index, b : b + 1, :, :kv_len], attn_mask=m, enable_gqa=gqa, scale=sdpa_scale,
                ).transpose(1, 2))
                row += n
            return torch.cat(out, dim=1)

        return attention

    def _window_unseen(self, kind: int, kv_len: int) -> bool:
        """Whether this kind's window hides nothing of kv_len slots."""
        window = self.args.attention_kinds[kind].window
        return window is None or kv_len <= window

    def _attention_masks(self, slots: torch.Tensor, kv_len: int, tree_mask: torch.Tensor | None, need: bool,
                         positions: torch.Tensor) -> list[torch.Tensor | None]:
        """Per attention kind, bool [T, kv_len] (None where nothing is hidden and not `need`): the
        cached prefix is visible to all, the block by causality or tree; slots past the block
        (stale or unused) never are; a kind with a window hides keys `window` or more positions
        behind the query (its slot, or in a tree its RoPE position: where it will sit once accepted)."""
        kinds = range(len(self.args.attention_kinds))
        if tree_mask is None and not need and all(self._window_unseen(k, kv_len) for k in kinds):
            return [None for _ in kinds]
        query_at = slots if tree_mask is None else positions
        cols = torch.arange(kv_len, device=slots.device)
        base = self._block_mask(slots, cols, tree_mask)
        masks = []
        for kind in kinds:
            window = self.args.attention_kinds[kind].window
            masks.append(base if window is None else base & ((query_at[:, None] - cols[None, :]) < window))
        return masks

    @staticmethod
    def _block_mask(slots: torch.Tensor, cols: torch.Tensor, tree_mask: torch.Tensor | None) -> torch.Tensor:
        if tree_mask is None:
            mask = cols[None, :] <= slots[:, None]
        else:
            tree = tree_mask.to(device=slots.device, dtype=torch.bool)
            width = tree.shape[1]
            rel = cols[None, :] - (slots[-1:, None] + 1 - width)  # column offset inside the tree
            inside = (rel >= 0) & (rel < width)
            in_tree = tree.gather(1, rel.clamp(0, width - 1).expand(slots.numel(), -1))
            mask = (rel < 0) | (inside & in_tree)
        return mask

    def block(
        self,
        layer: Block,
        index: int,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        attention: Attention,
        any_rows: bool = False,
    ) -> torch.Tensor:
        """One decoder layer whose attention the caller supplies (the cache's, or a training loss's
        own masks: eagle_passes runs the draft layer this way, so it trains the layer that drafts)."""
        args = self.args
        bsz, seqlen, _ = x.shape
        hd, nh, nkv = args.head_dim, args.n_heads, args.n_kv_heads
        h = rms_norm(x, layer.attn_norm, args.norm_eps)
        qkv = linear(h, layer.wqkv, any_rows)
        if layer.bqkv is not None:
            qkv = qkv + layer.bqkv
        qk, v = qkv.split([(nh + nkv) * hd, nkv * hd], dim=-1)
        qk = qk.reshape(bsz, seqlen, nh + nkv, hd)
        if layer.q_norm is not None:
            q, k = qk.split([nh, nkv], dim=2)
            qk = torch.cat([rms_norm(q, layer.q_norm, args.norm_eps), rms_norm(k, layer.k_norm, args.norm_eps)], dim=2)
        qk = apply_rope(qk, cos, sin)  # q and k in one pass
        q, k = qk.split([nh, nkv], dim=2)
        attn = attention(index, q, k, v.view(bsz, seqlen, nkv, hd)).reshape(bsz, seqlen, nh * hd)
        out = self._summed(linear(attn, layer.wo, any_rows))
        x = x + (out if layer.post_attn_norm is None else rms_norm(out, layer.post_attn_norm, args.norm_eps))
        h = rms_norm(x, layer.ffn_norm, args.norm_eps)
        gate, up = linear(h, layer.w_gate_up, any_rows).chunk(2, dim=-1)
        out = self._summed(linear(ACTIVATIONS[args.activation](gate) * up, layer.w_down, any_rows))
        return x + (out if layer.post_ffn_norm is None else rms_norm(out, layer.post_ffn_norm, args.norm_eps))
