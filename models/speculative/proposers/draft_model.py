"""Drafting with a model: a separate smaller model, or the target's own first layers.

Both grow the draft as a tree (tree_search.grow_tree; topk = 1 is a greedy chain) in the
draft's own cache: the context first, then one call per level for the nodes being expanded,
written after the context and seen through an ancestor mask. Before the next proposal the
cache is rolled back to the context and the newly accepted tokens are fed.
"""

from __future__ import annotations

import torch

from models.common.errors import UserError
from models.backends.interface import Cache, TargetModel
from models.speculative.proposers.base import BuildContext, Proposer, ProposerContext, register
from models.speculative.tree import DraftTree, TreeSpec
from models.speculative.sampling import ChainSampler
from models.speculative.tree_search import Frontier, grow_tree, sample_chain


def draft_tree(model: TargetModel, cache: Cache, pending: torch.Tensor, spec: TreeSpec,
               sampler: ChainSampler | None = None) -> DraftTree:
    """Feed the pending tokens [P] (the last is the tree's root), then grow the tree (a chain
    picked by `sampler` under sampled decoding). On return the cache still holds the expanded
    nodes; callers roll back to the context."""
    context = cache.length + pending.numel()
    logits = model(pending.view(1, -1), cache, cache.length, logits_for="last")

    def step(frontier: Frontier) -> torch.Tensor:
        out = model(frontier.tokens.view(1, -1), cache, cache.length, **frontier.tree_inputs(context - 1))
        return torch.log_softmax(out[0].float(), dim=-1)

    root = torch.log_softmax(logits[0, -1].float(), dim=-1)
    if sampler is not None and spec.is_chain:
        return sample_chain(root, step, min(spec.depth, spec.budget), sampler)
    return grow_tree(root, step, spec, perturb=sampler.perturbed if sampler is not None and sampler.coupled else None)


class DraftModelProposer(Proposer):
    """A separate model with the target's vocabulary and its own KV cache."""

    name = "draft_model"

    def __init__(self, draft: TargetModel, max_seq_len: int, *, target_vocab_size: int, label: str = ""):
        if draft.vocab_size != target_vocab_size:
            raise UserError(
                f"draft model vocabulary ({draft.vocab_size}) differs from the target's "
                f"({target_vocab_size}); a draft must share the target's tokenizer"
            )
        self.model = draft
        self.max_seq_len = max_seq_len
        self.label = label
        self.cache: Cache | None = None
        self._context = 0  # tokens of the sequence in the draft cache

    def start(self, prompt: list[int], target_cache: Cache) -> None:
        if self.cache is None or self.cache.max_seq_len < target_cache.max_seq_len:
            self.cache = self.model.new_cache(target_cache.max_seq_len)
        self.cache.reset()
        self._context = 0

    def fork(self) -> Proposer:
        twin = super().fork()
        twin.cache = None  # its own draft cache, allocated at its first sequence
        return twin

    def propose(self, ctx: ProposerContext, spec: TreeSpec) -> DraftTree:
        self.cache.rollback(self._context)
        pending = torch.tensor(ctx.tokens[self._context :], dtype=torch.int64, device=self.model.device)
        self._context = len(ctx.tokens)
        return draft_tree(self.model, self.cache, pending, spec, ctx.sampler)

    def describe(self) -> dict:
        return {"method": self.name, "draft_model": self.label, "draft_layers": self.model.n_layers}


class SelfDraftProposer(Proposer):
    """The target truncated to its first n layers (LayerSkip-style), sharing weights and cache.

    The target's cache already holds layers [0, n) for every accepted token, so the draft only
    feeds the one token the target has not processed yet and never prefills.
    """

    name = "self_draft"

    def __init__(self, target: TargetModel, n_layers: int):
        if not 1 <= n_layers < target.n_layers:
            raise UserError(
                f"--draft_layers {n_layers} is outside [1, {target.n_layers - 1}] "
                f"for a target of {target.n_layers} layers"
            )
        self.target = target
        self.model = target.truncated(n_layers)
        self.cache: Cache | None = None

    def start(self, prompt: list[int], target_cache: Cache) -> None:
        self.cache = self.target.cache_view(target_cache, self.model.n_layers)

    def propose(self, ctx: ProposerContext, spec: TreeSpec) -> DraftTree:
        self.cache.length = ctx.target_cache.length
        pending = torch.tensor(ctx.tokens[self.cache.length :], dtype=torch.int64, device=self.model.device)
        return draft_tree(self.model, self.cache, pending, spec, ctx.sampler)

    def describe(self) -> dict:
        return {"method": self.name, "draft_layers": self.model.n_layers}


def _check_vocabulary(draft, target, config) -> None:
    if draft.model.vocab_size != target.model.vocab_size:
        same = False
    else:
        hf_a, hf_b = getattr(draft.tokenizer, "hf", None), getattr(target.tokenizer, "hf", None)
        same = hf_a.get_vocab() == hf_b.get_vocab() if hf_a is not None and hf_b is not None else (
            type(draft.tokenizer) is type(target.tokenizer))
    if not same:
        raise UserError(
            f"draft model {config.draft_model!r} has a different vocabulary from the target {config.model!r}; "
            "a draft must share the target's tokenizer"
        )


@register("draft_model", "a separate smaller model with the target's tokenizer (--draft_model, --draft_layers)")
def build_draft_model(b: BuildContext) -> Proposer:
    c = b.config
    draft = b.load_model(c.draft_model or c.model, c.draft_layers)
    _check_vocabulary(draft, b.target, c)
    traced = b.runner(draft.model, b.device, 2)
    return DraftModelProposer(traced, c.max_seq_len, target_vocab_size=b.target.model.vocab_size,
                              label=c.draft_model or c.model)


@register("self_draft", "the target's own first --draft_layers layers, sharing its weights and cache",
          needs=("layer_skip",))
def build_self_draft(b: BuildContext) -> Proposer:
    if b.config.draft_layers is None:
        raise UserError("--method self_draft needs --draft_layers")
    return SelfDraftProposer(b.model, b.config.draft_layers)
