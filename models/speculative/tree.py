"""The draft type: a token tree verified in one target pass. A chain is the tree with one branch.

Proposers list nodes best first where they rank them, so that the first b nodes are the tree
they would draft with a budget of b (the auto budget learns from that). Nodes are in
topological order (a parent before its children) with a parent index each; -1 is
the root, the last accepted token, which is already decided and sits at block position 0.
Node i sits at block position i + 1, attends to the cached prefix and to its own ancestors
(the ancestor mask), and is rotated as the token at position start + depth. So one forward
over the block scores every root-to-node path at once, and each node's logits are those the
target would give that path decoded alone.
"""

from __future__ import annotations

import dataclasses
import functools

import torch


@dataclasses.dataclass(frozen=True)
class TreeSpec:
    """How big a tree a proposer may draft: children per node, levels, nodes in all (root
    excluded). topk = 1 asks for a chain of min(depth, budget) tokens."""

    topk: int = 1
    depth: int = 4
    budget: int = 4

    def capped(self, depth: int) -> TreeSpec:
        """The same spec, no deeper than `depth` (the tokens left before the length cap)."""
        depth = min(self.depth, depth)
        budget = self.budget if self.topk > 1 else min(self.budget, depth)
        return dataclasses.replace(self, depth=depth, budget=budget)

    def limited(self, budget: int) -> TreeSpec:
        """At most `budget` nodes: a chain that much shorter, a tree with fewer nodes."""
        budget = min(self.budget, budget)
        return dataclasses.replace(self, budget=budget, depth=min(self.depth, budget) if self.is_chain else self.depth)

    @property
    def is_chain(self) -> bool:
        return self.topk == 1


@dataclasses.dataclass(frozen=True)
class DraftTree:
    tokens: torch.Tensor  # [n] int64, on the device the proposer drafted on
    parents: tuple[int, ...]  # per node: the parent node's index, or -1 for the root
    sources: tuple[str, ...] | None = None  # per node: which proposer drafted it (multi-draft)
    # sampled decoding: per node, the distribution [n, V] (target vocabulary) its token was drawn
    # from; None: every node is deterministic (q one-hot), as n-gram drafts and top-k children are
    draft_probs: torch.Tensor | None = None

    def __post_init__(self):
        if self.tokens.dim() != 1 or self.tokens.numel() != len(self.parents):
            raise ValueError(f"{self.tokens.numel()} tokens for {len(self.parents)} parents")
        for i, p in enumerate(self.parents):
            if not -1 <= p < i:
                raise ValueError(f"node {i} has parent {p}: parents must come first (topological order)")
        if self.draft_probs is not None and self.draft_probs.shape[0] != len(self.parents):
            raise ValueError(f"{self.draft_probs.shape[0]} draft distributions for {len(self.parents)} nodes")

    @classmethod
    def chain(cls, tokens: torch.Tensor | list[int], device: torch.device | str = "cpu") -> DraftTree:
        if not isinstance(tokens, torch.Tensor):
            tokens = torch.tensor(tokens, dtype=torch.int64, device=device)
        return cls(tokens.to(torch.int64).flatten(), tuple(range(-1, tokens.numel() - 1)))

    @classmethod
    def drawn_chain(cls, picks: list[tuple[int, torch.Tensor | None]], device: torch.device | str) -> DraftTree:
        """A chain of ChainSampler.draw picks: their tokens, with their q rows as draft_probs when
        they were sampled (coupled picks carry none)."""
        chain = cls.chain([token for token, _ in picks], device)
        rows = [q for _, q in picks]
        if rows and rows[0] is not None:
            chain = dataclasses.replace(chain, draft_probs=torch.stack(rows))
        return chain

    @classmethod
    def empty(cls, device: torch.device | str = "cpu") -> DraftTree:
        return cls(torch.empty(0, dtype=torch.int64, device=device), ())

    @property
    def n_nodes(self) -> int:
        return len(self.parents)

    @functools.cached_property
    def is_chain(self) -> bool:
        return all(p == i - 1 for i, p in enumerate(self.parents))

    @functools.cached_property
    def depths(self) -> tuple[int, ...]:
        """Depth of each node (the root's children are at depth 1)."""
        out: list[int] = []
        for p in self.parents:
            out.append(1 if p < 0 else out[p] + 1)
        return tuple(out)

    @property
    def depth(self) -> int:
        return max(self.depths, default=0)

    @functools.cached_property
    def children(self) -> tuple[tuple[int, ...], ...]:
        """children[0] are the root's, children[i + 1] node i's, each in node order."""
        out: list[list[int]] = [[] for _ in range(self.n_nodes + 1)]
        for i, p in enumerate(self.parents):
            out[p + 1].append(i)
        return tuple(tuple(c) for c in out)

    def path_to(self, node: int) -> list[int]:
        """Nodes from the root's child down to `node`."""
        path = []
        while node >= 0:
            path.append(node)
            node = self.parents[node]
        return path[::-1]

    def attention_mask(self) -> torch.Tensor | None:
        """Bool [n + 1, n + 1] over the block (root first): True where a position sees another
        (itself and its ancestors). None for a chain: the causal mask is that already."""
        if self.is_chain:
            return None
        return ancestor_mask(self.parents).to(self.tokens.device)

    def positions(self, start: int) -> torch.Tensor | None:
        """RoPE positions of the block: start + depth (root at start). None for a chain."""
        if self.is_chain:
            return None
        return start + torch.tensor((0, *self.depths), dtype=torch.int64, device=self.tokens.device)


def ancestor_mask(parents: tuple[int, ...] | list[int]) -> torch.Tensor:
    """[n + 1, n + 1] bool, root at 0: row i sees column j when j is i or an ancestor of i."""
    n = len(parents)
    mask = torch.zeros(n + 1, n + 1, dtype=torch.bool)
    mask[0, 0] = True
    for i, p in enumerate(parents):
        mask[i + 1] = mask[p + 1]
        mask[i + 1, i + 1] = True
    return mask


class TrieBuilder:
    """Merges token paths into one tree, sharing common prefixes (multi-draft, n-gram matches).

    Nodes keep the order they were first added, which is topological because a path's prefix
    is added before its tail. Each node remembers the first source that drafted it.
    """

    def __init__(self, budget: int):
        self.budget = budget
        self.tokens: list[int] = []
        self.parents: list[int] = []
        self.sources: list[str] = []
        self._index: dict[tuple[int, int], int] = {}  # (parent, token) -> node

    @property
    def full(self) -> bool:
        return len(self.tokens) >= self.budget

    def add_child(self, parent: int, token: int, source: str = "") -> int | None:
        """The node for `token` under `parent` (-1: the root), added if new; None when the
        budget is spent."""
        key = (parent, int(token))
        node = self._index.get(key)
        if node is None:
            if self.full:
                return None
            node = len(self.tokens)
            self._index[key] = node
            self.tokens.append(int(token))
            self.parents.append(parent)
            self.sources.append(source)
        return node

    def add_path(self, path: list[int], source: str = "") -> int:
        """Adds the path under the root until the budget is spent; returns how many tokens of
        it are in the trie afterwards (old or new)."""
        parent = -1
        for depth, token in enumerate(path):
            node = self.add_child(parent, token, source)
            if node is None:
                return depth
            parent = node
        return len(path)

    def build(self, device: torch.device | str = "cpu", with_sources: bool = False) -> DraftTree:
        tokens = torch.tensor(self.tokens, dtype=torch.int64, device=device)
        return DraftTree(tokens, tuple(self.parents), tuple(self.sources) if with_sources else None)
