"""The proposer interface: context in, draft tokens out. The generator never knows which one runs."""

from __future__ import annotations

import abc
import dataclasses

import torch

from models.llama.kv_cache import KVCache


@dataclasses.dataclass
class ProposerContext:
    """What a proposer may look at: all tokens so far (the last one is not yet in the target
    cache), the target cache itself, which holds every token before the last, and, for
    proposers that draft from features, the target's final hidden states [m, D] of the m
    tokens that entered the cache since the last proposal (the prompt, then each accepted block);
    a proposer that reads them sets it to None."""

    tokens: list[int]
    target_cache: KVCache
    target_hidden: torch.Tensor | None = None


class Proposer(abc.ABC):
    name: str = "proposer"
    uses_target_hidden: bool = False  # the generator then passes target_hidden

    def start(self, prompt: list[int], target_cache: KVCache) -> None:
        """A new sequence begins (after the target's prefill)."""

    @abc.abstractmethod
    def propose(self, ctx: ProposerContext, k: int) -> torch.Tensor:
        """Up to k draft tokens (int64, on the target's device); fewer, or none, is allowed."""

    def describe(self) -> dict:
        return {"method": self.name}
