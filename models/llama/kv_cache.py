"""A preallocated KV cache whose length is the only state: rollback is an O(1) assignment.

Entries past `length` are stale: attention masks them and the next write overwrites them, so
rejecting draft tokens never copies or frees memory.
"""

from __future__ import annotations

import torch

from models.common.errors import UserError


def cache_bytes_per_token(n_layers: int, n_kv_heads: int, head_dim: int, dtype: torch.dtype) -> int:
    """Keys and values of one token in every layer, per batch row."""
    return 2 * n_layers * n_kv_heads * head_dim * dtype.itemsize


class KVCache:
    def __init__(
        self,
        n_layers: int,
        n_kv_heads: int,
        head_dim: int,
        max_seq_len: int,
        *,
        batch_size: int = 1,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
    ):
        shape = (n_layers, batch_size, n_kv_heads, max_seq_len, head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)
        self.max_seq_len = max_seq_len
        self.length = 0
        self.batch_row = 0  # a row view: its row in the batch cache it shares memory with

    @property
    def batch_size(self) -> int:
        return self.k.shape[1]

    def row(self, b: int) -> KVCache:
        """Row b of a batch cache as a one-sequence cache sharing its memory, with its own length:
        a sequence of a batch goes through everything written for one sequence (prefill,
        proposers, compaction) on this view, and Transformer.forward_rows reads its length."""
        if not 0 <= b < self.batch_size:
            raise ValueError(f"row {b} outside a batch of {self.batch_size}")
        view = KVCache.__new__(KVCache)
        view.k, view.v = self.k[:, b : b + 1], self.v[:, b : b + 1]
        view.max_seq_len = self.max_seq_len
        view.length = 0
        view.batch_row = b
        return view

    @classmethod
    def view(cls, other: KVCache, n_layers: int) -> KVCache:
        """A cache over the first n_layers of `other`, sharing its memory, with its own length.

        A self-draft runs the target's first layers, so the target's cache already holds the
        draft's keys and values for every accepted token: the draft never prefills.
        """
        view = cls.__new__(cls)
        view.k, view.v = other.k[:n_layers], other.v[:n_layers]
        view.max_seq_len = other.max_seq_len
        view.length = other.length
        view.batch_row = other.batch_row
        return view

    @property
    def n_layers(self) -> int:
        return self.k.shape[0]

    def check_append(self, start: int, n_tokens: int) -> None:
        """The one checked path for an eager write: a block goes right after the live entries
        (a start past them would attend to stale slots) and must fit."""
        if start != self.length:
            raise ValueError(f"block starts at slot {start} but the cache holds {self.length} entries; roll back first")
        if start + n_tokens > self.max_seq_len:
            raise UserError(
                f"sequence of {start + n_tokens} tokens exceeds max_seq_len={self.max_seq_len}; raise --max_seq_len"
            )

    def compact(self, start: int, keep: list[int]) -> None:
        """Keep the block entries at slots start + keep[j] as slots start + j, and drop the rest.

        After a tree verification, `keep` lists the root and the accepted path's block
        positions; only those few rows are gathered (in every layer at once), never the cache.
        """
        n = len(keep)
        if keep != list(range(n)):
            src = torch.tensor(keep, device=self.k.device) + start
            dst = torch.arange(start, start + n, device=self.k.device)
            self.k.index_copy_(3, dst, self.k.index_select(3, src))
            self.v.index_copy_(3, dst, self.v.index_select(3, src))
        self.rollback(start + n)

    def rollback(self, length: int) -> None:
        if not 0 <= length <= self.length:
            raise ValueError(f"rollback to {length} outside [0, {self.length}]")
        self.length = length

    def reset(self) -> None:
        self.length = 0
