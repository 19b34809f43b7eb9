"""The demo's timed runs, on one device or on a mesh of workers: what speculative_demo.py
measures, apart from how it judges it.

On a mesh every rank builds the same engine (the target sharded over its tp group), each dp
submesh runs its share of the prompts, and rank 0 hands the results back to the test, which
compares and gates them exactly as on one device.
"""

from __future__ import annotations

import dataclasses

from loguru import logger

from models.backends.registry import backend
from models.common.device import with_weights
from models.common.mesh import Mesh
from models.common.metrics import Iteration
from models.common.prompts import Prompt
from models.speculative.engine import Engine, RunConfig, top2_margin_after
from models.speculative.generator import BatchIteration, BatchResult, GenerationResult, check_prompts_fit
from models.speculative.mesh_runs import gather_by_index
from models.speculative.options import TARGET


@dataclasses.dataclass
class Runs:
    """One prompt at a time: the method and target-only, interleaved, and (rejection sampling)
    the first prompt again with the same seed. exact: the target that ran them is bit-exact
    (batch-invariant), so outputs must match token for token, else up to a near tie."""

    spec: list[GenerationResult]
    base: list[GenerationResult]
    again: GenerationResult | None = None
    exact: bool = True


@dataclasses.dataclass
class BatchRuns:
    """Target-only one prompt at a time (the reference), then batched target-only and the method."""

    solo: list[GenerationResult]
    base: BatchResult
    spec: BatchResult
    exact: bool = True


class MeshParent:
    """What the demo reads from an engine, in the parent of a mesh run, where the workers load the
    models and decode: the tokenizer (no weights), the configured tree, and the whole target only
    if a divergence needs its top-2 margin. An Engine here would hold a whole model and proposer
    beside the workers' for the log alone."""

    def __init__(self, config: RunConfig, device):
        config.validate()
        self.config = config
        self.device = with_weights(device, config.weight_format)
        self._backend = backend(config.backend).implementation()
        self.tokenizer = self._backend.load_tokenizer(config.model)
        self.spec = config.tree_spec(device.type)
        self._target = None

    def encode(self, prompts: list[Prompt]) -> list[list[int]]:
        """Token ids per prompt; a prompt that cannot fit is refused here, before any worker starts."""
        encoded = [self.tokenizer.encode(p.text, chat=self.config.instruct) for p in prompts]
        check_prompts_fit(encoded, [self.config.max_generated_tokens] * len(encoded), self.config.max_seq_len)
        return encoded

    def describe_proposer(self) -> str:
        if self.config.method == TARGET:
            return "none (target only)"
        return f"{self.config.method} (built on each mesh worker)"

    def top2_margin_after(self, prompt_ids: list[int], prefix: list[int]) -> float:
        if self._target is None:  # the target alone, whole: no proposer, no draft, no calibration
            loaded = self._backend.load(self.config.model, self.config.target_layers, self.device)
            self._target = self._backend.runner(loaded.model, self.device, 1)
        return top2_margin_after(self._target, prompt_ids, prefix)


def describe_proposer(engine: Engine | MeshParent) -> str | dict:
    if isinstance(engine, MeshParent):
        return engine.describe_proposer()
    return engine.proposer.describe() if engine.proposer else "none (target only)"


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
    runs.exact = engine.model.capabilities.batch_invariant
    return runs


def measure_batched(engine: Engine, encoded: list[list[int]], *, log: bool = True) -> BatchRuns:
    """Each phase twice, the second round in reverse order (one at a time, batched target-only,
    batched method; then the method, target-only, one at a time), each keeping its faster round:
    the phases are not interleaved prompt by prompt, so load that comes and goes on a shared CPU
    would otherwise land on one phase and move the ratios between them (a loaded 2-core runner
    measured batch_speedup at a third of its target while every counter matched)."""
    engine.warm_up(encoded[0])
    first = _batched_round(engine, encoded, log=log)
    engine.generator.forget()  # the second round starts as the first did (suffix corpus, budgets)
    second = _batched_round(engine, encoded, log=False, reverse=True)
    for which, a, b in (("batched target-only", first.base, second.base), ("batched method", first.spec, second.spec)):
        if [r.tokens for r in a.results] != [r.tokens for r in b.results]:
            raise AssertionError(f"{which}: the two timed rounds decoded different tokens")
    solo_seconds = [sum(r.stats.ttft_s + r.stats.decode_seconds for r in run.solo) for run in (first, second)]
    return BatchRuns(
        solo=first.solo if solo_seconds[0] <= solo_seconds[1] else second.solo,
        base=min(first.base, second.base, key=lambda r: r.seconds),
        spec=min(first.spec, second.spec, key=lambda r: r.seconds),
        exact=engine.model.capabilities.batch_invariant,
    )


def _batched_round(engine: Engine, encoded: list[list[int]], *, log: bool, reverse: bool = False) -> BatchRuns:
    """One timed round of the three phases (in reverse order when asked)."""

    def solo() -> list[GenerationResult]:
        if log:
            logger.info("--- target-only, one prompt at a time (the reference) ---")
        return [engine.run(ids, baseline=True, prompt_index=i) for i, ids in enumerate(encoded)]

    on_iteration = log_batch_iteration if log else None

    def base() -> BatchResult:
        if log:
            logger.info("--- target-only, batched ---")
        return engine.run_batch(encoded, baseline=True, on_iteration=on_iteration)

    def spec() -> BatchResult | None:
        if engine.proposer is None:
            return None
        if log:
            logger.info(f"--- {engine.config.method}, batched ---")
        return engine.run_batch(encoded, on_iteration=on_iteration)

    phases = {"solo": solo, "base": base, "spec": spec}
    done = {name: phases[name]() for name in (reversed(phases) if reverse else phases)}
    return BatchRuns(done["solo"], done["base"], done["spec"] or done["base"])


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
    return Runs([spec for spec, _ in pairs], [base for _, base in pairs], runs.again, runs.exact)


def measure_batched_on_mesh(mesh: Mesh, config: RunConfig, encoded: list[list[int]]) -> BatchRuns | None:
    """Every rank: the whole batch (a batch is one submesh's work; dp would split it)."""
    runs = measure_batched(Engine(config, mesh=mesh), encoded, log=mesh.rank == 0)
    return runs if mesh.rank == 0 else None
