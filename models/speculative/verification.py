"""Acceptance rules: given the target's logits over a verified tree, which drafts stand.

Each rule is a pure function of tensors so it can be tested on hand-built logits and trees.
The block layout is the one the generator verifies: position 0 is the root (the last accepted
token), position i + 1 is tree node i, so logits[p] is the target's prediction for the token
after block position p, i.e. for any child of that position.
"""

from __future__ import annotations

import dataclasses

import torch

from models.speculative.tree import DraftTree


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
