"""From a run configuration to a ready engine: target, proposer, generators, prompts.

One place validates the knobs and builds the pieces, so the demo, scripts/generate.py and the
benchmark refuse the same bad input with the same one-line message.
"""

from __future__ import annotations

import dataclasses

import torch

from models.backends.interface import TargetModel, require
from models.backends.registry import backend
from models.common.correctness import top2_margin
from models.common.device import Device, open_device, split_mesh, with_weights
from models.common.errors import UserError
from models.common.memory import check_kv_caches_fit
from models.common.mesh import Mesh, MeshShape
from models.common.prompts import Prompt
from models.llama.tensor_parallel import TensorParallel
from models.common.paths import cache_dir
from models.llama.weights import LoadedModel, gguf_of
from models.speculative import proposers as _proposers  # noqa: F401  (fills the registry)
from models.speculative.batch_budget import BatchCost
from models.speculative.budget import AutoBudget, cached_verify_cost
from models.speculative.device_groups import RemoteDraft
from models.speculative.generator import BatchResult, GenerationResult, Generator
from models.speculative.options import AUTO, BATCH_DRAFTS, DEFAULT_TREE_BUDGET, TARGET, RunOptions
from models.speculative.proposers.base import REGISTRY, BuildContext, Proposer
from models.speculative.sampling import VERIFY_MODES, SamplingParams
from models.speculative.tree import TreeSpec

METHODS = (TARGET, *REGISTRY)
MAX_TREE_NODES = 63  # the verify block (nodes + root) must fit the CPU kernels' row limit
# the methods that read --draft_model and --speculator (for --method multi: its --proposers)
DRAFT_MODEL_METHODS = ("draft_model",)
SPECULATOR_METHODS = ("eagle", "multi_projection")
BATCH_COST_ROWS = 64  # one sequence's verify cost, whose slope prices a batch's draft row, up to this many rows


