"""Decoding a list of prompts on a mesh: every rank builds the same engine (the target sharded
over its tp group), each dp submesh decodes its share of the prompts, and rank 0 collects the
results in input order. On a 1x1 mesh this is plain decoding in this process.

`run_prompts` is what a worker runs (models/common/mesh.py starts the workers); scripts call
it through run_on_mesh and get rank 0's MeshRun back.
"""

from __future__ import annotations

import dataclasses
import sys
import time

import torch.distributed as dist
from loguru import logger
from tqdm import tqdm

from models.common.mesh import Mesh
from models.common.prompts import Prompt
from models.common.device import open_device
from models.speculative.device_groups import RemoteDraft, serve_drafts
from models.backends.registry import backend
from models.speculative.engine import Engine, RunConfig
from models.speculative.generator import BatchIteration, BatchResult


@dataclasses.dataclass
class MeshRun:
    """Rank 0's answer: every prompt's result in input order, and what ran them."""

    result: BatchResult
    texts: list[str]
    device: str
    tree: dict | None
    proposer: dict | None
    collective_seconds: float = 0.0  # rank 0's time in tensor-parallel collectives (waits for the others included)


def decode(engine: Engine, encoded: list[list[int]], indices: list[int], *, progress: bool = True) -> BatchResult:
    """These prompts (their indices in the whole run pick their random streams), one at a time or
    batched, with a progress bar over finished prompts."""
    rows = engine.config.rows
    bar = tqdm(total=len(encoded), desc=engine.config.method, unit="prompt", file=sys.stderr, disable=not progress)
    if rows == 1:
        t0 = time.perf_counter()
        results = []
        for i, ids in zip(indices, encoded):
            results.append(engine.run(ids, prompt_index=i))
            bar.update()
        bar.close()
        return BatchResult(results, time.perf_counter() - t0, [])

    def show(n: int, it: BatchIteration) -> None:
        bar.set_postfix_str(f"{it.tokens_per_s_per_user:.1f} tok/s/user ({it.throughput:.1f} tok/s throughput)",
                            refresh=False)
        bar.update(len(it.finished))

    result = engine.run_batch(encoded, on_iteration=show, streams=indices)
    bar.update(len(encoded) - bar.n)  # prompts done at their first token after the last iteration
    bar.close()
    return result


def gather_by_index(mesh: Mesh, indices: list[int], items: list, n: int) -> list | None:
    """Rank 0: every dp submesh's items (item k belongs to prompt indices[k]) in prompt order;
    the other ranks None. Each submesh's tp rank 0 speaks for it."""
    if mesh.shape.dp == 1:
        return items if mesh.rank == 0 else None
    shares = [None] * mesh.shape.size
    # the submeshes finish their shares at different times: wait as long as a share may take
    dist.all_gather_object(shares, (indices, items) if mesh.tp_rank == 0 else None, group=mesh.patient)
    if mesh.rank != 0:
        return None
    ordered = [None] * n
    for share in shares:
        if share is not None:
            for i, item in zip(*share):
                ordered[i] = item
    return ordered


def _gather(mesh: Mesh, indices: list[int], part: BatchResult, n_prompts: int) -> BatchResult | None:
    """Rank 0: every dp submesh's results in input order (wall time: the slowest submesh's)."""
    if mesh.shape.dp == 1:
        return part if mesh.rank == 0 else None
    shares = gather_by_index(mesh, [mesh.dp_rank], [(indices, part)], mesh.shape.dp)
    if shares is None:
        return None
    results = [None] * n_prompts
    for share_indices, share in shares:
        for i, r in zip(share_indices, share.results):
            results[i] = r
    return BatchResult(results, max(share.seconds for _, share in shares), [])


def run_prompts(mesh: Mesh, config: RunConfig, prompts: list[Prompt], warm_up: bool = True) -> MeshRun | None:
    """Every rank: build the engine, decode this dp submesh's prompts (every dp-th, from its dp
    rank), gather. Rank 0 returns the whole run; the others None."""
    if mesh.role == "draft":  # a draft device group serves the target's ranks until they finish
        device = open_device(config.device, config.dtype, weights=config.weight_format)
        serve_drafts(mesh, config, device, backend(config.backend).implementation())
        return None
    engine = Engine(config, uses_baseline=False, mesh=mesh)
    encoded = engine.encode(prompts)
    indices = list(range(mesh.dp_rank, len(encoded), mesh.shape.dp))
    if mesh.rank == 0:
        batching = (f", continuous batching over {config.full_batch_size} rows" if config.full_batch_size
                    else f", batches of {config.batch_size}" if config.batch_size > 1 else "")
        logger.info(f"{config.method} on {len(prompts)} prompts, {engine.device.describe()}{batching}")
    if warm_up and indices:
        engine.warm_up(encoded[indices[0]], baseline=False)  # so TTFT holds no kernel load or capture
    if engine.tensor_parallel is not None:
        engine.tensor_parallel.seconds = 0.0  # the timed runs' collectives only
    part = decode(engine, [encoded[i] for i in indices], indices, progress=mesh.rank == 0)
    if isinstance(engine.proposer, RemoteDraft):
        engine.proposer.close()
    result = _gather(mesh, indices, part, len(prompts))
    if result is None:
        return None
    tp = engine.tensor_parallel
    return MeshRun(result, [engine.tokenizer.decode(r.tokens) for r in result.results], engine.device.describe(),
                   dataclasses.asdict(engine.spec) if engine.proposer is not None else None,
                   engine.proposer.describe() if engine.proposer is not None else None,
                   0.0 if tp is None else tp.seconds)
