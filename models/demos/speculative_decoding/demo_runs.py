"""The demo's timed runs, on one device or on a mesh of workers: what speculative_demo.py
measures, apart from how it judges it.

On a mesh every rank builds the same engine (the target sharded over its tp group), each dp
submesh runs its share of the prompts, and rank 0 hands the results back to the test, which
compares and gates them exactly as on one device.
"""

from __future__ import annotations

import dataclasses

from loguru import logger

from models.common.mesh import Mesh
from models.common.metrics import Iteration
from models.common.prompts import Prompt
from models.speculative.engine import Engine, RunConfig
from models.speculative.generator import BatchIteration, BatchResult, GenerationResult
from models.speculative.mesh_runs import gather_by_index


@dataclasses.dataclass
class Runs:
    """One prompt at a time: the method and target-only, interleaved, and (rejection sampling)
    the first prompt again with the same seed."""

    spec: list[GenerationResult]
    base: list[GenerationResult]
    again: GenerationResult | None = None


@dataclasses.dataclass
class BatchRuns:
    """Target-only one prompt at a time (the reference), then batched target-only and the method."""

    solo: list[GenerationResult]
    base: BatchResult
    spec: BatchResult


def log_iteration(n: int, it: Iteration) -> None:
    shape = "" if it.depth is None or it.proposed == it.depth else f" (tree: {it.proposed} nodes, depth {it.depth})"
    logger.info(f"Iteration {n}: {it.seconds * 1e3:.1f} ms @ {it.emitted / it.seconds:.1f} tok/s, "
                f"accepted {it.accepted}/{it.proposed} draft tokens{shape}")


def log_batch_iteration(n: int, it: BatchIteration) -> None:
    logger.info(f"Iteration {n}: {it.seconds * 1e3:.1f} ms @ {it.tokens_per_s_per_user:.1f} tok/s/user "
                f"({it.throughput:.1f} tok/s throughput), {len(it.rows)} rows")


def measure(engine: Engine, encoded: list[list[int]], indices: list[int] | None = None, *, log: bool = True) -> Runs:
    """Warm up, then target-only and the method prompt by prompt, alternating which goes first
    so drift hits both alike. indices: the prompts' places in the whole run (random streams)."""
    indices = list(range(len(encoded))) if indices is None else indices
    if encoded:
        engine.warm_up(encoded[0])
    runs = Runs([], [])
    for i, ids in zip(indices, encoded):
        for which in (("spec", "base") if i % 2 else ("base", "spec")):
            if which == "base":
                runs.base.append(engine.run(ids, baseline=True, prompt_index=i))
            else:
                if log:
                    logger.info(f"--- prompt {i}: {engine.config.method} ---")
                runs.spec.append(engine.run(ids, on_iteration=log_iteration if log else None, prompt_index=i))
    if engine.generator.verify == "rejection" and indices and indices[0] == 0:
        runs.again = engine.run(encoded[0], prompt_index=0)
    return runs


def measure_batched(engine: Engine, encoded: list[list[int]], *, log: bool = True) -> BatchRuns:
    engine.warm_up(encoded[0])
    if log:
        logger.info("--- target-only, one prompt at a time (the reference) ---")
    solo = [engine.run(ids, baseline=True, prompt_index=i) for i, ids in enumerate(encoded)]
    if log:
        logger.info("--- target-only, batched ---")
    on_iteration = log_batch_iteration if log else None
    base = engine.run_batch(encoded, baseline=True, on_iteration=on_iteration)
    spec = base
    if engine.proposer is not None:
        if log:
            logger.info(f"--- {engine.config.method}, batched ---")
        spec = engine.run_batch(encoded, on_iteration=on_iteration)
    return BatchRuns(solo, base, spec)


def measure_on_mesh(mesh: Mesh, config: RunConfig, prompts: list[Prompt]) -> Runs | None:
    """Every rank: this dp submesh's prompts (every dp-th), measured; rank 0 returns them all."""
    engine = Engine(config, mesh=mesh)
    encoded = engine.encode(prompts)
    indices = list(range(mesh.dp_rank, len(encoded), mesh.shape.dp))
    runs = measure(engine, [encoded[i] for i in indices], indices, log=mesh.rank == 0)
    pairs = gather_by_index(mesh, indices, list(zip(runs.spec, runs.base)), len(encoded))
    if pairs is None:
        return None
    # rank 0 is in dp submesh 0, which decoded prompt 0: its own rerun is the one
    return Runs([spec for spec, _ in pairs], [base for _, base in pairs], runs.again)


def measure_batched_on_mesh(mesh: Mesh, config: RunConfig, encoded: list[list[int]]) -> BatchRuns | None:
    """Every rank: the whole batch (a batch is one submesh's work; dp would split it)."""
    runs = measure_batched(Engine(config, mesh=mesh), encoded, log=mesh.rank == 0)
    return runs if mesh.rank == 0 else None
