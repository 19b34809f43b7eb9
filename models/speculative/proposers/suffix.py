"""Suffix drafting (SuffixDecoding): continuations of the longest earlier match, by frequency.

The corpus is the current sequence (prompt and output so far) plus every earlier sequence this
proposer has seen in the run, so a model that repeats itself across requests (agents, batch
jobs with shared templates) gets drafts from its own past outputs. For the longest suffix of
the context that occurs earlier, every occurrence's continuation is merged into a trie whose
node score is the fraction of occurrences that went that way; the most likely nodes are
drafted. Speculation length adapts: a match of p tokens drafts at most ALPHA * p deep, and
nodes rarer than MIN_PROB are not drafted, so a weak match gives a small tree.
"""

from __future__ import annotations

import heapq

import numpy as np
import torch

from models.speculative.proposers.base import BuildContext, Proposer, ProposerContext, register
from models.speculative.tree import DraftTree, TreeSpec

ALPHA = 2.0  # draft depth per matched token
MIN_PROB = 0.1  # nodes that fewer occurrences followed are not drafted
MAX_MATCH = 32  # longest suffix compared
MAX_OCCURRENCES = 256  # most recent occurrences of the match that vote
MAX_CORPUS_TOKENS = 1 << 20  # earlier sequences kept (newest first)
SEPARATOR = -1


def longest_match(corpus: np.ndarray, max_len: int) -> tuple[int, np.ndarray]:
    """Length p of the longest suffix of `corpus` that also ends earlier with a token after it,
    and the positions where those earlier occurrences end. (0, []) when even the last token is new."""
    n = corpus.shape[0]
    if n < 2:
        return 0, np.empty(0, dtype=np.int64)
    follows = corpus[1:] != SEPARATOR  # an occurrence must have a continuation
    ends = np.nonzero((corpus[:-1] == corpus[-1]) & follows)[0]
    length = 1 if ends.size else 0
    while ends.size and length < min(max_len, n - 1):
        back = ends - length
        ok = back >= 0
        nxt = ends[ok][corpus[back[ok]] == corpus[n - 1 - length]]
        if nxt.size == 0:
            break
        ends, length = nxt, length + 1
    return length, ends


def suffix_tree_draft(corpus: np.ndarray, spec: TreeSpec) -> tuple[list[int], list[int]]:
    """(tokens, parents) of the draft for the context that ends `corpus`."""
    length, ends = longest_match(corpus, MAX_MATCH)
    if length == 0:
        return [], []
    depth = min(spec.depth, max(1, int(ALPHA * length)))
    ends = ends[-MAX_OCCURRENCES:]
    counts: dict[tuple[int, ...], int] = {}  # path -> occurrences that continued that way
    for e in ends.tolist():
        cont = corpus[e + 1 : e + 1 + depth]
        stop = np.nonzero(cont == SEPARATOR)[0]
        cont = cont[: stop[0]] if stop.size else cont
        path: tuple[int, ...] = ()
        for tok in cont.tolist():
            path = path + (tok,)
            counts[path] = counts.get(path, 0) + 1
    total = float(ends.size)
    children: dict[tuple[int, ...], list[tuple[int, ...]]] = {}
    for path in counts:
        children.setdefault(path[:-1], []).append(path)
    for kids in children.values():
        kids.sort(key=lambda p: -counts[p])
        del kids[max(1, spec.topk):]
    budget = spec.budget if spec.topk > 1 else min(spec.budget, spec.depth)
    tokens, parents, index = [], [], {(): -1}
    heap = [(-counts[p] / total, p) for p in children.get((), [])]
    heapq.heapify(heap)
    while heap and len(tokens) < budget:
        neg, path = heapq.heappop(heap)
        if -neg < MIN_PROB and tokens:
            break
        index[path] = len(tokens)
        tokens.append(path[-1])
        parents.append(index[path[:-1]])
        for kid in children.get(path, []):
            heapq.heappush(heap, (-counts[kid] / total, kid))
    return tokens, parents


class SuffixProposer(Proposer):
    name = "suffix"

    def __init__(self, device: torch.device | str = "cpu"):
        self.device = device
        # earlier sequences, each followed by SEPARATOR; one list shared by the forks of a batch
        self._history = [np.empty(0, dtype=np.int64)]

    @property
    def history(self) -> np.ndarray:
        return self._history[0]

    def finish(self, tokens: list[int]) -> None:
        """The sequence that just ended joins the corpus (shared with this proposer's forks)."""
        done = np.asarray(list(tokens) + [SEPARATOR], dtype=np.int64)
        self._history[0] = np.concatenate([self.history, done])[-MAX_CORPUS_TOKENS:]

    def forget(self) -> None:
        self._history[0] = np.empty(0, dtype=np.int64)

    def propose(self, ctx: ProposerContext, spec: TreeSpec) -> DraftTree:
        corpus = np.concatenate([self.history, np.asarray(ctx.tokens, dtype=np.int64)])
        tokens, parents = suffix_tree_draft(corpus, spec)
        return DraftTree(torch.tensor(tokens, dtype=torch.int64, device=self.device), tuple(parents))

    def describe(self) -> dict:
        return {"method": self.name, "alpha": ALPHA, "min_prob": MIN_PROB}


@register("suffix", "SuffixDecoding: frequency-scored continuations from this run's prompts and outputs; no model")
def build(b: BuildContext) -> Proposer:
    return SuffixProposer(device=b.device.torch_device)
