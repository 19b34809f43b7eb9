"""Sampled decoding: the target's distribution, per-sequence randomness, and how a model proposer
draws a chain; the two sampled acceptance rules that use them live beside greedy's in
verification.py.

Pure tensor functions, like verification.py, so they can be tested on hand-built
distributions. The block layout is the verifier's: row 0 is the root (the last accepted
token), row i + 1 is tree node i, and row p describes the token after block position p.

How the generator uses this (one `SequenceRng(params.seed, prompt_index)` per prompt, made when
the prompt starts, so prompt i's stream depends on (seed, i) only, not on batching or order):

- The target's distribution: `target_probs(logits[0], params)` over the verified block gives
  [n + 1, V] fp32 rows (temperature, then top-k, then top-p). `target_logprobs` is its log,
  -inf outside the kept set. `params.is_greedy` (temperature 0) reduces both to a one-hot
  argmax, so every rule below then emits exactly what greedy_accept does.
- Target-only sampling, the reference: the first token after prefill and every plain step is
  `sample_token(target_probs(last_logits)[0], rng)`; `rejection_accept` on an empty tree is the
  same draw from the same stream.
- `--verify rejection`: `rejection_accept(tree, probs, draft_probs, rng)`. draft_probs[i] is
  the distribution node i's token was drawn from, in the target vocabulary (a model proposer's
  softmax at node i's parent, after the proposer's own temperature / top-k / top-p, mapped
  through token_map), or None for a tree whose every node is deterministic (n-gram, suffix,
  top-k children as EAGLE picks them). A mixed tree passes a one-hot row for each deterministic
  node, which is exactly the deterministic rule. Sampled siblings must be independent draws,
  each from its own row (siblings may use different q, e.g. from different proposers), with
  replacement: duplicates stay separate nodes (no trie merging) and which sampled nodes are
  kept must not depend on their values (no reranking), or the output is biased. Deterministic
  children (one-hot q, e.g. the draft's top-k) have no such condition. Drafting may draw from
  the same rng (rng.categorical(q)): every draw takes a fresh uniform.
- `--verify coupled`: the token at absolute position t (its index in prompt + generated) is
  argmax(log p_t + g_t), g_t = rng.gumbel(t, V). For a block whose root is the token at position
  t - 1, `coupled_noise(rng, tree, t, V)` gives the noise rows (row p at t + depth of p) and
  `coupled_accept(tree, target_logprobs(logits[0], params), noise)` the acceptance; target-only
  decoding is `coupled_token(logprobs_row, rng.gumbel(t, V))`. The noise draws nothing from the
  sequence stream, so output is identical token for token with or without speculation (as
  long as the target's logits for a position are the same bits in both, as greedy already needs).
"""

from __future__ import annotations

import dataclasses
import hashlib
import math

import torch

from models.common.errors import UserError

NOISE_CACHE = 128  # Gumbel rows kept per sequence: a draft's positions are verified right after
VERIFY_MODES = ("rejection", "coupled")


