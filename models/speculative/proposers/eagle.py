"""EAGLE-style drafting: a one-layer feature-level draft, grown as a dynamic tree (EAGLE-2).

The draft's cache holds one entry per target position: the pair (token after it, the target's
feature at it). After each verification the entries built on drafted (predicted) features are
dropped and the accepted positions are re-read with the target's real features; then the tree
grows from the draft's own predicted features: a node's input is its token with its parent's
predicted feature, and the nodes of one level are fed together under an ancestor mask.
"""

from __future__ import annotations

import torch

from models.backends.interface import Cache
from models.speculative.proposers.base import BuildContext, Proposer, ProposerContext, register
from models.speculative.speculators import heads
from models.speculative.speculators.heads import EagleHead
from models.speculative.tree import DraftTree, TreeSpec
from models.speculative.tree_search import Frontier, grow_tree, sample_chain


class EagleProposer(Proposer):
    name = "eagle"
    uses_target_hidden = True

    def __init__(self, head: EagleHead, label: str = ""):
        self.head = head
        self.hidden_layers = head.config.hidden_layers
        self.vocab_size = head.config.vocab_size  # the target's (draft ids map into it)
        self.label = label
        self.cache: Cache | None = None
        self.real = 0  # draft-cache entries built on real target features

    def start(self, prompt: list[int], target_cache: Cache) -> None:
        if self.cache is None or self.cache.max_seq_len < target_cache.max_seq_len:
            self.cache = self.head.layer.new_cache(target_cache.max_seq_len)
        self.cache.reset()
        self.real = 0

    def fork(self) -> Proposer:
        twin = super().fork()
        twin.cache = None  # its own draft cache, allocated at its first sequence
        return twin

    def propose(self, ctx: ProposerContext, spec: TreeSpec) -> DraftTree:
        features = ctx.target_hidden
        layer = self.head.layer
        device = features.device
        # The m positions that just entered the target cache end at its length; each pairs
        # with the token after it (the last of these is the root, the target's newest token).
        end = ctx.target_cache.length
        m = features.shape[0]
        next_tokens = torch.tensor(ctx.tokens[end - m + 1 : end + 1], device=device)
        self.cache.rollback(self.real)
        x = self.head.inputs(next_tokens, self.head.target_features(features))
        logits, hidden = layer(None, self.cache, self.real, embeds=x[None], logits_for="last", return_hidden=True)
        self.real += m
        node_hidden = {-1: hidden[0, -1]}  # predicted feature per fed node; -1 = the root's

        def step(frontier: Frontier) -> torch.Tensor:
            parent_features = torch.stack([node_hidden[p] for p in frontier.parents])
            x = self.head.inputs(self.head.draft_vocab[frontier.tokens], parent_features)
            out, h = layer(None, self.cache, self.cache.length, embeds=x[None], return_hidden=True,
                           **frontier.tree_inputs(self.real - 1))
            for i, node in enumerate(frontier.nodes):
                node_hidden[node] = h[0, i]
            return torch.log_softmax(out[0].float(), dim=-1)

        root = torch.log_softmax(logits[0, -1].float(), dim=-1)
        if ctx.sampler is not None and spec.is_chain:
            return sample_chain(root, step, min(spec.depth, spec.budget), ctx.sampler,
                                token_map=self.head.draft_vocab, vocab=self.vocab_size)
        perturb = None
        if ctx.sampler is not None and ctx.sampler.coupled:
            def perturb(logprobs: torch.Tensor, depth: int) -> torch.Tensor:
                return ctx.sampler.perturbed(logprobs, depth, self.head.draft_vocab, self.vocab_size)
        return grow_tree(root, step, spec, token_map=self.head.draft_vocab, perturb=perturb)

    def describe(self) -> dict:
        return {"method": self.name, "speculator": self.label, "draft_vocab_size": self.head.config.draft_vocab_size}


@register("eagle", "a trained one-layer feature-level draft head (--speculator; default: shipped)",
          needs=("hidden_states", "torch_weights"))
def build(b: BuildContext) -> Proposer:
    head, folder = heads.load_configured(b.config.speculator, b.config.model, b.target.model, "eagle")
    return EagleProposer(head, label=str(folder))
