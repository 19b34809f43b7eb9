"""Traced decode and verify: one CUDA graph per block length, replayed; eager elsewhere.

A small model's decode step on a GPU is bound by kernel launches, so each block length the
engine uses (1 for decode, k + 1 for verify, 1..k for drafts) is captured once against the
static cache and replayed with new inputs copied into fixed buffers. On the CPU (or with
tracing off) the same call runs the model eagerly: one interface, two executions.
"""

from __future__ import annotations

import torch

from models.llama.kv_cache import KVCache
from models.llama.model import Transformer


class TracedModel:
    """Callable like Transformer.forward for (tokens, cache, start, logits_for)."""

    def __init__(self, model: Transformer, *, traced: bool, max_block: int = 16):
        if traced and model.device.type != "cuda":
            raise ValueError("tracing needs a CUDA model; on the CPU the model runs eagerly")
        self.model = model
        self.traced = traced
        self.max_block = max_block
        self._graphs: dict[tuple, tuple[torch.cuda.CUDAGraph, torch.Tensor, torch.Tensor, torch.Tensor]] = {}
        self._pool = None

    def __getattr__(self, name: str):
        return getattr(self.model, name)

    def __call__(
        self, tokens: torch.Tensor, cache: KVCache, start: int, *, logits_for: str = "all", **kwargs
    ) -> torch.Tensor:
        seqlen = tokens.shape[1]
        if not self.traced or kwargs or start == 0 or seqlen > self.max_block:
            return self.model(tokens, cache, start, logits_for=logits_for, **kwargs)
        if start + seqlen > cache.max_seq_len:
            raise ValueError(f"slots up to {start + seqlen} exceed the cache ({cache.max_seq_len})")
        key = (seqlen, cache.k.data_ptr(), logits_for)
        if key not in self._graphs:
            self._graphs[key] = self._capture(seqlen, cache, logits_for)
        graph, tokens_buf, start_buf, out = self._graphs[key]

        tokens_buf.copy_(tokens, non_blocking=True)
        start_buf.fill_(start)
        graph.replay()
        cache.length = start + seqlen
        return out

    def _capture(self, seqlen: int, cache: KVCache, logits_for: str):
        """Capture at the end of the cache: those slots are past any live entry (the real call
        fits), and the warm-up's writes there are stale entries that masks hide."""
        device = self.model.device
        tokens_buf = torch.zeros(1, seqlen, dtype=torch.int64, device=device)
        start_buf = torch.full((), cache.max_seq_len - seqlen, dtype=torch.int64, device=device)
        saved = cache.length
        stream = torch.cuda.Stream(device)
        stream.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(stream):  # warm-up outside the graph, as CUDA graphs require
            for _ in range(2):
                self.model(tokens_buf, cache, start_buf, logits_for=logits_for)
        torch.cuda.current_stream(device).wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self._pool):
            out = self.model(tokens_buf, cache, start_buf, logits_for=logits_for)
        self._pool = graph.pool()
        cache.length = saved
        return graph, tokens_buf, start_buf, out
