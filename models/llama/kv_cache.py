"""A preallocated KV cache whose length is the only state: rollback is an O(1) assignment.

Entries past `length` are stale: attention masks them and the next write overwrites them, so
rejecting draft tokens never copies or frees memory.
"""

from __future__ import annotations

import torch

from models.common.errors import UserError


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
        return view

    @property
    def n_layers(self) -> int:
        return self.k.shape[0]

    def reserve(self, n_tokens: int) -> tuple[int, int]:
        """Slots [start, end) for n new tokens; raises when the cache would overflow."""
        start, end = self.length, self.length + n_tokens
        if end > self.max_seq_len:
            raise UserError(f"sequence of {end} tokens exceeds max_seq_len={self.max_seq_len}; raise --max_seq_len")
        return start, end

    def rollback(self, length: int) -> None:
        if not 0 <= length <= self.length:
            raise ValueError(f"rollback to {length} outside [0, {self.length}]")
        self.length = length

    def reset(self) -> None:
        self.length = 0
