"""Verification as one unit: given the target's logits over a verified tree, which drafts stand.

Three rules side by side (greedy, rejection sampling, coupled sampling), each a pure function of
tensors so it can be tested on hand-built logits and trees, and `rule_for`, which picks the
run's rule once: the generator then calls `rule.accept(tree, logits, rng, position)` and never
asks which rule it holds.
The block layout is the one the generator verifies: position 0 is the root (the last accepted
token), position i + 1 is tree node i, so logits[p] is the target's prediction for the token
after block position p, i.e. for any child of that position.
"""

from __future__ import annotations

import dataclasses
from typing import Protocol

import torch

from models.speculative.sampling import (
    VERIFY_MODES, SamplingParams, SequenceRng, _normalise, target_logprobs, target_probs,
)
from models.speculative.tree import DraftTree

GREEDY, REJECTION, COUPLED = "greedy", *VERIFY_MODES
# A residual max(0, p - q) with less mass than this is rounding noise: its mass is the chance
# of a rejection, so p == q on the support and the rejection could not really have happened.
RESIDUAL_TOL = 1e-6


@dataclasses.dataclass(frozen=True)
class Acceptance:
    path: list[int]  # accepted nodes, root's child first (a root-to-node path of the tree)
    tokens: list[int]  # the accepted drafts followed by the target's own next token

    @property
    def n_accepted(self) -> int:
        return len(self.path)


def greedy_accept(tree: DraftTree, logits: torch.Tensor) -> Acceptance:
    """The longest root-to-node path whose every token equals the target's argmax at its
    parent, plus the target's next token after that path.

    logits: [n + 1, V] for a tree of n nodes (n may be 0). The emitted tokens are exactly what
    target-only greedy decoding would produce, whatever the tree holds. Under greedy at most one
    child of a node can match; if a tree repeats a token among siblings, the first one wins.
    """
    n = tree.n_nodes
    if logits.shape[0] != n + 1:
        raise ValueError(f"need {n + 1} rows of logits for a tree of {n} nodes, got {logits.shape[0]}")
    choice = logits.argmax(dim=-1).tolist()  # one host read per verification
    drafted = tree.tokens.tolist()
    path: list[int] = []
    block_pos = 0  # the root
    while True:
        nxt = next((c for c in tree.children[block_pos] if drafted[c] == choice[block_pos]), None)
        if nxt is None:
            break
        path.append(nxt)
        block_pos = nxt + 1
    return Acceptance(path, [drafted[i] for i in path] + [choice[block_pos]])


# --- rejection sampling over a tree ------------------------------------------------------------


def _residual(p: torch.Tensor, q: torch.Tensor | None, x: int) -> torch.Tensor:
    """What is left of p after rejecting token x drafted from q, not yet renormalised:
    max(0, p - q); for one-hot q (a deterministic draft), p with x removed."""
    if q is None:
        r = p.clone()
        r[x] = 0
        return r
    return (p - q).clamp_(min=0)


def _accept_prob(p: torch.Tensor, q: torch.Tensor | None, x: int) -> float:
    """min(1, p(x) / q(x)); q(x) = 0 (a draft its own q could not produce) counts as a ratio of
    infinity where p(x) > 0 and 0 where not."""
    p_x = float(p[x])
    q_x = 1.0 if q is None else float(q[x])
    if q_x <= 0:
        return 1.0 if p_x > 0 else 0.0
    return min(1.0, p_x / q_x)


def _check_shapes(tree: DraftTree, probs: torch.Tensor, draft_probs: torch.Tensor | None) -> None:
    n = tree.n_nodes
    if probs.dim() != 2 or probs.shape[0] != n + 1:
        raise ValueError(f"need {n + 1} rows of target probs for a tree of {n} nodes, got {tuple(probs.shape)}")
    if draft_probs is not None and tuple(draft_probs.shape) != (n, probs.shape[1]):
        raise ValueError(f"need draft probs of shape {(n, probs.shape[1])}, got {tuple(draft_probs.shape)}")


def _normalised_rows(draft_probs: torch.Tensor) -> torch.Tensor:
    """fp64 rows summing to 1; a row without mass is a proposer bug, not a distribution."""
    draft = draft_probs.double()
    mass = draft.sum(dim=-1, keepdim=True)
    if mass.numel() and float(mass.min()) <= 0:
        raise ValueError(f"draft probs rows {(mass.flatten() <= 0).nonzero().flatten().tolist()} have no mass")
    return draft / mass