@dataclasses.dataclass
class RunConfig(RunOptions):
    """The run options (declared once, in models/speculative/options.py) and their rules."""

    @property
    def sampling(self) -> SamplingParams:
        return SamplingParams(self.temperature, self.top_k, self.top_p, self.seed)

    def validate(self) -> None:
        """Every rule, once per set of values: the entry point checks before any work, and the
        Engine it then builds finds them checked (a changed value is checked again)."""
        values = dataclasses.astuple(self)
        if self.__dict__.get("_validated") == values:
            return
        self._check()
        self._validated = values

    def prepare(self) -> Device:
        """Validate, then open the device: a bad value or a missing device is one line before any
        model loads or mesh worker starts, and an Engine built on this config in this process
        reuses both (mesh workers open their own)."""
        self.validate()
        key = (self.device, self.dtype, self.weights)
        opened = self.__dict__.get("_opened")
        if opened is None or opened[0] != key:
            self._opened = (key, open_device(self.device, self.dtype, weights=self.weight_format))
        return self._opened[1]

    def __getstate__(self) -> dict:
        """Pickled to a mesh worker without this process's opened device."""
        return {k: v for k, v in self.__dict__.items() if k != "_opened"}

    @property
    def tp(self) -> int:
        """The widest tensor-parallel group of the run (target or draft mesh)."""
        return max(self.mesh.tp, self.draft_mesh.tp if self.draft_mesh is not None else 1)

    @property
    def weight_format(self) -> str:
        """--weights as the backend runs it: when not given, its default for this target and device
        (torch: gguf for a GGUF target on the CPU in float32, else fp32)."""
        return backend(self.backend).weight_format(self.weights, self.model, self.device, self.dtype, self.tp)

    def _check(self) -> None:
        backend(self.backend).check()
        tp = self.tp
        if self.weight_format == "gguf" and tp > 1:  # asked for: the default is fp32 there
            raise UserError(f"--weights gguf has no tensor-parallel sharding yet; a tp {tp} mesh needs --weights fp32")
        if self.weights == "gguf" and self.backend == "torch":
            gguf_of(self.model)  # a target that is not a GGUF: one line now, not after the device opens
        if tp > 1 and not backend(self.backend).tensor_parallel:
            raise UserError(f"--backend {self.backend} has no tensor-parallel sharding; a tp {tp} mesh needs "
                            f"--backend torch")
        if self.method not in METHODS:
            raise UserError(f"unknown method {self.method!r}; choose from {', '.join(METHODS)}")
        if self.method != TARGET and self.n_draft_tokens < 1:
            raise UserError(f"--n_draft_tokens must be >= 1, got {self.n_draft_tokens}")
        if self.method == "self_draft" and self.draft_layers is None:
            raise UserError("--method self_draft needs --draft_layers")
        self._validate_tree()
        if self.proposers is not None and self.method != "multi":
            raise UserError(f"--proposers is for --method multi, not --method {self.method}")
        self._validate_flags_read()
        if self.draft_layers is not None and self.draft_layers < 1:
            raise UserError(f"--draft_layers must be >= 1, got {self.draft_layers}")
        if self.target_layers is not None and self.target_layers < 1:
            raise UserError(f"--target_layers must be >= 1, got {self.target_layers}")
        if self.max_ngram_size < 1:
            raise UserError(f"--max_ngram_size must be >= 1, got {self.max_ngram_size}")
        if self.max_generated_tokens < 1:
            raise UserError(f"--max_generated_tokens must be >= 1, got {self.max_generated_tokens}")
        if self.prefill_seq_len is not None and self.prefill_seq_len < 1:
            raise UserError(f"--prefill_seq_len must be >= 1, got {self.prefill_seq_len}")
        if self.max_seq_len < 2:
            raise UserError(f"--max_seq_len must be >= 2, got {self.max_seq_len}")
        self.sampling.validate()
        if self.verify is not None and self.verify not in VERIFY_MODES:
            raise UserError(f"unknown --verify {self.verify!r}; choose from {', '.join(VERIFY_MODES)}")
        if self.verify is not None and self.temperature == 0:
            raise UserError(f"--verify {self.verify} is for sampling (--temperature > 0); at temperature 0 decoding is greedy")
        self._validate_batch()
        self._validate_mesh()

    @property
    def drafters(self) -> set[str]:
        """The proposers this run builds: its method, or --method multi's --proposers."""
        if self.method != "multi":
            return {self.method}
        return {n.strip() for n in (self.proposers or "").split(",") if n.strip()}

    def _validate_flags_read(self) -> None:
        """A flag the method never reads is refused, not silently ignored."""
        used = f"--method {self.method}" + (f" --proposers {self.proposers}" if self.method == "multi" else "")
        if self.draft_model is not None and not self.drafters & set(DRAFT_MODEL_METHODS):
            raise UserError(f"--draft_model is for --method draft_model (or multi with draft_model in --proposers); "
                            f"{used} loads no draft model")
        if self.speculator is not None and not self.drafters & set(SPECULATOR_METHODS):
            raise UserError(f"--speculator is for --method eagle or multi_projection (or multi with one in "
                            f"--proposers); {used} reads no speculator")

    def _validate_mesh(self) -> None:
        mesh = self.mesh
        if self.draft_mesh is not None:
            if self.method != "draft_model":
                raise UserError(f"--draft_mesh_shape puts a draft model on devices of its own; --method {self.method} "
                                f"has no draft model (use --method draft_model)")
            if self.rows > 1 or self.temperature > 0 or mesh.dp > 1 or self.draft_mesh.dp > 1:
                raise UserError("--draft_mesh_shape supports greedy decoding of one sequence at a time on DP-1 "
                                "meshes for now (no --batch_size, --full_batch_size, --temperature or DP)")
        if mesh.size == 1:
            return
        # every rank must take the same decisions; these two time this rank's own device
        if self.tree_budget == AUTO:
            raise UserError(f"--tree_budget auto times one device; on mesh {mesh} give a number of nodes")
        if self.rows > 1 and self.batch_drafts == AUTO and self.method != TARGET:
            raise UserError(f"--batch_drafts auto times one device; on mesh {mesh} pass --batch_drafts all")

    @property
    def draft_mesh(self) -> MeshShape | None:
        return None if self.draft_mesh_shape is None else MeshShape.parse(self.draft_mesh_shape)

    @property
    def mesh(self) -> MeshShape:
        return MeshShape.of(self.device, self.mesh_shape)

    def _validate_batch(self) -> None:
        if self.batch_size < 1:
            raise UserError(f"--batch_size must be >= 1, got {self.batch_size}")
        if self.full_batch_size is not None:
            if self.full_batch_size < 1:
                raise UserError(f"--full_batch_size must be >= 1, got {self.full_batch_size}")
            if self.batch_size > 1:
                raise UserError(f"--full_batch_size {self.full_batch_size} (continuous batching) and --batch_size "
                                f"{self.batch_size} (static batches) exclude each other; give one")
        if self.batch_drafts not in BATCH_DRAFTS:
            raise UserError(f"unknown --batch_drafts {self.batch_drafts!r}; choose from {', '.join(BATCH_DRAFTS)}")
        if self.rows > 1 and self.tree_budget == AUTO:
            raise UserError("--tree_budget auto tunes one sequence's trees; with a batch give a number of nodes")

    @property
    def rows(self) -> int:
        """Sequences decoded at once: the static batch, or the continuous batch's rows."""
        return self.full_batch_size or self.batch_size

    def _validate_tree(self) -> None:
        for flag in ("tree_topk", "tree_depth", "tree_budget"):
            value = getattr(self, flag)
            if isinstance(value, int) and value < 1:
                raise UserError(f"--{flag} must be >= 1, got {value}")
        budget = self.tree_budget
        if isinstance(budget, str) and budget != AUTO:
            raise UserError(f"--tree_budget must be a number of nodes or 'auto', got {budget!r}")
        if isinstance(budget, int) and budget > MAX_TREE_NODES:
            raise UserError(f"--tree_budget {budget} is above the largest tree verified in one pass ({MAX_TREE_NODES})")
        if isinstance(budget, int) and budget + 2 > self.max_seq_len:
            raise UserError(f"--tree_budget {budget} cannot fit --max_seq_len {self.max_seq_len}")

    def describe(self) -> dict:
        """The options as they ran: --weights as resolved, so a record or perf target names the format."""
        return {**dataclasses.asdict(self), "weights": self.weight_format}

    def tree_spec(self, device_type: str) -> TreeSpec:
        """The draft shape: a chain of n_draft_tokens unless --tree_topk > 1."""
        depth = self.tree_depth or self.n_draft_tokens
        k = self.tree_topk
        if self.tree_budget == AUTO:  # the largest tree worth drafting; the tuner picks below it
            budget = k + (depth - 1) * k * k  # what tree drafting generates at most
        else:
            budget = self.tree_budget or (depth if k == 1 else DEFAULT_TREE_BUDGET.get(device_type, 16))
        return TreeSpec(k, depth, min(budget, depth if k == 1 else MAX_TREE_NODES))


