"""The proposer interface: context in, draft tokens out. The generator never knows which one runs."""

from __future__ import annotations

import abc
import dataclasses

import torch

from models.llama.kv_cache import KVCache


@dataclasses.dataclass
class ProposerContext:
    """What a proposer may look at: all tokens so far (the last one is not yet in the target
    cache) and the target cache itself, which holds every token before the last."""

    tokens: list[int]
    target_cache: KVCache


class Proposer(abc.ABC):
    name: str = "proposer"

    def start(self, prompt: list[int], target_cache: KVCache) -> None:
        """A new sequence begins (after the target's prefill)."""

    @abc.abstractmethod
    def propose(self, ctx: ProposerContext, k: int) -> torch.Tensor:
        """Up to k draft tokens (int64, on the target's device); fewer, or none, is allowed."""

    def describe(self) -> dict:
        return {"method": self.name}
