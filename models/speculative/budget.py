"""--tree_budget auto: the node budget that maximizes expected tokens per second, from this
device's measured verify-cost curve and the proposer's measured acceptance.

Proposers list tree nodes best first, so the first b nodes of a tree drafted with budget B are
the tree they would have drafted with budget b <= B. One verification at budget B therefore
tells how many tokens every smaller budget would have accepted: the accepted path's nodes with
index < b. The tuner drafts at the largest budget for its first iterations, then one iteration
in EXPLORE_EVERY at twice its current choice (exploring at the largest budget, 63 nodes, cost
more than it taught: measured on Spec-Bench), keeps those counts, and otherwise picks

    b* = argmax_b (1 + E[accepted | b]) / (verify_cost(b + 1) + other_cost)

where verify_cost is the target's measured time for a block of b + 1 rows (a short calibration,
cached per device, model and kernel build) and other_cost is the measured rest of an iteration
(drafting, bookkeeping). This is EAGLE-2's `total_token=-1` and Sequoia's hardware-aware tree
size in one rule, from measurements rather than assumptions.
"""

from __future__ import annotations

import bisect
import hashlib
import json
import statistics
import time
from collections import deque
from pathlib import Path

import torch
from loguru import logger

from models.common.cli import write_json_atomic
from models.backends.interface import RowBlock, TargetModel

CALIBRATION_CONTEXT = 256  # cached tokens while timing (a typical prompt)
CALIBRATION_REPEATS = 5
WARMUP_ITERATIONS = 8  # drafted at the largest budget before the first choice
EXPLORE_EVERY = 10  # then one iteration in this many drafts at twice the current choice
HISTORY = 512  # iterations of acceptance kept
LOG_EVERY = 200  # iterations between log lines about a changed choice (it moves with every estimate)


def calibration_sizes(max_rows: int) -> list[int]:
    grid = [1, 2, 3, 4, 6, 8, 12, 16, 20, 24, 32, 40, 48, 56, 64]
    return [q for q in grid if q < max_rows] + [max_rows]


def accepted_by_budget(path: list[int], budget: int) -> list[int]:
    """[b - 1]: the drafts a budget of b <= budget would have accepted, from one verification's
    accepted path (node indices): nodes are listed best first, so its nodes with index < b."""
    return [sum(1 for node in path if node < b) for b in range(1, budget + 1)]


class VerifyCost:
    """Seconds for one target pass over q rows, interpolated between measured sizes."""

    def __init__(self, seconds: dict[int, float]):
        self.sizes = sorted(seconds)
        self.seconds = [seconds[q] for q in self.sizes]

    def __call__(self, q: int) -> float:
        i = bisect.bisect_left(self.sizes, q)
        if i < len(self.sizes) and self.sizes[i] == q:
            return self.seconds[i]
        if i == 0:
            return self.seconds[0]
        if i == len(self.sizes):  # past the last: extrapolate the last slope
            i -= 1
        q0, q1, t0, t1 = self.sizes[i - 1], self.sizes[i], self.seconds[i - 1], self.seconds[i]
        return t0 + (t1 - t0) * (q - q0) / (q1 - q0)

    def describe(self) -> str:
        return ", ".join(f"q={q}: {t * 1e3:.1f} ms" for q, t in zip(self.sizes, self.seconds))

    def linear_fit(self) -> tuple[float, float]:
        """(a, b) of the least-squares line a + b * q: the measured points' noise smoothed out,
        so that a marginal row's cost never goes negative between two noisy sizes."""
        n = len(self.sizes)
        if n < 2:
            return self.seconds[0], 0.0
        mq, mt = sum(self.sizes) / n, sum(self.seconds) / n
        var = sum((q - mq) ** 2 for q in self.sizes)
        b = max(0.0, sum((q - mq) * (t - mt) for q, t in zip(self.sizes, self.seconds)) / var)
        return mt - b * mq, b


@torch.inference_mode()
def measure_verify_cost(model: TargetModel, max_rows: int, sequences: bool = False) -> VerifyCost:
    """Median time of a target pass over q rows after CALIBRATION_CONTEXT cached tokens: one
    sequence's block of q rows, or (sequences) q sequences of one token each, a batch's decode step."""
    device = model.device
    cache = model.new_cache(CALIBRATION_CONTEXT + max_rows, batch_size=max_rows if sequences else 1)
    rows = [cache.row(b) for b in range(cache.batch_size)]
    for row in rows:  # a real context in every row (a backend's cache may hold what it was given only)
        model(torch.ones(1, CALIBRATION_CONTEXT, dtype=torch.int64, device=device), row, 0, logits_for="none")
    seconds = {}
    for q in calibration_sizes(max_rows):
        times = []
        for i in range(CALIBRATION_REPEATS + 1):
            for row in rows:
                row.rollback(CALIBRATION_CONTEXT)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            t0 = time.perf_counter()
            if sequences:
                blocks = [RowBlock(row, 1) for row in rows[:q]]
                model.forward_rows(torch.ones(q, dtype=torch.int64, device=device), blocks, cache)
            else:
                model(torch.ones(1, q, dtype=torch.int64, device=device), rows[0], CALIBRATION_CONTEXT)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            if i:  # the first is a warm-up
                times.append(time.perf_counter() - t0)
        seconds[q] = statistics.median(times)
    return VerifyCost(seconds)


