"""Multi-projection heads (Medusa / QEfficient "Turbo"): a whole tree from one hidden state.

The target's verification pass already produced the hidden state of the last accepted token;
the heads turn it into one distribution per depth with one small matmul per block and one pass
over the draft LM head for all heads. The tree is Medusa's cartesian tree of each head's top-k,
pruned to the budget by the product of the heads' probabilities along each path: the same
rule as a static `medusa_choices` list sorted by measured acceptance, but computed from this
step's own probabilities, so no table has to be tuned per model. No draft model, no draft cache.
"""

from __future__ import annotations

import heapq

import torch
from loguru import logger

from models.speculative.sampling import to_target_vocab
from models.speculative.proposers.base import BuildContext, Proposer, ProposerContext, register
from models.speculative.speculators import heads
from models.speculative.speculators.heads import MultiProjectionHeads
from models.speculative.tree import DraftTree, TreeSpec


def cartesian_tree(logprobs: torch.Tensor, spec: TreeSpec) -> tuple[list[int], list[int]]:
    """logprobs [depth, V] (head d for depth d + 1) -> (draft ids, parents) of the `budget`
    most probable paths' nodes, best first (which is topological: a prefix scores higher)."""
    k = max(1, spec.topk)
    values, ids = logprobs.float().topk(k, dim=-1)
    values, ids = values.tolist(), ids.tolist()
    depth = len(values)
    budget = min(spec.budget, depth) if k == 1 else spec.budget
    tokens, parents = [], []
    heap = [(-values[0][r], 0, r, -1) for r in range(k)]  # (-score, depth index, rank, parent)
    heapq.heapify(heap)
    while heap and len(tokens) < budget:
        neg, d, r, parent = heapq.heappop(heap)
        node = len(tokens)
        tokens.append(ids[d][r])
        parents.append(parent)
        if d + 1 < depth:
            for r2 in range(k):
                heapq.heappush(heap, (neg - values[d + 1][r2], d + 1, r2, node))
    return tokens, parents


class MultiProjectionProposer(Proposer):
    name = "multi_projection"
    uses_target_hidden = True

    def __init__(self, heads: MultiProjectionHeads, label: str = ""):
        self.heads = heads
        self.vocab_size = heads.config.vocab_size  # the target's (draft ids map into it)
        self.label = label

    def propose(self, ctx: ProposerContext, spec: TreeSpec) -> DraftTree:
        hidden = ctx.target_hidden
        depth = min(spec.depth, self.heads.config.n_heads)
        # the final state: the last D of what the target returns (an eagle beside may read more layers)
        logits = self.heads.logits(hidden[-1:, -self.heads.config.dim :])[0, :depth]  # [depth, V']
        if spec.topk == 1 and ctx.sampler is not None:  # sampled decoding: head d's pick at depth d
            full = to_target_vocab(logits.float(), self.heads.draft_vocab, self.vocab_size)
            picks = [ctx.sampler.draw(full[d], d + 1) for d in range(min(depth, spec.budget))]
            return DraftTree.drawn_chain(picks, logits.device)
        if spec.topk == 1:  # a chain: each head's argmax
            return DraftTree.chain(self.heads.draft_vocab[logits.argmax(dim=-1)])
        logprobs = torch.log_softmax(logits.float(), dim=-1)
        if ctx.sampler is not None and ctx.sampler.coupled:  # rank by the target's noise too
            logprobs = torch.stack([ctx.sampler.perturbed(logprobs[d], d + 1, self.heads.draft_vocab, self.vocab_size)
                                    for d in range(depth)])
        tokens, parents = cartesian_tree(logprobs, spec)
        ids = self.heads.draft_vocab[torch.tensor(tokens, device=logits.device)]
        return DraftTree(ids, tuple(parents))

    def describe(self) -> dict:
        c = self.heads.config
        return {"method": self.name, "speculator": self.label, "n_heads": c.n_heads, "n_blocks": c.n_blocks,
                "draft_vocab_size": c.draft_vocab_size}


@register("multi_projection", "trained multi-projection heads on the target's hidden state (--speculator)",
          needs=("hidden_states", "torch_weights"))
def build(b: BuildContext) -> Proposer:
    head, folder = heads.load_configured(b.config.speculator, b.config.model, b.target.model, "multi_projection")
    depth = b.config.tree_depth or b.config.n_draft_tokens
    if depth > head.config.n_heads:
        logger.warning(
            f"{folder} has {head.config.n_heads} heads: multi_projection drafts "
            f"{head.config.n_heads} levels per step, not {depth}"
        )
    return MultiProjectionProposer(head, label=str(folder))
