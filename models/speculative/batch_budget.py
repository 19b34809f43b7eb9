"""Which drafts a batch verifies: the nodes whose expected tokens pay for the compute they take.

One sequence on its own is memory-bound: a decode step reads every weight for one row, and a
few more rows of drafts cost little (the verify-cost curve is flat). A batch already fills
that read with rows; on a CPU it soon becomes compute-bound, each row costing about the same,
so a draft that will probably be rejected slows every row of the batch. Before the rows draft,
each row's node budget is chosen: nodes are taken across rows in order of their expected
accepted tokens, each row's best first (proposers list nodes best first, so a budget of b gives
the first b nodes of the full tree), while the batch's expected tokens per second still rise:

    add a node worth g expected tokens  iff  (T + g) / (step + (n + 1) c) > T / (step + n c)
                                       iff  g > T c / (step + n c)

with T the expected tokens of the rows and n nodes taken so far (each row's own target token
counts 1), step the measured time of a decode step of this many sequences, and c a draft row's
cost: the slope of the least-squares line through one sequence's measured verify-cost curve
(both measured once per device and cached, budget.py). A node's worth comes from its row's own
history, as the auto budget learns it: how many drafts a budget of b accepted, with an
optimistic prior so that a new sequence drafts first.
"""

from __future__ import annotations

import dataclasses
import heapq

from models.speculative.budget import VerifyCost, accepted_by_budget

PRIOR_WEIGHT = 1.0  # pseudo-iterations of the prior
PRIOR_FIRST = 0.6  # prior worth of a sequence's first node
DECAY = 0.8  # a node never verified yet is worth this much of the one before it
EXPLORE_EVERY = 8  # a sequence left without drafts this many iterations verifies one (its worth may have changed)


def _prior(b: int) -> float:
    return sum(PRIOR_FIRST * DECAY ** (j - 1) for j in range(1, b + 1))


class RowHistory:
    """One sequence's acceptance by budget: accepted[b] sums the drafts its first b nodes got."""

    def __init__(self):
        self.accepted: list[float] = [0.0]
        self.seen: list[int] = [0]
        self.idle = 0  # iterations since it last had a draft verified

    def expected(self, b: int) -> float:
        """Expected accepted drafts with a budget of b nodes, b verified before (prior-smoothed)."""
        return (self.accepted[b] + PRIOR_WEIGHT * _prior(b)) / (self.seen[b] + PRIOR_WEIGHT)

    def worth(self, b: int) -> float:
        """Expected tokens node b (1-based) adds to the b - 1 before it. A budget this sequence
        has not verified yet is worth DECAY of the node before, so a sequence whose drafts are
        accepted tries longer ones, and one whose drafts are not, does not."""
        if b < len(self.seen) and self.seen[b]:
            return max(0.0, self.expected(b) - (self.expected(b - 1) if b > 1 else 0.0))
        return PRIOR_FIRST if b == 1 else DECAY * self.worth(b - 1)

    def observe(self, path: list[int], verified: int) -> None:
        """path: the accepted nodes' indices; verified: how many nodes were verified."""
        self.idle = 0
        while len(self.seen) <= verified:
            self.accepted.append(0.0)
            self.seen.append(0)
        for b, accepted in enumerate(accepted_by_budget(path, verified), start=1):
            self.accepted[b] += accepted
            self.seen[b] += 1


@dataclasses.dataclass
class BatchCost:
    steps: VerifyCost  # seconds of a decode step of q sequences
    rows: VerifyCost  # seconds of one sequence's block of q rows

    def __post_init__(self):
        self.per_row = self.rows.linear_fit()[1]


def nodes_to_verify(sizes: list[int], histories: list[RowHistory], step_seconds: float,
                    row_seconds: float) -> list[int]:
    """How many of each row's nodes (best first, at most sizes[r]) the batch should verify; a row
    given 0 does not draft at all (a draft model or head costs time too)."""
    keep = [0] * len(sizes)
    tokens, nodes = float(len(sizes)), 0
    heap = [(-h.worth(1), r) for r, (n, h) in enumerate(zip(sizes, histories)) if n]
    heapq.heapify(heap)
    while heap:
        neg, r = heapq.heappop(heap)
        gain = -neg
        if gain <= tokens * row_seconds / (step_seconds + row_seconds * nodes):
            break
        tokens += gain
        nodes += 1
        keep[r] += 1
        if keep[r] < sizes[r]:
            heapq.heappush(heap, (-histories[r].worth(keep[r] + 1), r))
    for r, history in enumerate(histories):  # now and then a row left out tries one node again
        if sizes[r] and not keep[r]:
            history.idle += 1
            keep[r] = 1 if history.idle >= EXPLORE_EVERY else 0
    return keep
