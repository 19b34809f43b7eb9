"""What the engine needs from a target model, and nothing more: the contract every backend meets.

The generator, the proposers, the verify-cost calibration and the conformance kit talk to a
target only through `TargetModel` and its `Cache`, so a model from another runtime (or a device
team's own) runs the whole suite by implementing these few calls. The lean torch model
(models/llama/) is the first backend; models/backends/registry.py names them all.

A backend declares what it can do in `Capabilities`; a method that needs more is refused once,
in one line, before any decoding (`require`), instead of failing mid-run or silently degrading.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Protocol, runtime_checkable

import torch

from models.common.errors import UserError


@dataclasses.dataclass(frozen=True)
class Capabilities:
    """What a backend's target can do. Every field is a promise the conformance kit checks."""

    tree_masks: bool  # a token tree verified in one pass under an ancestor mask (else chains only)
    hidden_states: bool  # final hidden states (and chosen layers') beside the logits: trained heads
    batch_rows: bool  # several sequences' blocks in one call (forward_rows): batches
    layer_skip: bool  # a view on the first n layers sharing weights and cache: self_draft
    traced: bool  # calls captured once and replayed (CUDA graphs)
    # a token's logits are bit-identical decoded alone, verified among drafts, or batched: the
    # kit then demands exact equality, else holds the backend to the near-tie rule
    batch_invariant: bool
    torch_weights: bool  # embedding and LM-head tensors a torch draft head can share (trained heads)
    dtypes: tuple[str, ...] = ("float32",)

    def declared(self) -> list[str]:
        """The capabilities this backend has, by name."""
        return [f.name for f in dataclasses.fields(self) if f.type == "bool" and getattr(self, f.name)]


@runtime_checkable
class Cache(Protocol):
    """One sequence's (or a batch's) key/value memory. Its length is the only state a caller
    moves: rollback is an assignment, and entries past the length are never attended to."""

    length: int
    max_seq_len: int
    batch_row: int  # a row view's row in the batch cache it shares memory with

    @property
    def batch_size(self) -> int: ...

    def row(self, b: int) -> Cache:
        """Row b of a batch cache as a one-sequence cache sharing its memory, length 0."""

    def compact(self, start: int, keep: list[int]) -> None:
        """Keep the block entries at slots start + keep[j] as slots start + j; drop the rest."""

    def rollback(self, length: int) -> None: ...

    def reset(self) -> None: ...


@dataclasses.dataclass
class RowBlock:
    """One sequence's new tokens in a multi-sequence call: `cache` is its row of the batch cache
    (Cache.row), the tokens go right after its live entries; positions (RoPE, [n]) and tree_mask
    ([n, n] ancestor mask) as in TargetModel.__call__ (None: a causal chain)."""

    cache: Cache
    n_tokens: int
    positions: torch.Tensor | None = None
    tree_mask: torch.Tensor | None = None


@runtime_checkable
class TargetModel(Protocol):
    """A loaded model the engine can decode, verify and draft with."""

    backend: str  # the registry name (models/backends/registry.py)
    capabilities: Capabilities

    @property
    def device(self) -> torch.device: ...

    @property
    def dtype(self) -> torch.dtype: ...

    @property
    def vocab_size(self) -> int: ...

    @property
    def n_layers(self) -> int: ...

    def new_cache(self, max_seq_len: int, batch_size: int = 1) -> Cache: ...

    def check_seq_len(self, max_seq_len: int) -> None:
        """One line when the model cannot address max_seq_len positions."""

    def cache_bytes_per_token(self) -> int:
        """Cache bytes one token takes in one row (the memory check before any allocation)."""

    def __call__(self, tokens: torch.Tensor, cache: Cache, start: int | torch.Tensor, *,
                 positions: torch.Tensor | None = None, tree_mask: torch.Tensor | None = None,
                 logits_for: str = "all", return_hidden: bool = False,
                 hidden_layers: tuple[int, ...] = ()) -> torch.Tensor | tuple[torch.Tensor | None, torch.Tensor]:
        """One sequence's T new tokens [1, T] stored at cache slots [start, start + T): logits
        [1, T', V] (T' = T, or 1 with logits_for "last"; None with "none"), and with return_hidden
        the hidden states [1, T, (len(hidden_layers) + 1) D], the final state last."""

    def forward_rows(self, tokens: torch.Tensor, blocks: list[RowBlock], cache: Cache, return_hidden: bool = False,
                     hidden_layers: tuple[int, ...] = ()) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Several sequences' blocks flattened into tokens [N] in one call: logits [N, V] (and
        hidden states [N, ...]); `cache` is the batch cache whose rows the blocks' caches are."""

    def truncated(self, n_layers: int) -> TargetModel:
        """The first n_layers sharing this model's weights (capability layer_skip)."""

    def cache_view(self, cache: Cache, n_layers: int) -> Cache:
        """A cache over the first n_layers of `cache`, sharing its memory (capability layer_skip)."""


@runtime_checkable
class TorchWeights(TargetModel, Protocol):
    """A target whose backend declares torch_weights: a trained head shares its embedding and
    LM-head tensors and drafts with a one-layer model of the target's own family."""

    tok_embeddings: torch.nn.Parameter  # [V, D]
    output: torch.nn.Parameter  # the LM head [V, D]
    norm: torch.nn.Parameter  # the final norm's weight [D]
    args: Any  # dim, vocab_size, n_layers of the architecture

    def draft_layer(self, output: torch.nn.Parameter) -> Any:
        """A one-layer model of this family sharing the embeddings, reading `output` as its LM head."""


def hidden_layers_fit(layers: tuple[int, ...] | list[int], n_layers: int) -> bool:
    """Whether `layers` are increasing indices below the last layer (whose output is the final
    state itself), as a forward's hidden_layers must be."""
    return list(layers) == sorted(set(layers)) and all(0 <= i < n_layers - 1 for i in layers)


CAPABILITY_WORDS = {
    "tree_masks": "token trees verified in one pass",
    "hidden_states": "the target's hidden states",
    "batch_rows": "several sequences in one call",
    "layer_skip": "a view on its first layers",
    "traced": "traced execution",
    "batch_invariant": "bit-identical logits alone and batched",
    "torch_weights": "torch embedding and LM-head tensors",
}


class MissingCapability(UserError):
    """A backend lacks what a method needs: a sweep over several backends skips the method there."""


def require(target: TargetModel, capability: str, who: str) -> None:
    """One line, before any decoding, when `who` (e.g. "--method eagle") needs what the
    target's backend does not declare."""
    if capability not in CAPABILITY_WORDS:
        raise ValueError(f"unknown capability {capability!r}; expected one of {', '.join(CAPABILITY_WORDS)}")
    if not getattr(target.capabilities, capability):
        raise MissingCapability(f"{who} needs {CAPABILITY_WORDS[capability]} ({capability}), which backend "
                                f"{target.backend!r} does not provide; use --backend torch")