def rejection_accept(
    tree: DraftTree,
    probs: torch.Tensor,
    draft_probs: torch.Tensor | None,
    rng: SequenceRng,
) -> Acceptance:
    """Recursive rejection sampling over siblings (SpecInfer's multi-step speculative sampling).

    probs: [n + 1, V] target distributions (target_probs of the block's logits). draft_probs:
    [n, V], row i the q node i was drawn from, or None when every node is deterministic (q
    one-hot). At a node, with p its target row: try its children in order; child c (token x)
    is accepted with probability min(1, p(x) / q_c(x)); if rejected, p <- norm(max(0, p - q_c))
    (for one-hot q: p(x) = 0, renormalised) and the next child is tried. When no child is
    accepted (or there are none), the last token is drawn from the remaining p: the correction,
    or the bonus token after a fully accepted path. The emitted tokens are then distributed
    exactly as target-only sampling. A residual with no mass (see RESIDUAL_TOL) leaves p as it
    was: that rejection had probability zero up to rounding.
    """
    _check_shapes(tree, probs, draft_probs)
    drafted = tree.tokens.tolist()
    draft = None if draft_probs is None else _normalised_rows(draft_probs)
    path: list[int] = []
    block_pos = 0
    while True:
        p = _normalise(probs[block_pos].double())
        nxt = None
        for c in tree.children[block_pos]:
            q = None if draft is None else draft[c]
            x = drafted[c]
            if rng.accept(_accept_prob(p, q, x)):
                nxt = c
                break
            residual = _residual(p, q, x)
            mass = float(residual.sum())
            if mass > RESIDUAL_TOL:
                p = _normalise(residual, mass)
        if nxt is None:
            break
        path.append(nxt)
        block_pos = nxt + 1
    return Acceptance(path, [drafted[i] for i in path] + [rng.categorical(p)])


# --- coupled (Gumbel-max) verification ---------------------------------------------------------


def coupled_noise(rng: SequenceRng, tree: DraftTree, position: int, vocab: int,
                  device: torch.device | str = "cpu") -> torch.Tensor:
    """[n + 1, V] noise for a block whose root is the token at position - 1: row p is the noise
    of the token after block position p, at position + depth(p) (siblings share it)."""
    depths = (0, *tree.depths)
    per_depth = {d: rng.gumbel(position + d, vocab) for d in sorted(set(depths))}
    return torch.stack([per_depth[d] for d in depths]).to(device)


def coupled_accept(tree: DraftTree, logprobs: torch.Tensor, gumbel: torch.Tensor) -> Acceptance:
    """greedy_accept with argmax(log p + g) as the target's choice: a draft stands iff it is the
    token target-only coupled decoding emits at its position. logprobs: [n + 1, V]
    (target_logprobs); gumbel: [n + 1, V] (coupled_noise)."""
    n = tree.n_nodes
    if logprobs.shape[0] != n + 1 or gumbel.shape != logprobs.shape:
        raise ValueError(f"need {n + 1} rows of logprobs and noise alike, got {tuple(logprobs.shape)}, "
                         f"{tuple(gumbel.shape)}")
    return greedy_accept(tree, logprobs.float() + gumbel.to(logprobs.device))


# --- the rule a run holds -----------------------------------------------------------------------


class Rule(Protocol):
    name: str  # greedy, rejection or coupled

    def accept(self, tree: DraftTree, logits: torch.Tensor, rng: SequenceRng | None, position: int) -> Acceptance:
        """The acceptance over the target's logits [n + 1, V] for a block whose root's children sit
        at absolute position `position`; rng: the sequence's stream (None under greedy)."""


@dataclasses.dataclass(frozen=True)
class Greedy:
    name: str = GREEDY

    def accept(self, tree: DraftTree, logits: torch.Tensor, rng: SequenceRng | None, position: int) -> Acceptance:
        return greedy_accept(tree, logits)


@dataclasses.dataclass(frozen=True)
class Rejection:
    sampling: SamplingParams
    name: str = REJECTION

    def accept(self, tree: DraftTree, logits: torch.Tensor, rng: SequenceRng | None, position: int) -> Acceptance:
        return rejection_accept(tree, target_probs(logits, self.sampling), tree.draft_probs, rng)


@dataclasses.dataclass(frozen=True)
class Coupled:
    sampling: SamplingParams
    name: str = COUPLED

    def accept(self, tree: DraftTree, logits: torch.Tensor, rng: SequenceRng | None, position: int) -> Acceptance:
        noise = coupled_noise(rng, tree, position, logits.shape[-1], logits.device)
        return coupled_accept(tree, target_logprobs(logits, self.sampling), noise)


def rule_for(sampling: SamplingParams, verify: str | None = None) -> Rule:
    """The run's rule, picked once: greedy at temperature 0, else --verify (default rejection)."""
    if sampling.is_greedy:
        return Greedy()
    mode = verify or REJECTION
    if mode not in VERIFY_MODES:
        raise ValueError(f"unknown verify mode {mode!r}; expected one of {', '.join(VERIFY_MODES)}")
    return Rejection(sampling) if mode == REJECTION else Coupled(sampling)
