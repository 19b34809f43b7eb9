"""Multi-draft: several proposers at once, their trees merged into one trie, one target pass.

Each proposer drafts within an equal share of the node budget; the trees are merged in the
order of --proposers with shared prefixes deduplicated (a token two proposers agree on is
verified once), and each node remembers which proposer drafted it first, so the metrics say
whose branch was accepted.
"""

from __future__ import annotations

import dataclasses

from models.common.errors import UserError
from models.speculative.proposers.base import REGISTRY, BuildContext, Proposer, ProposerContext, register
from models.speculative.tree import DraftTree, TreeSpec, TrieBuilder


class MultiProposer(Proposer):
    name = "multi"

    def __init__(self, proposers: list[Proposer]):
        self.proposers = proposers
        self.uses_target_hidden = any(p.uses_target_hidden for p in proposers)
        layers = {p.hidden_layers for p in proposers if p.hidden_layers}
        if len(layers) > 1:
            raise UserError(f"the proposers read different target layers ({sorted(layers)}); "
                            f"combine heads that read the same ones")
        self.hidden_layers = next(iter(layers), ())

    def start(self, prompt, target_cache) -> None:
        for p in self.proposers:
            p.start(prompt, target_cache)

    def forget(self) -> None:
        for p in self.proposers:
            p.forget()

    def finish(self, tokens: list[int]) -> None:
        for p in self.proposers:
            p.finish(tokens)

    def fork(self) -> Proposer:
        return MultiProposer([p.fork() for p in self.proposers])

    def propose(self, ctx: ProposerContext, spec: TreeSpec) -> DraftTree:
        hidden = ctx.target_hidden
        share = -(-spec.budget // len(self.proposers))
        sub_spec = dataclasses.replace(spec, budget=share)
        trie = TrieBuilder(spec.budget)
        device = None
        for p in self.proposers:
            # members draft deterministically: sampled nodes must not be merged (sampling.ChainSampler)
            tree = p.propose(dataclasses.replace(ctx, target_hidden=hidden, sampler=None), sub_spec)
            device = tree.tokens.device
            tokens = tree.tokens.tolist()
            where: list[int] = []  # this tree's node -> trie node
            for node, parent in enumerate(tree.parents):
                merged = trie.add_child(-1 if parent < 0 else where[parent], tokens[node], p.name)
                if merged is None:
                    break
                where.append(merged)
        return trie.build(device or "cpu", with_sources=True)

    def describe(self) -> dict:
        return {"method": self.name, "proposers": [p.describe() for p in self.proposers]}


@register("multi", "several proposers' trees merged into one trie (--proposers a,b,...)")
def build(b: BuildContext) -> Proposer:
    names = [n.strip() for n in (b.config.proposers or "").split(",") if n.strip()]
    if not names:
        raise UserError("--method multi needs --proposers, e.g. --proposers eagle,prompt_lookup")
    bad = [n for n in names if n not in REGISTRY or n == "multi"]
    if bad:
        choices = ", ".join(n for n in REGISTRY if n != "multi")
        raise UserError(f"unknown proposer {bad[0]!r} in --proposers; choose from {choices}")
    if len(set(names)) != len(names):
        raise UserError(f"--proposers {b.config.proposers!r} names a proposer twice")
    return MultiProposer([REGISTRY[n].build(b) for n in names])
