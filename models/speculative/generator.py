"""The draft/verify loop. Target-only decoding is the same loop with no proposer.

Each iteration: the proposer drafts a token tree (a chain is a tree with one branch); ONE
target forward over the last accepted token and the tree's nodes (ancestor mask, positions by
depth) yields the target's distribution after every node; an acceptance rule picks a
root-to-node path and the target's next token; the path's cache entries are moved into
consecutive slots and the rest dropped. The rules (verification.py, sampling.py):

- greedy (temperature 0): the longest path agreeing with the target's argmax; output equals
  target-only greedy decoding by construction;
- rejection (temperature > 0): recursive rejection sampling; output is distributed exactly as
  target-only sampling;
- coupled (temperature > 0): the target's token at each position is argmax(log p + Gumbel
  noise of (seed, prompt, position)); output equals target-only coupled sampling token for token.

The first token after prefill goes through the same rule on an empty tree, so target-only
decoding and speculation share one definition of "the target's token".
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable

import torch

from models.common.errors import UserError
from models.common.metrics import Iteration, SequenceStats
from models.llama.kv_cache import KVCache
from models.llama.model import Transformer
from models.speculative.budget import AutoBudget
from models.speculative.proposers.base import Proposer, ProposerContext
from models.speculative.sampling import (
    VERIFY_MODES, ChainSampler, SamplingParams, SequenceRng, coupled_accept, coupled_noise, rejection_accept,
    target_logprobs, target_probs,
)
from models.speculative.tree import DraftTree, TreeSpec
from models.speculative.verification import Acceptance, greedy_accept

GREEDY, REJECTION, COUPLED = "greedy", *VERIFY_MODES


@dataclasses.dataclass
class GenerationResult:
    tokens: list[int]  # generated ids, prompt excluded, EOS included when it ended the sequence
    stats: SequenceStats  # per-iteration accepted/emitted counts give the per-token view


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Generator:
    def __init__(
        self,
        target: Transformer,
        proposer: Proposer | None = None,
        *,
        n_draft_tokens: int = 0,
        tree: TreeSpec | None = None,
        max_seq_len: int = 1024,
        eos_token_ids: tuple[int, ...] = (),
        prefill_seq_len: int | None = None,
        sampling: SamplingParams | None = None,
        verify: str | None = None,
    ):
        """tree: the shape of the drafts (default: a chain of n_draft_tokens).
        prefill_seq_len: prefill the prompt in chunks of this many tokens (fixed shapes for
        traces, bounded activation memory); None: one pass.
        sampling: temperature / top-k / top-p / seed (default greedy); verify: rejection (the
        default when sampling) or coupled."""
        if proposer is not None and tree is None and n_draft_tokens < 1:
            raise UserError(f"--n_draft_tokens must be >= 1 for speculative methods, got {n_draft_tokens}")
        self.target = target
        self.proposer = proposer
        self.spec = (tree or TreeSpec(1, n_draft_tokens, n_draft_tokens)) if proposer is not None else None
        self.max_seq_len = max_seq_len
        self.prefill_seq_len = prefill_seq_len
        self.eos = frozenset(eos_token_ids)
        self.cache: KVCache = target.new_cache(max_seq_len)
        self.auto_budget: AutoBudget | None = None  # set for --tree_budget auto
        self.sampling = sampling or SamplingParams()
        self.verify = GREEDY if self.sampling.is_greedy else (verify or REJECTION)

    def check_fits(self, prompt_len: int, max_new_tokens: int) -> None:
        if prompt_len < 1:
            raise UserError("empty prompt: nothing to condition on")
        if max_new_tokens < 1:
            raise UserError(f"max_generated_tokens must be >= 1, got {max_new_tokens}")
        if prompt_len + max_new_tokens > self.max_seq_len:
            raise UserError(
                f"prompt ({prompt_len} tokens) + max_generated_tokens ({max_new_tokens}) exceeds "
                f"max_seq_len={self.max_seq_len}; raise --max_seq_len or shorten the prompt"
            )

    def _forward(self, tokens: torch.Tensor, start: int, logits_for: str, want_hidden: bool, **tree):
        """Target forward; hidden states [T, D] too when the proposer drafts from them."""
        if not want_hidden:
            return self.target(tokens, self.cache, start, logits_for=logits_for, **tree), None
        logits, hidden = self.target(tokens, self.cache, start, logits_for=logits_for, return_hidden=True, **tree)
        return logits, hidden[0]

    def _accept(self, tree: DraftTree, logits: torch.Tensor, rng: SequenceRng | None, position: int) -> Acceptance:
        """The rule of this generator's decoding over logits [n + 1, V]; position: the absolute
        position of the root's children (the root is the token before it)."""
        if self.verify == GREEDY:
            return greedy_accept(tree, logits)
        if self.verify == COUPLED:
            noise = coupled_noise(rng, tree, position, logits.shape[-1], logits.device)
            return coupled_accept(tree, target_logprobs(logits, self.sampling), noise)
        return rejection_accept(tree, target_probs(logits, self.sampling), tree.draft_probs, rng)

    def _verify(self, root: int, tree: DraftTree, want_hidden: bool, rng: SequenceRng | None, position: int):
        """One target pass over [root, *tree]; the accepted path ends up in consecutive slots."""
        start = self.cache.length
        device = self.target.device
        block = torch.cat([torch.tensor([root], device=device), tree.tokens.to(device)])
        shape = {}
        if not tree.is_chain:
            shape = {"positions": tree.positions(start).to(device), "tree_mask": tree.attention_mask().to(device)}
        logits, hidden = self._forward(block.view(1, -1), start, "all", want_hidden, **shape)
        acceptance = self._accept(tree, logits[0], rng, position)
        keep = [0] + [node + 1 for node in acceptance.path]
        self.cache.compact(start, keep)
        kept_hidden = hidden[keep] if want_hidden else None
        return acceptance, kept_hidden

    def _draft(self, ctx: ProposerContext, remaining: int) -> tuple[DraftTree, int]:
        """The proposer's tree for this iteration (no deeper than the tokens left allow; the
        target's own token always fits) and the node budget it was given."""
        device = self.target.device
        if self.proposer is None or remaining < 2:
            return DraftTree.empty(device), 0
        spec = self.spec.capped(remaining - 1)
        if self.auto_budget is not None:
            spec = dataclasses.replace(spec, budget=min(spec.budget, self.auto_budget.next_budget()))
        tree = self.proposer.propose(ctx, spec)
        synchronize(device)
        return tree, spec.budget

    def _prefill(self, prompt: torch.Tensor, want_hidden: bool):
        chunk = self.prefill_seq_len or prompt.shape[1]
        hiddens = []
        for lo in range(0, prompt.shape[1], chunk):
            logits, hidden = self._forward(prompt[:, lo : lo + chunk], lo, "last", want_hidden)
            hiddens.append(hidden)
        return logits, torch.cat(hiddens) if want_hidden else None

    @torch.inference_mode()
    def generate(
        self,
        prompt: list[int],
        max_new_tokens: int,
        on_iteration: Callable[[int, Iteration], None] | None = None,
        prompt_index: int = 0,
    ) -> GenerationResult:
        """prompt_index: which prompt of a run this is; under sampling it picks the random stream
        (seed, prompt_index), so a run reproduces from its seed and repeated prompts differ."""
        self.check_fits(len(prompt), max_new_tokens)
        device = self.target.device
        cache = self.cache
        cache.reset()

        want_hidden = self.proposer is not None and self.proposer.uses_target_hidden
        synchronize(device)
        t0 = time.perf_counter()
        rng = None if self.verify == GREEDY else SequenceRng(self.sampling.seed, prompt_index)
        logits, hidden = self._prefill(torch.tensor([prompt], device=device), want_hidden)
        first = self._accept(DraftTree.empty(device), logits[0, -1:], rng, len(prompt)).tokens[0]
        stats = SequenceStats(prompt_tokens=len(prompt), ttft_s=time.perf_counter() - t0)
        out = [first]
        tokens = list(prompt) + out
        if self.proposer is not None:
            self.proposer.start(prompt, cache)
        ctx = ProposerContext(tokens=tokens, target_cache=cache, target_hidden=hidden)
        if rng is not None:
            ctx.sampler = ChainSampler(self.sampling, rng, self.verify == COUPLED, len(tokens))

        while out[-1] not in self.eos and len(out) < max_new_tokens:
            t_iter = time.perf_counter()
            remaining = max_new_tokens - len(out)
            if ctx.sampler is not None:
                ctx.sampler.position = len(tokens)
            tree, budget = self._draft(ctx, remaining)
            t_draft = time.perf_counter() - t_iter

            acceptance, new_hidden = self._verify(tokens[-1], tree, want_hidden, rng, len(tokens))
            if want_hidden:  # rows not yet consumed by the proposer are kept (a no-draft step)
                ctx.target_hidden = new_hidden if ctx.target_hidden is None else torch.cat([ctx.target_hidden, new_hidden])

            emitted = acceptance.tokens[:remaining]
            for i, tok in enumerate(emitted):
                if tok in self.eos:
                    emitted = emitted[: i + 1]
                    break
            out.extend(emitted)
            tokens.extend(emitted)
            accepted = min(acceptance.n_accepted, len(emitted))  # drafts past an EOS are not output
            it = Iteration(
                proposed=tree.n_nodes,
                accepted=accepted,
                emitted=len(emitted),
                seconds=time.perf_counter() - t_iter,
                draft_seconds=t_draft,
                depth=tree.depth,
                source=tree.sources[acceptance.path[accepted - 1]] if tree.sources and accepted else None,
            )
            if self.auto_budget is not None and tree.n_nodes:
                self.auto_budget.observe(acceptance.path, budget, it.seconds)
            stats.iterations.append(it)
            if on_iteration is not None:
                on_iteration(len(stats.iterations), it)
        return GenerationResult(out, stats)