@dataclasses.dataclass(frozen=True)
class SamplingParams:
    temperature: float = 0.0  # 0: greedy, exactly as without sampling
    top_k: int = 0  # 0: off
    top_p: float = 1.0  # 1: off
    seed: int = 0

    @property
    def is_greedy(self) -> bool:
        return self.temperature == 0

    def validate(self) -> SamplingParams:
        """Raises UserError naming the first bad value; returns self for chaining."""
        if not (self.temperature >= 0 and math.isfinite(self.temperature)):  # catches nan
            raise UserError(f"--temperature must be a finite number >= 0 (0: greedy), got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise UserError(f"--top_p must be in (0, 1] (1: off), got {self.top_p}")
        if self.top_k < 0:
            raise UserError(f"--top_k must be >= 0 (0: off), got {self.top_k}")
        return self


# --- the target's distribution -----------------------------------------------------------------


def filtered_logits(logits: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    """[..., V] fp32 logits / temperature with -inf outside the top-k, then top-p, set.

    Greedy gives 0 at the argmax (first on ties, as torch.argmax and greedy_accept) and -inf
    elsewhere. Top-k keeps every token tied with the k-th value (as transformers and vLLM).
    Top-p keeps the smallest prefix of tokens by descending probability (ties: lower id first)
    whose mass reaches top_p, at least one token.
    """
    logits = logits.float()
    if params.is_greedy:
        keep = torch.zeros_like(logits, dtype=torch.bool)
        keep.scatter_(-1, logits.argmax(dim=-1, keepdim=True), True)
        return torch.zeros_like(logits).masked_fill(~keep, -math.inf)
    scaled = logits / params.temperature
    if 0 < params.top_k < scaled.shape[-1]:
        kth = scaled.topk(params.top_k, dim=-1).values[..., -1:]
        scaled = scaled.masked_fill(scaled < kth, -math.inf)
    if params.top_p < 1:
        scaled = scaled.masked_fill(~_top_p_keep(scaled.softmax(dim=-1), params.top_p), -math.inf)
    return scaled


def _top_p_keep(probs: torch.Tensor, top_p: float) -> torch.Tensor:
    """Bool mask of the nucleus: a token stays when the mass ranked above it is < top_p."""
    sorted_probs, order = probs.sort(dim=-1, descending=True, stable=True)
    above = sorted_probs.double().cumsum(dim=-1) - sorted_probs.double()  # exclusive, fp64
    keep_sorted = above < top_p
    keep_sorted[..., 0] = True
    return torch.zeros_like(keep_sorted).scatter(-1, order, keep_sorted)


def target_probs(logits: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    """[..., V] fp32 probabilities the target samples from (0 outside the kept set)."""
    return filtered_logits(logits, params).softmax(dim=-1)


def target_logprobs(logits: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    """[..., V] fp32 log of target_probs (-inf outside the kept set), for coupled decoding."""
    return filtered_logits(logits, params).log_softmax(dim=-1)


# --- randomness --------------------------------------------------------------------------------


def derive_seed(*parts: object) -> int:
    """A 63-bit seed from a tuple; a hash, so nearby tuples give unrelated streams."""
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & (2**63 - 1)


def inverse_cdf(probs: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Indices drawn by the uniforms u [...] from unnormalised probs [..., V] (int64 [...]):
    the first index whose cumulative mass exceeds u * total, so never a token without mass.
    (SequenceRng.categorical is the same rule for one draw.)"""
    cdf = probs.double().cumsum(dim=-1)
    idx = torch.searchsorted(cdf, (u.to(cdf) * cdf[..., -1]).unsqueeze(-1), right=True).squeeze(-1)
    over = idx >= probs.shape[-1]
    if bool(over.any()):
        idx = torch.where(over, _last_with_mass(probs), idx)
    return idx


def _last_with_mass(probs: torch.Tensor) -> torch.Tensor:
    """Where u * total rounded up to the total: the last index with mass."""
    return (probs > 0).long().cumsum(dim=-1).argmax(dim=-1)


class SequenceRng:
    """One prompt's randomness: a CPU generator seeded from (seed, prompt_index).

    Each decision draws its own fresh uniform (accept, categorical), so no uniform ever feeds two
    decisions. `gumbel` is position-addressed instead: it reads no state, so coupled decoding's
    noise for a position is the same whatever was drafted or verified before it.
    """

    def __init__(self, seed: int, prompt_index: int):
        self.seed = int(seed)
        self.prompt_index = int(prompt_index)
        self.generator = torch.Generator(device="cpu")
        self.generator.manual_seed(derive_seed("sequence", self.seed, self.prompt_index))
        self._buffer: list[float] = []
        self._noise: dict[tuple[int, int], torch.Tensor] = {}  # recent positions (draft and verify share them)

    def uniform(self) -> float:
        """A fresh uniform in [0, 1) (53 bits), never handed out twice. Drawn in blocks: one
        generator call per 256 decisions instead of one each."""
        if not self._buffer:
            self._buffer = torch.rand(256, generator=self.generator, dtype=torch.float64).tolist()[::-1]
        return self._buffer.pop()

    def accept(self, prob: float) -> bool:
        """True with probability prob (clipped to [0, 1]): prob >= 1 always, prob <= 0 never."""
        return self.uniform() < prob

    def categorical(self, probs: torch.Tensor) -> int:
        """A token from unnormalised probs [V] by inverse CDF (inverse_cdf's rule) on one fresh
        uniform; two host reads."""
        cdf = probs.double().cumsum(dim=-1)
        idx = int(torch.searchsorted(cdf, self.uniform() * float(cdf[-1]), right=True))
        return idx if idx < probs.shape[-1] else int(_last_with_mass(probs))

    def gumbel(self, position: int, vocab: int) -> torch.Tensor:
        """Standard Gumbel noise [V] fp32 (CPU) for the token at absolute `position`; a function of
        (seed, prompt_index, position) alone."""
        key = (int(position), int(vocab))
        if key not in self._noise:
            if len(self._noise) >= NOISE_CACHE:
                self._noise.pop(next(iter(self._noise)))
            g = torch.Generator(device="cpu")
            g.manual_seed(derive_seed("gumbel", self.seed, self.prompt_index, int(position)))
            u = torch.rand(vocab, generator=g, dtype=torch.float64).clamp_(min=2.0**-60)
            self._noise[key] = (-(-u.log()).log()).float()
        return self._noise[key]


# --- target-only sampling (the reference) --------------------------------------------------------


def _normalise(r: torch.Tensor, mass: torch.Tensor | float | None = None) -> torch.Tensor:
    """r / its mass (passed when already summed)."""
    return r / (r.sum() if mass is None else mass)


def sample_token(probs: torch.Tensor, rng: SequenceRng) -> int:
    """One token from the target's distribution [V]; the same draw rejection_accept makes on an
    empty tree from the same stream state."""
    return rng.categorical(_normalise(probs.double()))


def coupled_token(logprobs: torch.Tensor, gumbel: torch.Tensor) -> int:
    """argmax(log p + g): a sample from p (Gumbel-max), fixed by the noise."""
    return int((logprobs.float() + gumbel.to(logprobs.device)).argmax())


# --- drafting under sampling -------------------------------------------------------------------


@dataclasses.dataclass
class ChainSampler:
    """How a model proposer picks each token of a chain under sampled decoding, so that the
    verifier's rule stays exact: for rejection sampling, a sample of the draft's own
    distribution q (after the same temperature / top-k / top-p), whose row is kept for the
    verifier; for coupled decoding, argmax(log q + g) with the target's own noise at that
    position, which is the target's token whenever the draft agrees with it closely enough.

    Trees keep deterministic top-k children instead: sampled siblings must be independent
    draws kept regardless of their values, which EAGLE-2's reranking and trie merging are not.
    """

    params: SamplingParams
    rng: SequenceRng
    coupled: bool
    position: int  # absolute position of the chain's first token (its index in prompt + output)

    def draw(self, logits: torch.Tensor, depth: int) -> tuple[int, torch.Tensor | None]:
        """(token, q row or None) for the chain's token at `depth` (1 = the root's child);
        logits [V] over the target vocabulary (-inf where the draft cannot propose)."""
        if self.coupled:
            noise = self.rng.gumbel(self.position + depth - 1, logits.shape[-1])
            return coupled_token(target_logprobs(logits, self.params), noise), None
        q = target_probs(logits, self.params)
        return self.rng.categorical(q), q

    def perturbed(self, logprobs: torch.Tensor, depth: int, token_map: torch.Tensor | None = None,
                  vocab: int | None = None) -> torch.Tensor:
        """Coupled decoding, trees: the draft's log-probabilities [..., V'] (after this decoding's
        temperature / top-k / top-p) plus the target's noise at the position of `depth`, so the
        tree's best path is the draft's guess of the target's coupled tokens. token_map: draft id
        -> target id, vocab: the target's size (the noise is drawn over the target vocabulary).
        Shifted so each row's best is 0: a child then never outscores its parent, which keeps a
        tree ranked by cumulative score topological."""
        noise = self.rng.gumbel(self.position + depth - 1, vocab or logprobs.shape[-1]).to(logprobs.device)
        if token_map is not None:
            noise = noise[token_map]
        scores = target_logprobs(logprobs, self.params) + noise
        return scores - scores.max(dim=-1, keepdim=True).values


def to_target_vocab(logits: torch.Tensor, token_map: torch.Tensor | None, vocab: int) -> torch.Tensor:
    """Rows over a reduced draft vocabulary (draft id -> target id in token_map) spread over the
    target's vocabulary, -inf elsewhere; rows already over the target vocabulary pass through."""
    if token_map is None:
        return logits
    full = torch.full((*logits.shape[:-1], vocab), -math.inf, dtype=logits.dtype, device=logits.device)
    full[..., token_map] = logits
    return full