WARMUP_TOKENS = 4


def top2_margin_after(model: TargetModel, prompt_ids: list[int], prefix: list[int]) -> float:
    """The target's top-2 logit margin for the token after prompt + prefix (a fresh pass): how
    near a tie a divergence from target-only output sits."""
    ids = torch.tensor([prompt_ids + prefix], device=model.device)
    with torch.inference_mode():
        logits = model(ids, model.new_cache(ids.shape[1]), 0, logits_for="last")
    return top2_margin(logits[0, -1])


class Engine:
    """A loaded target, the configured proposer, and a target-only baseline on the same model."""

    def __init__(self, config: RunConfig, device: Device | None = None, *, uses_baseline: bool = True,
                 mesh: Mesh | None = None):
        """uses_baseline: the caller also runs target-only decoding (the demo and the benchmark
        do; scripts/generate.py does not), so its cache is counted in the memory check.
        mesh: this rank's place in a mesh (run_on_mesh); the target and a draft model are sharded
        over its tp group, and every rank runs the same loop."""
        config.validate()
        self.config = config
        self.device = dataclasses.replace(with_weights(device or config.prepare(), config.weight_format),
                                          mesh=str(config.mesh))
        self.mesh = mesh
        self.tensor_parallel = (TensorParallel(mesh.tp_rank, mesh.shape.tp, mesh.tp_group)
                                if mesh is not None and mesh.shape.tp > 1 else None)
        self.backend = backend(config.backend).implementation()
        self.target = self._load(config.model, config.target_layers)
        self.spec = config.tree_spec(self.device.torch_device.type)
        self.model: TargetModel = self.backend.runner(self.target.model, self.device, self.spec.budget + 1)
        self._check_capabilities()
        self.proposer = self._build_proposer()
        self._check_caches_fit(uses_baseline)
        self.model.check_seq_len(config.max_seq_len)  # before any calibration or decoding
        eos = self.target.tokenizer.eos_token_ids
        self.generator = Generator(
            self.model, self.proposer, tree=self.spec if self.proposer is not None else None,
            max_seq_len=config.max_seq_len, eos_token_ids=eos, prefill_seq_len=config.prefill_seq_len,
            sampling=config.sampling, verify=config.verify,
        )
        if config.tree_budget == AUTO and self.proposer is not None:
            cost = cached_verify_cost(self.target.model, config.model, self.device.describe(),
                                      self.spec.budget + 1, cache_dir())
            self.generator.auto_budget = AutoBudget(cost, self.spec.budget)
        if config.rows > 1 and config.batch_drafts == AUTO and self.proposer is not None:
            measured = [cached_verify_cost(self.target.model, config.model, self.device.describe(), n, cache_dir(),
                                           sequences=sequences)
                        for n, sequences in ((config.rows, True), (BATCH_COST_ROWS, False))]
            self.generator.batch_cost = BatchCost(*measured)
        self._baseline: Generator | None = None

    def _check_caches_fit(self, uses_baseline: bool) -> None:
        """Before any cache exists: the method's cache, the target-only baseline's when used, and
        a draft model's (counted at the target's size) must fit in memory."""
        per_token = self.model.cache_bytes_per_token()
        names = ["the target's"]
        if self.proposer is not None and uses_baseline:
            names.append("the target-only baseline's")
        if self.config.method == "draft_model":
            names.append("the draft model's")
        caches = len(names)
        what = ", ".join(names) + (" caches" if caches > 1 else "")
        check_kv_caches_fit(per_token * caches, self.config.max_seq_len, self.config.rows,
                            self.device.torch_device, what)

    @property
    def baseline(self) -> Generator:
        """Target-only decoding on the same model, built on first use (its own KV cache)."""
        if self.proposer is None:
            return self.generator
        if self._baseline is None:
            c = self.config
            self._baseline = Generator(self.model, None, max_seq_len=c.max_seq_len,
                                       eos_token_ids=self.target.tokenizer.eos_token_ids,
                                       prefill_seq_len=c.prefill_seq_len, sampling=c.sampling, verify=c.verify)
        return self._baseline

    @staticmethod
    def device_type(config: RunConfig) -> str:
        """cpu or cuda: what a mesh of this configuration's device runs its workers on."""
        return split_mesh(config.device)[0].split(":")[0].lower()

    @property
    def tokenizer(self):
        return self.target.tokenizer

    def _check_capabilities(self) -> None:
        """What this configuration needs from the target's backend, refused in one line before
        any proposer is built or any decoding starts."""
        c, caps = self.config, self.model.capabilities
        dtype = str(self.device.dtype).removeprefix("torch.")
        if dtype not in caps.dtypes:
            raise UserError(f"--dtype {dtype}: backend {self.model.backend!r} runs {', '.join(caps.dtypes)}")
        if c.rows > 1:
            flag = f"--full_batch_size {c.full_batch_size}" if c.full_batch_size else f"--batch_size {c.batch_size}"
            require(self.model, "batch_rows", flag)
        if self.spec.topk > 1:
            require(self.model, "tree_masks", f"--tree_topk {c.tree_topk}")
        if c.method == "multi":
            require(self.model, "tree_masks", "--method multi (its proposers' drafts merge into a tree)")
        for name in sorted(c.drafters & set(REGISTRY)):
            who = f"--method {name}" if c.method != "multi" else f"--proposers {c.proposers} (its {name})"
            for capability in REGISTRY[name].needs:
                require(self.model, capability, who)

    def _load(self, spec: str, n_layers: int | None) -> LoadedModel:
        """A model, shared across the process; on a tensor-parallel mesh, this rank's shard of it."""
        return self.backend.load(spec, n_layers, self.device, self.tensor_parallel)

    def _build_proposer(self) -> Proposer | None:
        if self.config.method == TARGET:
            return None
        if self.config.draft_mesh is not None and self.mesh is not None:  # drafts come from the draft group
            return RemoteDraft(self.mesh, self.model.vocab_size)
        build = REGISTRY[self.config.method].build
        return build(BuildContext(self.config, self.target, self.model, self.device, self._load, self.backend.runner))

    def encode(self, prompts: list[Prompt]) -> list[list[int]]:
        """Token ids per prompt; refuses any prompt that cannot fit with its generation."""
        encoded = [self.tokenizer.encode(p.text, chat=self.config.instruct) for p in prompts]
        self.generator.check_prompts_fit(encoded, [self.config.max_generated_tokens] * len(encoded))
        return encoded

    def top2_margin_after(self, prompt_ids: list[int], prefix: list[int]) -> float:
        return top2_margin_after(self.model, prompt_ids, prefix)

    def warm_up(self, prompt_ids: list[int], *, baseline: bool = True, tokens: int = WARMUP_TOKENS) -> None:
        """A few untimed tokens through every path a timed run takes (kernel loading, allocations,
        graph capture; with a batch, every row), then the proposers forget the warm-up sequence."""
        generators = [self.baseline] if baseline and self.proposer is not None else []
        for generator in [*generators, self.generator]:
            if self.config.rows > 1:
                generator.generate_batch([prompt_ids] * self.config.rows, tokens, self.config.rows)
            else:
                generator.generate(prompt_ids, tokens)
        self.generator.forget()

    def run(self, prompt_ids: list[int], *, baseline: bool = False, on_iteration=None,
            prompt_index: int = 0) -> GenerationResult:
        generator = self.baseline if baseline else self.generator
        return generator.generate(prompt_ids, self.config.max_generated_tokens, on_iteration, prompt_index)

    def run_batch(self, prompts_ids: list[list[int]], *, baseline: bool = False, on_iteration=None,
                  streams: list[int] | None = None) -> BatchResult:
        """Every prompt through this configuration's batching (--batch_size static batches, or
        --full_batch_size continuous batching); prompt i samples from (seed, i)."""
        generator = self.baseline if baseline else self.generator
        c = self.config
        return generator.generate_batch(prompts_ids, c.max_generated_tokens, c.rows,
                                        continuous=c.full_batch_size is not None, on_iteration=on_iteration,
                                        streams=streams)

