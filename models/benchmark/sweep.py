"""The timed loop: every configuration on every prompt, interleaved, rotating the order.

Per prompt, all configurations run back to back and the starting one moves on by one from prompt
to prompt, so machine drift (thermal, a noisy neighbour) falls on every configuration alike
rather than on whichever ran last. Each configuration gets one untimed warm-up first.

Each output is compared with its configuration's reference (Configuration.reference_id):
target-only at the same decoding mode on the same target (in a sweep of several backends, that
backend's own target-only, run in the same rotation), except llama.cpp's prompt lookup, held to
llama.cpp's greedy output; a difference counts as a mismatch unless it is expected (llama.cpp greedy's
quantized weights vs target-only; rejection sampling, distributed as target-only sampling but not
equal to it token for token: the comparison is recorded, not counted). Under sampling each prompt
draws from the stream (seed, its prompt index), the same for a method and its target-only
reference, so a sweep reproduces from its seed.

A resumed sweep skips the prompts already recorded (`done`); every other prompt keeps its turn,
so its rotation, and its target-only run beside its methods, are the uninterrupted sweep's.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Collection

from loguru import logger
from tqdm import tqdm

from models.benchmark.configurations import MODEL_AXES, Configuration, Outcome, Runner
from models.benchmark.runlog import RunRecord, first_mismatch, iteration_dicts
from models.benchmark.sources import BenchPrompt
from models.speculative.sampling import SamplingParams

WARMUP_TOKENS = 16


def rotated(items: list, shift: int) -> list:
    shift %= max(len(items), 1)
    return items[shift:] + items[:shift]


def warm_up(runners: dict[Configuration, Runner], prompt_ids: list[int]) -> None:
    """One short untimed generation per configuration: allocations, kernels, traces; then each
    proposer forgets the warm-up sequence (a runner's optional `after_warm_up`)."""
    for config, run in runners.items():
        run(prompt_ids, min(WARMUP_TOKENS, config.max_generated_tokens))
        forget = getattr(run, "after_warm_up", None)
        if forget is not None:
            forget()


def _record(
    config: Configuration, index: int, order: int, prompt: BenchPrompt, ids: list[int], outcome: Outcome,
    reference: list[int], token_strings: Callable[[list[int]], list[str]], sampling: SamplingParams,
) -> RunRecord:
    mismatch = first_mismatch(outcome.tokens, reference)
    topk, depth, budget = config.shape or (None, None, None)
    return RunRecord(
        config_id=config.id, method=config.method, k=config.k, max_generated_tokens=config.max_generated_tokens,
        prompt_index=index, run_order=order, category=prompt.category, source=prompt.source,
        question_id=prompt.question_id,
        prompt_tokens=len(ids), output_ids=outcome.tokens, token_strings=token_strings(outcome.tokens),
        total_s=outcome.seconds, ttft_s=outcome.stats.ttft_s if outcome.stats else outcome.ttft_s,
        iterations=iteration_dicts(outcome.stats), matches_target_only=mismatch is None, first_mismatch=mismatch,
        tree_topk=topk, tree_depth=depth, tree_budget=budget,
        temperature=config.temperature, verify=config.verify, top_k=sampling.top_k, top_p=sampling.top_p,
        seed=sampling.seed, **{axis: getattr(config.variant, axis) for axis in MODEL_AXES},
    )


def counts_as_mismatch(config: Configuration, record: RunRecord) -> bool:
    """A difference from the reference that must not be (see Configuration.must_match)."""
    return not record.matches_target_only and config.must_match


def sweep(
    prompts: list[tuple[int, BenchPrompt, list[int]]],
    runners: dict[Configuration, Runner],
    token_strings: Callable[[list[int]], list[str]],
    sink: Callable[[list[RunRecord]], None],
    sampling: SamplingParams | None = None,
    done: Collection[int] = (),
) -> int:
    """Run (index, prompt, ids) x configurations; hand each prompt's records to `sink`. sampling:
    the sweep's top_k, top_p and seed (recorded with each run; the runners already use them).
    done: indices of prompts already recorded (a resumed sweep), skipped.
    Returns the number of runs whose output differs from their reference where it must not."""
    sampling = sampling or SamplingParams()
    configs = list(runners)
    todo = [(turn, item) for turn, item in enumerate(prompts) if item[0] not in done]
    if not todo:
        return 0
    warm_up(runners, prompts[0][2])
    mismatches = 0
    with tqdm(total=len(todo) * len(configs), desc="sweep", unit="run", file=sys.stderr) as bar:
        for turn, (index, prompt, ids) in todo:
            outcomes: dict[Configuration, Outcome] = {}
            for config in rotated(configs, turn):
                bar.set_postfix_str(f"prompt {index} {config.id}", refresh=False)
                outcomes[config] = runners[config](ids, config.max_generated_tokens, index)
                bar.update()
            outputs = {c.id: o.tokens for c, o in outcomes.items()}
            order = {c: i for i, c in enumerate(outcomes)}
            records = [
                _record(c, index, order[c], prompt, ids, outcomes[c], outputs[c.reference_id], token_strings,
                        sampling)
                for c in configs
            ]
            for c, r in zip(configs, records, strict=True):
                if counts_as_mismatch(c, r):
                    mismatches += 1
                    reference = "target-only" if c.reference_id == c.baseline_id else c.reference_id
                    logger.warning(f"prompt {index}: {r.config_id} differs from {reference} at {r.first_mismatch}")
            sink(records)
    return mismatches