def _kernel_fingerprint() -> str:
    from models.common.cpu_kernels import SOURCE

    return hashlib.sha256(SOURCE.read_bytes()).hexdigest()[:12] if SOURCE.is_file() else "none"


def cached_verify_cost(model: TargetModel, model_name: str, device_name: str, max_rows: int,
                       folder: Path, sequences: bool = False) -> VerifyCost:
    """The verify-cost curve (of one sequence's q rows, or of q sequences' decode step) for this
    device, model, dtype and kernel build, measured once."""
    key = json.dumps([model.backend, model_name, device_name, str(model.dtype), torch.__version__,
                      _kernel_fingerprint(), max_rows, CALIBRATION_CONTEXT] + (["sequences"] if sequences else []))
    path = folder / f"verify_cost-{hashlib.sha256(key.encode()).hexdigest()[:16]}.json"
    if path.is_file():
        try:
            data = json.loads(path.read_text())
            return VerifyCost({int(q): float(t) for q, t in data["seconds"].items()})
        except (ValueError, KeyError, TypeError):
            logger.warning(f"ignoring an unreadable verify-cost cache {path}")
    what = "sequences' decode step" if sequences else "rows"
    logger.info(f"measuring this device's verify cost for 1..{max_rows} {what} (once, cached)")
    cost = measure_verify_cost(model, max_rows, sequences)
    folder.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, {"key": json.loads(key), "seconds": {str(q): t for q, t in zip(cost.sizes, cost.seconds)}})
    logger.info(f"verify cost: {cost.describe()} -> {path}")
    return cost


class AutoBudget:
    """Picks each iteration's node budget; learns from every verification."""

    def __init__(self, cost: VerifyCost, max_budget: int):
        self.cost = cost
        self.max_budget = max_budget
        self.history: deque[list[int]] = deque()  # per iteration: accepted drafts at b = 1..budget used
        # running sums over `history`, so an estimate costs O(1), not a pass over the history
        self._accepted = [0] * (max_budget + 1)  # [b]: accepted drafts a budget of b would have had
        self._seen = [0] * (max_budget + 1)  # [b]: iterations drafted with >= b nodes
        self.other_seconds: deque[float] = deque(maxlen=64)
        self.iterations = 0
        self.choice = max_budget
        self._logged: int | None = None  # the choice last logged, and when
        self._logged_at = 0

    def next_budget(self) -> int:
        self.iterations += 1
        if self.iterations <= WARMUP_ITERATIONS:
            return self.max_budget
        if self.iterations % EXPLORE_EVERY == 0:  # look a little wider than the choice: cheap, and
            return min(self.max_budget, 2 * self.choice + 2)  # it is where a better choice would be
        return self.choice

    def observe(self, path: list[int], budget: int, seconds: float) -> None:
        """path: the accepted nodes' indices (increasing along the path); seconds: the whole iteration."""
        counts = accepted_by_budget(path, min(budget, self.max_budget))
        self._add(counts, +1)
        self.history.append(counts)
        if len(self.history) > HISTORY:
            self._add(self.history.popleft(), -1)
        self.other_seconds.append(max(0.0, seconds - self.cost(budget + 1)))
        if self.iterations >= WARMUP_ITERATIONS:
            self.choice = self._best()

    def _add(self, counts: list[int], sign: int) -> None:
        for b, n in enumerate(counts, start=1):
            self._accepted[b] += sign * n
            self._seen[b] += sign

    def expected_accepted(self, b: int) -> float:
        """Mean drafts a budget of b would have accepted, over iterations drafted with >= b nodes."""
        return self._accepted[b] / self._seen[b] if self._seen[b] else 0.0

    def rate(self, b: int) -> tuple[float, float, float]:
        """(tokens per call, seconds per call, tokens per second) expected at budget b."""
        other = statistics.median(self.other_seconds) if self.other_seconds else 0.0
        tokens = 1.0 + self.expected_accepted(b)
        seconds = self.cost(b + 1) + other
        return tokens, seconds, tokens / seconds

    def _best(self) -> int:
        best = max(range(1, self.max_budget + 1), key=lambda b: self.rate(b)[2])
        if self._logged is None or (best != self._logged and self.iterations - self._logged_at >= LOG_EVERY):
            tokens, seconds, rate = self.rate(best)
            top = self.rate(self.max_budget)
            logger.info(
                f"tree budget auto: {best} nodes (expect {tokens:.2f} tokens per target call in "
                f"{seconds * 1e3:.1f} ms = {rate:.1f} tok/s; {self.max_budget} nodes: {top[0]:.2f} in "
                f"{top[1] * 1e3:.1f} ms = {top[2]:.1f} tok/s)"
            )
            self._logged, self._logged_at = best, self.iterations
        return best
