"""Comparing a method's output with target-only greedy output.

fp32: token for token. bf16/fp16: verifying k tokens runs other kernels than decoding one, so
a near-tie can flip. A divergence is then allowed only where the target's own top-2 logit
margin at the first divergent position is below a tolerance; comparison stops there, since
the two sequences condition on different tokens afterwards.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import torch

# bf16 keeps 8 bits of mantissa: logits of magnitude ~20 carry rounding steps of ~0.1.
HALF_PRECISION_TIE_TOLERANCE = 0.25


@dataclasses.dataclass(frozen=True)
class Comparison:
    equal: bool
    diverged_at: int | None  # index into the generated tokens
    margin: float | None  # target's top-2 logit margin there
    tie_tolerance: float

    @property
    def ok(self) -> bool:
        return self.equal or (self.margin is not None and self.margin < self.tie_tolerance)

    def describe(self) -> str:
        if self.equal:
            return "identical to target-only"
        verdict = "a near-tie, allowed" if self.ok else "NOT a near-tie"
        return f"diverges at generated token {self.diverged_at} (top-2 margin {self.margin:.4f}: {verdict})"


def first_divergence(reference: list[int], candidate: list[int]) -> int | None:
    for i, (a, b) in enumerate(zip(reference, candidate)):
        if a != b:
            return i
    return None if len(reference) == len(candidate) else min(len(reference), len(candidate))


def top2_margin(logits: torch.Tensor) -> float:
    top = torch.topk(logits.float(), 2).values
    return float(top[0] - top[1])


def compare(
    reference: list[int],
    candidate: list[int],
    *,
    exact: bool,
    margin_at: Callable[[list[int]], float] | None = None,
) -> Comparison:
    """margin_at(prefix) -> the target's top-2 margin for the token after prompt + prefix."""
    at = first_divergence(reference, candidate)
    tolerance = 0.0 if exact else HALF_PRECISION_TIE_TOLERANCE
    if at is None:
        return Comparison(True, None, None, tolerance)
    margin = None
    if not exact and margin_at is not None and at < min(len(reference), len(candidate)):
        margin = margin_at(reference[:at])
    return Comparison(False, at, margin, tolerance)
