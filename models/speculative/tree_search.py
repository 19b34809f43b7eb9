"""Growing a draft tree from a model's next-token log-probabilities (EAGLE-2's dynamic tree).

Level by level: the `topk` best nodes of the newest level (by cumulative draft log-probability,
i.e. the draft's own probability of the whole path) are fed to the draft in one call, each
gets its `topk` best children; after `depth` levels every candidate is reranked and the
`budget` best are kept. A child never scores above its parent, so the kept set is a tree.

One departure from EAGLE-2: the draft's own greedy chain (the best child of the best child...)
is always expanded and always kept (when the budget holds `depth` nodes), so a tree never
accepts less than the chain of the same depth would; the other nodes compete by score.
With topk = 1 this is exactly greedy chain drafting: one fed token per level.

The draft model is hidden behind `step`: it gets the frontier (nodes to feed, their tokens,
depths, and the attention mask over the nodes fed so far) and returns their log-probabilities.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import torch

from models.speculative.sampling import ChainSampler, to_target_vocab
from models.speculative.tree import DraftTree, TreeSpec


@dataclasses.dataclass
class Frontier:
    nodes: list[int]  # candidate ids being fed (ids index GrownTree.tokens / parents)
    parents: list[int]  # their parents (-1: the root)
    tokens: torch.Tensor  # [F] draft-vocabulary ids
    depths: list[int]  # 1 = a child of the root
    mask: torch.Tensor  # [F, W] bool over the W nodes fed so far incl. these (slot order)


    def tree_inputs(self, root_position: int) -> dict:
        """forward() keywords for feeding this level: none for a chain's level (one node seeing
        every node before it, the plain and traceable call), else positions (root_position +
        depth) and the ancestor mask."""
        if bool(self.mask.all()):
            return {}
        positions = root_position + torch.tensor(self.depths, device=self.tokens.device)
        return {"positions": positions, "tree_mask": self.mask}


Step = Callable[[Frontier], torch.Tensor]  # -> log-probabilities [F, V]


def grow_tree(root_logprobs: torch.Tensor, step: Step, spec: TreeSpec,
              token_map: torch.Tensor | None = None,
              perturb: Callable[[torch.Tensor, int], torch.Tensor] | None = None) -> DraftTree:
    """root_logprobs: [V] for the token after the root. token_map: draft id -> target id.
    perturb(logprobs, depth): scores for the children at `depth` (coupled sampling adds the
    target's noise there, ChainSampler.perturbed); None: the log-probabilities themselves."""
    if perturb is None:
        def perturb(logprobs: torch.Tensor, depth: int) -> torch.Tensor:
            return logprobs

    device = root_logprobs.device
    k = max(1, spec.topk)
    budget = min(spec.budget, spec.depth) if k == 1 else spec.budget
    scores: list[float] = []
    tokens: list[int] = []
    parents: list[int] = []
    depths: list[int] = []
    fed: list[int] = []  # candidate ids in draft-cache slot order
    ancestors: list[set[int]] = []  # per candidate: itself and its fed ancestors

    def add_children(parent_ids: list[int], logprobs: torch.Tensor, depth: int) -> list[int]:
        values, ids = logprobs.float().topk(k, dim=-1)  # [F, k]
        base = torch.tensor([scores[p] if p >= 0 else 0.0 for p in parent_ids], device=values.device)
        cum = (values + base[:, None]).tolist()
        ids = ids.tolist()
        new = []
        for row, parent in enumerate(parent_ids):
            for j in range(k):
                new.append(len(tokens))
                scores.append(cum[row][j])
                tokens.append(ids[row][j])
                parents.append(parent)
                depths.append(depth)
                ancestors.append((ancestors[parent] if parent >= 0 else set()) | {new[-1]})
        return new

    level = add_children([-1], perturb(root_logprobs[None], 1), 1)
    greedy = [level[0]]  # topk lists the best child first
    for depth in range(2, spec.depth + 1):
        others = sorted((c for c in level if c != greedy[-1]), key=lambda c: -scores[c])
        level = [greedy[-1], *others[: k - 1]]
        fed.extend(level)
        mask = torch.tensor([[f in ancestors[c] for f in fed] for c in level], dtype=torch.bool, device=device)
        frontier = Frontier(level, [parents[c] for c in level],
                            torch.tensor([tokens[c] for c in level], device=device), [depth - 1] * len(level), mask)
        logprobs = step(frontier)
        level = add_children(level, perturb(logprobs, depth), depth)
        greedy.append(level[0])  # the greedy node was fed first, its best child comes first

    in_chain = set(greedy)
    # Rank order is topological (a parent outranks its children) and prefix-closed: the first b
    # nodes are exactly the tree this rule keeps for budget b (what --tree_budget auto relies on).
    keep = sorted(range(len(tokens)), key=lambda c: (c not in in_chain, -scores[c], depths[c], c))[:budget]
    index = {c: i for i, c in enumerate(keep)}
    out = torch.tensor([tokens[c] for c in keep], dtype=torch.int64, device=device)
    if token_map is not None:
        out = token_map[out]
    return DraftTree(out, tuple(index[parents[c]] if parents[c] >= 0 else -1 for c in keep))


def sample_chain(root_logprobs: torch.Tensor, step: Step, length: int, sampler: ChainSampler,
                 token_map: torch.Tensor | None = None, vocab: int | None = None) -> DraftTree:
    """A chain of `length` tokens, each picked by `sampler` from the draft's distribution at its
    parent (sampled decoding), fed one per level like a greedy chain. token_map: draft id ->
    target id (vocab: the target's size); the tree is in target ids with q rows [n, vocab]."""
    device = root_logprobs.device
    inverse = None
    if token_map is not None:
        inverse = torch.full((vocab,), -1, dtype=torch.int64, device=token_map.device)
        inverse[token_map] = torch.arange(token_map.numel(), device=token_map.device)
    picks: list[tuple[int, torch.Tensor | None]] = []
    logprobs = root_logprobs
    for depth in range(1, length + 1):
        token, q = sampler.draw(to_target_vocab(logprobs, token_map, vocab), depth)
        picks.append((token, q))
        if depth == length:
            break
        fed = token if inverse is None else int(inverse[token])
        frontier = Frontier([depth - 1], [depth - 2], torch.tensor([fed], device=device), [depth],
                            torch.ones(1, depth, dtype=torch.bool, device=device))
        logprobs = step(frontier)[0]
    return DraftTree.drawn_chain(picks, device)
