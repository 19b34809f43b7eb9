"""Perf targets: golden metrics for known demo configurations, and the check against them.

Greedy acceptance is deterministic, so acceptance rate and mean accepted tokens are golden
values with a small tolerance (a different CPU's rounding may flip a rare near-tie). Speed is
gated as a ratio over target-only decoding measured in the same run; absolute tok/s only for
CUDA entries, where it means something. A run whose configuration matches no entry is still
checked for correctness, and the log says its metrics were not gated.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

# Configuration keys an entry must match exactly for its goldens to apply.
MATCH_KEYS = (
    "model", "method", "n_draft_tokens", "draft_layers", "target_layers", "draft_model", "max_ngram_size",
    "max_generated_tokens", "input_prompts", "instruct", "speculator", "tree_topk", "tree_depth", "tree_budget",
    "proposers",
)
# Keys an entry may leave out: their default (a chain, as before trees existed).
DEFAULTS = {"tree_topk": 1, "tree_depth": None, "tree_budget": None, "proposers": None, "speculator": None}


@dataclasses.dataclass(frozen=True)
class PerfTarget:
    id: str
    device: str
    config: dict
    acceptance_rate: float | None = None
    mean_accepted_tokens: float | None = None
    min_speedup: float | None = None
    min_decode_tokens_per_s: float | None = None
    tolerance: float = 0.02  # absolute, on acceptance rate; x (k + 1) on mean accepted tokens


def load_targets(path: str | Path) -> list[PerfTarget]:
    data = json.loads(Path(path).read_text())
    return [PerfTarget(**entry) for entry in data["targets"]]


def find_target(targets: list[PerfTarget], device_type: str, config: dict) -> PerfTarget | None:
    for t in targets:
        if t.device == device_type and all(t.config.get(k, DEFAULTS.get(k)) == config.get(k) for k in MATCH_KEYS):
            return t
    return None


def check(target: PerfTarget, summary: dict, speedup: float, k: int) -> list[str]:
    """Every missed target as a sentence naming measured vs expected; empty when all pass.
    k: the draft depth (the tolerance on mean accepted tokens scales with k + 1)."""
    failures = []
    if target.acceptance_rate is not None:
        got = summary["acceptance_rate"]
        if abs(got - target.acceptance_rate) > target.tolerance:
            failures.append(
                f"acceptance rate {got:.4f} differs from golden {target.acceptance_rate:.4f} (+-{target.tolerance})"
            )
    if target.mean_accepted_tokens is not None:
        got, tol = summary["mean_accepted_tokens"], target.tolerance * (k + 1)
        if abs(got - target.mean_accepted_tokens) > tol:
            failures.append(
                f"mean accepted tokens {got:.3f} differs from golden {target.mean_accepted_tokens:.3f} (+-{tol:.3f})"
            )
    if target.min_speedup is not None and speedup < target.min_speedup:
        failures.append(f"speedup {speedup:.2f}x over target-only is below the target {target.min_speedup:.2f}x")
    if target.min_decode_tokens_per_s is not None and summary["decode_tokens_per_s"] < target.min_decode_tokens_per_s:
        failures.append(
            f"decode {summary['decode_tokens_per_s']:.1f} tok/s is below "
            f"the target {target.min_decode_tokens_per_s:.1f}"
        )
    return failures
