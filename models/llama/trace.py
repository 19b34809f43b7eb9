"""Traced decode and verify: one CUDA graph per block length, replayed; eager elsewhere.

A small model's decode step on a GPU is bound by kernel launches, so each block length the
engine uses (1 for decode, k + 1 for verify, 1 for draft steps, n + 1 for a tree of n nodes,
whose positions and ancestor mask are graph inputs too) is captured once against the static
cache and replayed with new inputs copied into fixed buffers: the static forward (a
tensor `start`, attention over the whole cache under a mask) reads no host value, so the
graph stays valid for every position. On the CPU (or with tracing off) the same call runs the
model eagerly: one interface, two executions. A call that asks for hidden states (return_hidden)
runs eagerly too, since a graph returns logits only; a generator whose proposer drafts from
hidden states says so in one warning (models.speculative.generator.eager_note).

The capture logic is tested on the CPU with `ReplayGraph`, a stand-in that records the
captured call and reruns it on the same buffers, which is what a graph replay does.
"""

from __future__ import annotations

import dataclasses
import weakref
from collections.abc import Callable

import torch

from models.backends.interface import Capabilities
from models.llama.kv_cache import KVCache
from models.llama.model import Transformer


class ReplayGraph:
    """A CUDA graph's contract without CUDA: replay() recomputes into the captured output."""

    def capture(self, fn: Callable[[], torch.Tensor]) -> torch.Tensor:
        self.fn = fn
        self.out = fn()
        return self.out

    def replay(self) -> None:
        self.out.copy_(self.fn())


class CudaGraph:
    def __init__(self, pool=None):
        self.graph = torch.cuda.CUDAGraph()
        self.pool = pool

    def capture(self, fn: Callable[[], torch.Tensor]) -> torch.Tensor:
        device = torch.cuda.current_device()
        stream = torch.cuda.Stream(device)
        stream.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(stream):  # warm-up outside the graph, as capture requires
            for _ in range(2):
                fn()
        torch.cuda.current_stream(device).wait_stream(stream)
        with torch.cuda.graph(self.graph, pool=self.pool):
            out = fn()
        return out

    def replay(self) -> None:
        self.graph.replay()


class TracedModel:
    """Callable like Transformer.forward for (tokens, cache, start, logits_for)."""

    def __init__(self, model: Transformer, *, traced: bool, max_block: int = 16, graph: str = "cuda"):
        if traced and graph == "cuda" and model.device.type != "cuda":
            raise ValueError("CUDA graphs need a CUDA model; on the CPU the model runs eagerly")
        self.model = model
        self.traced = traced
        self.max_block = max_block
        self.graph_kind = graph
        # Graphs per cache object, dropped with it: a graph bakes in its cache's memory, so it
        # holds the cache's tensors (through a view), never the KVCache object that keys it.
        self._graphs: weakref.WeakKeyDictionary[KVCache, dict[tuple, tuple]] = weakref.WeakKeyDictionary()
        self._pool = None

    def __getattr__(self, name: str):
        return getattr(self.model, name)

    @property
    def capabilities(self) -> Capabilities:
        return dataclasses.replace(self.model.capabilities, traced=self.traced)

    def __call__(
        self, tokens: torch.Tensor, cache: KVCache, start: int, *, logits_for: str = "all", **kwargs
    ) -> torch.Tensor:
        seqlen = tokens.shape[1]
        tree = kwargs.keys() == {"positions", "tree_mask"} and kwargs["tree_mask"].shape == (seqlen, seqlen)
        if not self.traced or (kwargs and not tree) or start == 0 or seqlen > self.max_block:
            return self.model(tokens, cache, start, logits_for=logits_for, **kwargs)
        if start + seqlen > cache.max_seq_len:
            raise ValueError(f"slots up to {start + seqlen} exceed the cache ({cache.max_seq_len})")
        graphs = self._graphs.setdefault(cache, {})
        key = (seqlen, logits_for, tree)
        if key not in graphs:
            graphs[key] = self._capture(seqlen, cache, logits_for, tree)
        graph, buffers, out = graphs[key]
        buffers["tokens"].copy_(tokens, non_blocking=True)
        buffers["start"].fill_(start)
        if tree:  # a token tree: its positions and ancestor mask are inputs of the graph too
            buffers["positions"].copy_(kwargs["positions"], non_blocking=True)
            buffers["tree_mask"].copy_(kwargs["tree_mask"], non_blocking=True)
        graph.replay()
        cache.length = start + seqlen
        return out.clone()  # the next replay of this shape overwrites `out`

    @property
    def n_graphs(self) -> int:
        return sum(len(g) for g in self._graphs.values())

    def _capture(self, seqlen: int, cache: KVCache, logits_for: str, tree: bool):
        """Capture at the end of the cache: those slots are past any live entry (the real call
        fits), and the capture's writes there are stale entries that masks hide. A tree graph
        (one per block length) also takes the positions and the ancestor mask as inputs."""
        device = self.model.device
        start = cache.max_seq_len - seqlen
        buffers = {
            "tokens": torch.zeros(1, seqlen, dtype=torch.int64, device=device),
            "start": torch.full((), start, dtype=torch.int64, device=device),
        }
        extra = {}
        if tree:
            buffers["positions"] = start + torch.arange(seqlen, device=device)
            buffers["tree_mask"] = torch.ones(seqlen, seqlen, dtype=torch.bool, device=device).tril()
            extra = {"positions": buffers["positions"], "tree_mask": buffers["tree_mask"]}
        saved = cache.length
        shadow = KVCache.view(cache, cache.n_layers)  # the same memory, without a reference to `cache`
        graph = CudaGraph(self._pool) if self.graph_kind == "cuda" else ReplayGraph()
        out = graph.capture(
            lambda: self.model(buffers["tokens"], shadow, buffers["start"], logits_for=logits_for, **extra)
        )
        if self.graph_kind == "cuda":
            self._pool = graph.graph.pool()
        cache.length = saved
        return graph, buffers, out
