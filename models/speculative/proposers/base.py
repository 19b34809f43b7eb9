"""The proposer interface (context in, a token tree out) and the registry that finds them.

The generator never knows which proposer runs. Each proposer module registers a builder under
its method name, so adding a way of drafting is one new file in this package.
"""

from __future__ import annotations

import abc
import copy
import dataclasses
from collections.abc import Callable
from typing import Any

import torch

from models.backends.interface import Cache
from models.speculative.sampling import ChainSampler
from models.speculative.tree import DraftTree, TreeSpec


@dataclasses.dataclass
class ProposerContext:
    """What a proposer may look at, read-only: all tokens so far (the last one is not yet in the
    target cache), the target cache itself, which holds every token before the last, and, for
    proposers that draft from features, the target's final hidden states [m, D] of the m
    tokens that entered the cache since the last proposal (the prompt, then each accepted path;
    [m, (n + 1) D] when a proposer reads n more layers, the final state last); the generator
    starts the next batch of them after each proposal. Under sampled decoding, `sampler` says how
    a model proposer picks a chain's tokens (None: greedy, or a proposer without a distribution).
    A proposer keeps what it needs (a copy), never a reference into this context."""

    tokens: list[int]
    target_cache: Cache
    target_hidden: torch.Tensor | None = None
    sampler: ChainSampler | None = None


class Proposer(abc.ABC):
    name: str = "proposer"
    uses_target_hidden: bool = False  # the generator then passes target_hidden
    hidden_layers: tuple[int, ...] = ()  # target layers whose outputs precede the final state in it

    def start(self, prompt: list[int], target_cache: Cache) -> None:
        """A new sequence begins (after the target's prefill)."""

    def forget(self) -> None:
        """Drop what earlier sequences taught (after a warm-up, so that it cannot help timed runs)."""

    def finish(self, tokens: list[int]) -> None:
        """A sequence ended: its prompt and output, for a proposer that learns across sequences."""

    def fork(self) -> Proposer:
        """A proposer for another sequence decoded at the same time (a row of a batch): it
        shares the models and what is learnt across sequences, never one sequence's state."""
        return copy.copy(self)

    @abc.abstractmethod
    def propose(self, ctx: ProposerContext, spec: TreeSpec) -> DraftTree:
        """A tree within spec (depth, nodes; topk = 1: a chain), on the target's device;
        a smaller tree, or an empty one, is allowed."""

    def describe(self) -> dict:
        return {"method": self.name}


@dataclasses.dataclass(frozen=True)
class BuildContext:
    """What a builder gets: the run configuration, the loaded target (its model a TargetModel),
    the target as decoding calls it (its capabilities are the ones checked), the device, a loader
    that shares models across the process (spec, n_layers) -> LoadedModel, and the backend's
    runner (model, device, max_block) -> the TargetModel that decodes."""

    config: Any  # models.speculative.engine.RunConfig
    target: Any  # models.llama.weights.LoadedModel
    model: Any  # models.backends.interface.TargetModel
    device: Any  # models.common.device.Device
    load_model: Callable[[str, int | None], Any]
    runner: Callable[[Any, Any, int], Any]


@dataclasses.dataclass(frozen=True)
class ProposerEntry:
    name: str
    build: Callable[[BuildContext], Proposer]
    summary: str  # one line for --help
    needs: tuple[str, ...] = ()  # target capabilities (models/backends/interface.py), checked before it is built


REGISTRY: dict[str, ProposerEntry] = {}


def register(name: str, summary: str, needs: tuple[str, ...] = ()):
    """Decorator for a builder: `@register("suffix", "...")\ndef build(ctx): ...`; needs: the
    target capabilities the method cannot run without."""

    def wrap(build: Callable[[BuildContext], Proposer]) -> Callable[[BuildContext], Proposer]:
        if name in REGISTRY:
            raise ValueError(f"proposer {name!r} registered twice")
        REGISTRY[name] = ProposerEntry(name, build, summary, needs)
        return build

    return wrap
