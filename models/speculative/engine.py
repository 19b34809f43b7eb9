"""From a run configuration to a ready engine: target, proposer, generators, prompts.

One place validates the knobs and builds the pieces, so the demo, scripts/generate.py and the
benchmark refuse the same bad input with the same one-line message.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch
from loguru import logger

from models.common.correctness import top2_margin
from models.common.device import Device, open_device
from models.common.errors import UserError
from models.common.prompts import Prompt
from models.llama.trace import TracedModel
from models.llama.weights import DEFAULT_MODEL, LoadedModel, load_model
from models.speculative.generator import GenerationResult, Generator
from models.speculative.proposers.base import Proposer
from models.speculative.proposers.draft_model import DraftModelProposer, SelfDraftProposer
from models.speculative.proposers.eagle import EagleProposer
from models.speculative.proposers.multi_projection import MultiProjectionProposer
from models.speculative.proposers.prompt_lookup import PromptLookupProposer
from models.speculative.speculators import heads

METHODS = ("target", "draft_model", "self_draft", "prompt_lookup", "multi_projection", "eagle")
SPECULATOR_METHODS = ("multi_projection", "eagle")
SHIPPED_SPECULATORS = Path(__file__).resolve().parent / "speculators" / "weights"
MAX_BATCH_SIZE = 1


@dataclasses.dataclass
class RunConfig:
    model: str = DEFAULT_MODEL
    method: str = "prompt_lookup"
    n_draft_tokens: int = 4
    draft_layers: int | None = None  # self_draft: layers of the target; draft_model: draft's layers
    target_layers: int | None = None
    draft_model: str | None = None  # default: the target's own spec (every draft accepted)
    speculator: str | None = None  # multi_projection / eagle weights (default: the shipped ones)
    max_ngram_size: int = 3
    max_seq_len: int = 1024
    prefill_seq_len: int | None = None  # prefill in chunks of this many tokens
    max_generated_tokens: int = 128
    batch_size: int = 1
    instruct: bool = True
    device: str = "cpu"
    dtype: str | None = None

    def validate(self) -> None:
        if self.method not in METHODS:
            raise UserError(f"unknown method {self.method!r}; choose from {', '.join(METHODS)}")
        if self.method != "target" and self.n_draft_tokens < 1:
            raise UserError(f"--n_draft_tokens must be >= 1, got {self.n_draft_tokens}")
        if self.method == "self_draft" and self.draft_layers is None:
            raise UserError("--method self_draft needs --draft_layers")
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
        if not 1 <= self.batch_size <= MAX_BATCH_SIZE:
            raise UserError(f"--batch_size {self.batch_size} is not supported; supported: 1 (batching comes later)")

    def describe(self) -> dict:
        return dataclasses.asdict(self)


def default_speculator(model: str, method: str) -> Path:
    """The shipped speculator weights for a model, or a one-line pointer to training them."""
    folder = SHIPPED_SPECULATORS / f"{model}-{method}"
    if model != DEFAULT_MODEL or not folder.is_dir():
        raise UserError(
            f"no shipped {method} speculator for model {model!r}; train one with "
            f"scripts/train_speculator.py --kind {method} and pass --speculator PATH"
        )
    return folder


_MODELS: dict[tuple, LoadedModel] = {}


def cached_model(spec: str, n_layers: int | None, device: Device) -> LoadedModel:
    """Load once per process: the demo's parametrizations share one target."""
    key = (spec, n_layers, device.dtype, str(device.torch_device))
    if key not in _MODELS:
        _MODELS[key] = load_model(spec, n_layers=n_layers, dtype=device.dtype, device=device.torch_device)
    return _MODELS[key]


def _same_vocabulary(a: LoadedModel, b: LoadedModel) -> bool:
    if a.model.args.vocab_size != b.model.args.vocab_size:
        return False
    hf_a, hf_b = getattr(a.tokenizer, "hf", None), getattr(b.tokenizer, "hf", None)
    if hf_a is not None and hf_b is not None:
        return hf_a.get_vocab() == hf_b.get_vocab()
    return type(a.tokenizer) is type(b.tokenizer)


