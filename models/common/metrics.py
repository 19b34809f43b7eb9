"""The speculative-decoding metrics, defined once and used by the demo, scripts and tests.

- acceptance rate = accepted draft tokens / proposed draft tokens
- mean accepted tokens (tau) = tokens emitted by verification calls / verification calls
  (counts the bonus or correction token; the first token, from prefill, is not a verify call)
- per-position acceptance[i] = iterations that accepted a draft at depth i + 1 / iterations
  whose draft reached that depth (a chain's depth is its length; a tree's, its deepest node)
- tree nodes, depth, branching factor (nodes / depth: mean nodes per level, 1 for a chain)
- TTFT = prefill time up to and including the first token
- decode tok/s = tokens / time of every verification call but each sequence's first (as
  tt-metal excludes iteration 0: it may hold a graph capture or a first compile; with only
  one call per sequence, all of them); e2e tok/s = all tokens / all time
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass
class Iteration:
    proposed: int  # draft tokens sent to verification
    accepted: int  # of those, accepted
    emitted: int  # tokens appended to the output (accepted + 1, less any cut by EOS or the cap)
    seconds: float  # wall time of the whole iteration (draft + verify + bookkeeping)
    draft_seconds: float = 0.0
    depth: int | None = None  # deepest draft level (None: a chain, depth = proposed)
    source: str | None = None  # multi-draft: the proposer whose branch the accepted path ends on

    @property
    def draft_depth(self) -> int:
        return self.proposed if self.depth is None else self.depth


@dataclasses.dataclass
class SequenceStats:
    prompt_tokens: int
    ttft_s: float
    iterations: list[Iteration] = dataclasses.field(default_factory=list)

    @property
    def generated_tokens(self) -> int:
        return 1 + sum(it.emitted for it in self.iterations)

    @property
    def decode_seconds(self) -> float:
        return sum(it.seconds for it in self.iterations)


def _ratio(num: float, den: float) -> float:
    return num / den if den else 0.0


def summarize(sequences: list[SequenceStats]) -> dict:
    """Aggregate over sequences (tokens and calls are summed, not per-sequence averages)."""
    its = [it for s in sequences for it in s.iterations]
    proposed = sum(it.proposed for it in its)
    accepted = sum(it.accepted for it in its)
    emitted = sum(it.emitted for it in its)
    max_depth = max((it.draft_depth for it in its), default=0)
    per_position = [
        _ratio(sum(it.accepted > i for it in its), sum(it.draft_depth > i for it in its)) for i in range(max_depth)
    ]
    drafted = [it for it in its if it.proposed]
    sources: dict[str, int] = {}
    for it in its:
        if it.source is not None:
            sources[it.source] = sources.get(it.source, 0) + 1
    ttft = sum(s.ttft_s for s in sequences)
    decode_s = sum(s.decode_seconds for s in sequences)
    steady = [it for s in sequences for it in s.iterations[1:]] or its
    generated = sum(s.generated_tokens for s in sequences)
    return {
        "acceptance_rate": _ratio(accepted, proposed),
        "mean_accepted_tokens": _ratio(emitted, len(its)),
        "per_position_acceptance": per_position,
        "proposed_tokens": proposed,
        "accepted_tokens": accepted,
        "target_calls": len(its),
        "mean_tree_nodes": _ratio(proposed, len(drafted)),
        "mean_tree_depth": _ratio(sum(it.draft_depth for it in drafted), len(drafted)),
        "mean_branching": _ratio(sum(it.proposed / it.draft_depth for it in drafted), len(drafted)),
        "accepted_by_source": sources,
        "generated_tokens": generated,
        "ttft_s": _ratio(ttft, len(sequences)),
        "decode_tokens_per_s": _ratio(sum(it.emitted for it in steady), sum(it.seconds for it in steady)),
        "e2e_tokens_per_s": _ratio(generated, ttft + decode_s),
        "decode_seconds": decode_s,
        "total_seconds": ttft + decode_s,
    }


def break_even_tau(method: dict, target_only: dict) -> float:
    """The mean accepted tokens per target call at which a method only breaks even: its mean
    iteration (draft + verify + bookkeeping) in target-only decode steps, both measured in the same
    run (summaries of each). Speculation pays when the measured tau is above it; the ratio of the
    two is its decode speedup."""
    step = _ratio(target_only["decode_seconds"], target_only["target_calls"])
    return _ratio(_ratio(method["decode_seconds"], method["target_calls"]), step)