class Engine:
    """A loaded target, the configured proposer, and a target-only baseline on the same model."""

    def __init__(self, config: RunConfig, device: Device | None = None):
        config.validate()
        self.config = config
        self.device = device or open_device(config.device, config.dtype)
        self.target = cached_model(config.model, config.target_layers, self.device)
        self.model = TracedModel(self.target.model, traced=self.device.traced, max_block=config.n_draft_tokens + 1)
        self.proposer = self._build_proposer()
        eos = self.target.tokenizer.eos_token_ids
        self.generator = Generator(
            self.model, self.proposer, n_draft_tokens=config.n_draft_tokens,
            max_seq_len=config.max_seq_len, eos_token_ids=eos, prefill_seq_len=config.prefill_seq_len,
        )
        self.baseline = (
            self.generator
            if self.proposer is None
            else Generator(self.model, None, max_seq_len=config.max_seq_len, eos_token_ids=eos,
                           prefill_seq_len=config.prefill_seq_len)
        )

    @property
    def tokenizer(self):
        return self.target.tokenizer

    def _build_proposer(self) -> Proposer | None:
        c = self.config
        if c.method == "target":
            return None
        if c.method == "prompt_lookup":
            return PromptLookupProposer(c.max_ngram_size, device=self.device.torch_device)
        if c.method == "self_draft":
            return SelfDraftProposer(self.target.model, c.draft_layers)
        if c.method in SPECULATOR_METHODS:
            folder = Path(c.speculator) if c.speculator else default_speculator(c.model, c.method)
            head = heads.load(folder, self.target.model)
            if head.config.kind != c.method:
                raise UserError(f"--speculator {folder} holds a {head.config.kind} speculator, not {c.method}")
            if c.method == "eagle":
                return EagleProposer(head, label=str(folder))
            if c.n_draft_tokens > head.config.n_heads:
                logger.warning(
                    f"{folder} has {head.config.n_heads} heads: multi_projection drafts "
                    f"{head.config.n_heads} tokens per step, not --n_draft_tokens {c.n_draft_tokens}"
                )
            return MultiProjectionProposer(head, label=str(folder))
        draft = cached_model(c.draft_model or c.model, c.draft_layers, self.device)
        if not _same_vocabulary(draft, self.target):
            raise UserError(
                f"draft model {c.draft_model!r} has a different vocabulary from the target {c.model!r}; "
                "a draft must share the target's tokenizer"
            )
        traced = TracedModel(draft.model, traced=self.device.traced, max_block=2)
        return DraftModelProposer(
            traced, c.max_seq_len, target_vocab_size=self.target.model.args.vocab_size,
            label=c.draft_model or c.model,
        )

    def encode(self, prompts: list[Prompt]) -> list[list[int]]:
        """Token ids per prompt; refuses any prompt that cannot fit with its generation."""
        encoded = [self.tokenizer.encode(p.text, chat=self.config.instruct) for p in prompts]
        for i, ids in enumerate(encoded):
            try:
                self.generator.check_fits(len(ids), self.config.max_generated_tokens)
            except UserError as exc:
                raise UserError(f"prompt {i}: {exc}") from None
        return encoded

    def top2_margin_after(self, prompt_ids: list[int], prefix: list[int]) -> float:
        """The target's top-2 logit margin for the token after prompt + prefix (a fresh pass)."""
        ids = torch.tensor([prompt_ids + prefix], device=self.device.torch_device)
        with torch.inference_mode():
            cache = self.target.model.new_cache(ids.shape[1])
            logits = self.target.model(ids, cache, 0, logits_for="last")
        return top2_margin(logits[0, -1])

    def run(self, prompt_ids: list[int], *, baseline: bool = False, on_iteration=None) -> GenerationResult:
        generator = self.baseline if baseline else self.generator
        return generator.generate(prompt_ids, self.config.max_generated_tokens, on_iteration)

