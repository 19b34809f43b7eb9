"""Sampled verification: the target's distribution, the random streams, rejection sampling over
chains and trees, and coupled (Gumbel-max) verification.

Two kinds of distribution checks:
- exact: BranchRng stands in for SequenceRng and follows every branch of every decision the
  code asks for (accept with probability a, or a categorical draw, drafting included), so the
  output distribution of the real rejection_accept is computed exactly and compared with the
  target's, token by token given the tokens before it;
- chi-square: the real SequenceRng, a fixed seed, and enough samples that a 1% total-variation
  error would fail (test_chi_square_has_the_power_for_one_percent says how many).
Each check is also run on deliberately broken variants (BROKEN) and must fail there:
  resample_from_p: after a rejection, keep p instead of the residual max(0, p - q)
    (fails the exact check on every tree, the chi-square on the chain and the mixed tree);
  no_renormalise: the residual (or p with a rejected sibling removed) is not renormalised
    (fails the exact check on every tree with siblings, the chi-square on the mixed tree);
  reused_uniform: every uniform feeds two decisions (fails the chi-square on the chain; the
    exact check replaces the random stream, so it cannot see this one).
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import math

import pytest
import torch

from models.common.errors import UserError
from models.speculative import verification
from models.speculative.sampling import (
    SamplingParams,
    SequenceRng,
    coupled_token,
    derive_seed,
    inverse_cdf,
    sample_token,
    target_logprobs,
    target_probs,
)
from models.speculative.tree import DraftTree
from models.speculative.verification import coupled_accept, coupled_noise, greedy_accept, rejection_accept


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny tensors: a thread pool only adds latency (and the machine is shared)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# --- broken variants -----------------------------------------------------------------------------

_uniform = SequenceRng.uniform


def _reused_uniform(self: SequenceRng) -> float:
    """Hands out each uniform twice in a row."""
    held = self.__dict__.pop("_held", None)
    if held is not None:
        return held
    self._held = _uniform(self)
    return self._held


BROKEN = {
    "resample_from_p": (verification, "_residual", lambda p, q, x: p),
    "no_renormalise": (verification, "_normalise", lambda r, mass=None: r),
    "reused_uniform": (SequenceRng, "uniform", _reused_uniform),
}


def break_it(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    owner, attr, replacement = BROKEN[name]
    monkeypatch.setattr(owner, attr, replacement)


# --- toy target and draft: a distribution per token prefix ----------------------------------------


@functools.lru_cache(maxsize=None)
def toy_row(salt: str, prefix: tuple[int, ...], vocab: int, zero_frac: float) -> torch.Tensor:
    """A skewed fp32 distribution [V] fixed by (salt, prefix), with about zero_frac of it zero."""
    g = torch.Generator().manual_seed(derive_seed("toy", salt, prefix, vocab))
    w = torch.rand(vocab, generator=g) + 0.1
    drop = torch.rand(vocab, generator=g) < zero_frac
    drop[int(w.masked_fill(drop, -1).argmax())] = False  # keep one token at least
    return (w.masked_fill(drop, 0) / w.masked_fill(drop, 0).sum()).float()


@dataclasses.dataclass(frozen=True)
class Scenario:
    """A tree shape; per node a fixed token (deterministic) or None (drawn from the draft's q)."""

    name: str
    vocab: int
    parents: tuple[int, ...]
    fixed: tuple[int | None, ...]
    target_zeros: float = 0.25  # share of the target's vocabulary with p = 0 (as top-k/top-p leave)
    draft_zeros: float = 0.25
    pass_none: bool = True  # all deterministic: draft_probs=None, not one-hot rows

    def target(self, prefix: tuple[int, ...]) -> torch.Tensor:
        return toy_row("target", prefix, self.vocab, self.target_zeros)

    def draft(self, prefix: tuple[int, ...]) -> torch.Tensor:
        return toy_row("draft", prefix, self.vocab, self.draft_zeros)

    def verify(self, rng) -> tuple[int, ...]:
        """Draft the tree (sampled nodes from q via rng), then rejection_accept; the emitted tokens."""
        tokens: list[int] = []
        prefixes: list[tuple[int, ...]] = []  # per node: the tokens before it
        qrows = []
        for parent, fixed in zip(self.parents, self.fixed):
            prefix = () if parent < 0 else prefixes[parent] + (tokens[parent],)
            q = self.draft(prefix) if fixed is None else torch.nn.functional.one_hot(
                torch.tensor(fixed), self.vocab).float()
            tokens.append(rng.categorical(q) if fixed is None else fixed)
            prefixes.append(prefix)
            qrows.append(q)
        tree = DraftTree(torch.tensor(tokens, dtype=torch.int64), self.parents)
        probs = torch.stack([self.target(())] + [self.target(prefixes[i] + (tokens[i],)) for i in range(len(tokens))])
        all_fixed = all(f is not None for f in self.fixed)
        draft_probs = None if all_fixed and self.pass_none else (torch.stack(qrows) if qrows else None)
        return tuple(rejection_accept(tree, probs, draft_probs, rng).tokens)


# --- exact enumeration ---------------------------------------------------------------------------


class BranchRng:
    """Stands in for SequenceRng: decisions follow a script of option indices; decisions past the
    script take option 0 and are recorded, so exact_distribution can visit every branch."""

    def __init__(self, script: tuple[int, ...]):
        self.script = script
        self.taken: list[int] = []
        self.n_options: list[int] = []
        self.weight = 1.0

    def _choose(self, options: list[tuple[object, float]]):
        j = len(self.taken)
        k = self.script[j] if j < len(self.script) else 0
        self.taken.append(k)
        self.n_options.append(len(options))
        value, w = options[k]
        self.weight *= w
        return value

    def accept(self, prob: float) -> bool:
        prob = min(max(prob, 0.0), 1.0)
        return self._choose([(v, w) for v, w in ((True, prob), (False, 1.0 - prob)) if w > 0])

    def categorical(self, probs: torch.Tensor) -> int:
        w = (probs.double() / probs.double().sum()).tolist()
        return self._choose([(i, wi) for i, wi in enumerate(w) if wi > 0])


def exact_distribution(run) -> dict[tuple[int, ...], float]:
    """Probability of each output of run(rng) over all of its random decisions."""
    dist: dict[tuple[int, ...], float] = collections.defaultdict(float)
    stack: list[tuple[int, ...]] = [()]
    while stack:
        script = stack.pop()
        rng = BranchRng(script)
        out = run(rng)
        dist[out] += rng.weight
        for j in range(len(script), len(rng.taken)):
            stack.extend(tuple(rng.taken[:j]) + (k,) for k in range(1, rng.n_options[j]))
    assert abs(sum(dist.values()) - 1) < 1e-9
    return dict(dist)


def next_token_conditionals(dist: dict[tuple[int, ...], float], vocab: int) -> dict[tuple[int, ...], torch.Tensor]:
    """For each emitted prefix that goes on: the distribution of the next emitted token."""
    mass: dict[tuple[int, ...], torch.Tensor] = {}
    for out, w in dist.items():
        for i in range(len(out)):
            mass.setdefault(out[:i], torch.zeros(vocab, dtype=torch.float64))[out[i]] += w
    return {prefix: m / m.sum() for prefix, m in mass.items()}


def check_exact(scenario: Scenario) -> None:
    """Every emitted token, given the emitted tokens before it, is distributed as the target's row."""
    dist = exact_distribution(scenario.verify)
    for prefix, cond in next_token_conditionals(dist, scenario.vocab).items():
        want = scenario.target(prefix).double()
        err = float((cond - want / want.sum()).abs().max())
        assert err < 1e-9, f"{scenario.name}: after {prefix} off by {err:.3g}"


# The target's root row (V = 8) has mass on 0, 4, 7 only, so token 3 below is a masked draft.
DET_CHAIN = Scenario("det_chain", 8, (-1, 0, 1), (7, 0, 6))
DET_TREE = Scenario("det_tree", 8, (-1, -1, -1, 0, 0, 3), (0, 7, 3, 4, 6, 1))
DET_DUPLICATE = Scenario("det_duplicate_siblings", 8, (-1, -1, -1, 1), (7, 7, 4, 1))
DET_ONE_HOT_ROWS = dataclasses.replace(DET_TREE, name="det_tree_one_hot_rows", pass_none=False)
SAMPLED_CHAIN = Scenario("sampled_chain", 6, (-1, 0), (None, None))
SAMPLED_SIBLINGS = Scenario("sampled_siblings", 6, (-1, -1, -1), (None, None, None))
SAMPLED_TREE = Scenario("sampled_tree", 5, (-1, -1, 0, 1), (None, None, None, None))
MIXED_TREE = Scenario("mixed_tree", 6, (-1, -1, -1, 0), (3, None, None, None))
SCENARIOS = [DET_CHAIN, DET_TREE, DET_DUPLICATE, DET_ONE_HOT_ROWS, SAMPLED_CHAIN, SAMPLED_SIBLINGS,
             SAMPLED_TREE, MIXED_TREE]
WITH_SIBLINGS = [s for s in SCENARIOS if len(set(s.parents)) < len(s.parents)]


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda s: s.name)
def test_rejection_sampling_output_is_exactly_the_target(scenario):
    check_exact(scenario)


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda s: s.name)
def test_exact_check_fails_when_resampling_from_p(scenario, monkeypatch):
    break_it(monkeypatch, "resample_from_p")
    with pytest.raises(AssertionError, match="off by"):
        check_exact(scenario)


@pytest.mark.parametrize("scenario", WITH_SIBLINGS, ids=lambda s: s.name)
def test_exact_check_fails_without_renormalising_after_a_rejected_sibling(scenario, monkeypatch):
    break_it(monkeypatch, "no_renormalise")
    with pytest.raises(AssertionError, match="off by"):
        check_exact(scenario)


def test_deterministic_nodes_as_none_or_one_hot_rows_agree():
    a = exact_distribution(DET_TREE.verify)
    b = exact_distribution(DET_ONE_HOT_ROWS.verify)
    assert a.keys() == b.keys()
    assert all(abs(a[k] - b[k]) < 1e-12 for k in a)


# --- acceptance on hand-built p and q ------------------------------------------------------------

V = 8


def dist(*weights: float) -> torch.Tensor:
    w = torch.tensor(weights + (0.0,) * (V - len(weights)), dtype=torch.float32)
    return w / w.sum()


def accept_distribution(p: torch.Tensor, q: torch.Tensor | None, x: int) -> tuple[float, torch.Tensor]:
    """Exact (P(draft x accepted), first-token distribution) for one child x of the root."""
    tree = DraftTree.chain([x])
    probs = torch.stack([p, dist(1)])
    out = exact_distribution(lambda rng: tuple(rejection_accept(tree, probs, q, rng).tokens))
    accepted = sum(w for toks, w in out.items() if len(toks) == 2)
    first = torch.zeros(V, dtype=torch.float64)
    for toks, w in out.items():
        first[toks[0]] += w
    return accepted, first


def test_p_equal_to_q_accepts_every_draft():
    rows = torch.stack([toy_row("target", (i,), V, 0.25) for i in range(4)])
    for seed in range(20):
        rng = SequenceRng(seed, 0)
        drafted = DraftTree.chain([rng.categorical(rows[i]) for i in range(3)])
        acc = rejection_accept(drafted, rows, rows[:3], rng)
        assert acc.path == [0, 1, 2]


def test_one_hot_q_accepts_with_probability_p_of_the_draft():
    p = dist(4, 3, 2, 1)
    for x in (0, 2, 5):
        accepted, first = accept_distribution(p, None, x)
        assert accepted == pytest.approx(float(p[x].double() / p.double().sum()), abs=1e-15)
        assert torch.allclose(first, p.double(), atol=1e-12)
    accepted, _ = accept_distribution(dist(0, 0, 1), None, 2)
    assert accepted == 1.0


def test_disjoint_supports_never_accept():
    p, q = dist(1, 2, 3, 4), dist(0, 0, 0, 0, 1, 1, 1, 1)
    for x in (4, 5, 6, 7):
        accepted, first = accept_distribution(p, q[None], x)
        assert accepted == 0.0
        assert torch.allclose(first, p.double(), atol=1e-12)


def test_tokens_q_cannot_draft_still_come_out_through_the_residual():
    p, q = dist(1, 1), dist(1)  # q = 0 where p > 0
    accepted, first = accept_distribution(p, q[None], 0)
    assert accepted == pytest.approx(0.5)
    assert torch.allclose(first, p.double(), atol=1e-12)
    accepted, _ = accept_distribution(p, q[None], 1)  # a draft its own q could not give: p(x) > 0 accepts
    assert accepted == 1.0


def test_top_k_and_top_p_masks_are_respected():
    logits = torch.tensor([[3.0, 2.5, 2.0, 1.0, 0.5, 0.0, -1.0, -2.0]])
    for params in (SamplingParams(1.0, top_k=3), SamplingParams(1.0, top_p=0.6), SamplingParams(0.7, 4, 0.9)):
        p = target_probs(logits, params)[0]
        masked = [t for t in range(V) if p[t] == 0]
        assert masked
        for x in masked:  # a masked draft never stands, deterministic or drawn from a q that likes it
            accepted, first = accept_distribution(p, None, x)
            assert accepted == 0.0 and torch.allclose(first, p.double(), atol=1e-12)
            accepted, first = accept_distribution(p, dist(*[1.0] * V)[None], x)
            assert accepted == 0.0 and bool((first[p == 0] == 0).all())


class AlwaysReject(SequenceRng):
    def accept(self, prob: float) -> bool:
        return False


def test_a_residual_without_mass_falls_back_to_p():
    """max(0, p - q) has no mass only where p == q (up to rounding), where a rejection cannot
    happen; AlwaysReject forces one, and the correction is then drawn from p, not from noise."""
    p = dist(1, 1, 1, 1)
    tree = DraftTree(torch.tensor([0, 1]), (-1, -1))
    exact = torch.stack([p, p])  # residual exactly zero: without the guard, 0 / 0
    near = p.double().clone()
    near[0] += 1e-9
    near[1] -= 1e-9  # rounding-sized: residual mass 1e-9 at token 1 only, below RESIDUAL_TOL
    for q in (exact, near[None].expand(2, V)):
        probs = torch.stack([p, p, p])
        seen = {rejection_accept(tree, probs, q, AlwaysReject(seed, 0)).tokens[0] for seed in range(60)}
        assert seen == {0, 1, 2, 3}


def test_shapes_are_checked():
    with pytest.raises(ValueError, match="need 3 rows"):
        rejection_accept(DraftTree.chain([1, 2]), torch.ones(2, V) / V, None, SequenceRng(0, 0))
    with pytest.raises(ValueError, match="draft probs"):
        rejection_accept(DraftTree.chain([1, 2]), torch.ones(3, V) / V, torch.ones(3, V) / V, SequenceRng(0, 0))
    q = torch.eye(V)[[1, 2]]
    q[1] = 0
    with pytest.raises(ValueError, match=r"rows \[1\] have no mass"):
        rejection_accept(DraftTree.chain([1, 2]), torch.ones(3, V) / V, q, SequenceRng(0, 0))


def test_empty_tree_is_target_only_sampling_on_the_same_stream():
    p = toy_row("target", (), V, 0.25)
    a, b = SequenceRng(3, 1), SequenceRng(3, 1)
    for _ in range(200):
        assert rejection_accept(DraftTree.empty(), p[None], None, a).tokens == [sample_token(p, b)]


def test_same_seed_reproduces_and_prompts_get_their_own_streams():
    def run(seed, index):
        rng = SequenceRng(seed, index)
        return [MIXED_TREE.verify(rng) for _ in range(30)]

    assert run(5, 0) == run(5, 0)
    assert run(5, 0) != run(5, 1) and run(5, 0) != run(6, 0)


# --- chi-square ----------------------------------------------------------------------------------

N_SAMPLES = 120_000  # see test_chi_square_has_the_power_for_one_percent
ALPHA = 1e-3


def chi_square_pvalue(counts: torch.Tensor, probs: torch.Tensor) -> float:
    """Pearson's test of counts against probs; the chi-square tail by Wilson-Hilferty (no scipy).
    A count where probs is 0 gives 0."""
    probs = probs.double() / probs.double().sum()
    counts = counts.double()
    support = probs > 0
    if bool((counts[~support] > 0).any()):
        return 0.0
    expected = counts.sum() * probs[support]
    stat = float(((counts[support] - expected) ** 2 / expected).sum())
    return chi_square_tail(stat, int(support.sum()) - 1)


def chi_square_tail(stat: float, df: int) -> float:
    z = ((stat / df) ** (1 / 3) - (1 - 2 / (9 * df))) / math.sqrt(2 / (9 * df))
    return 0.5 * math.erfc(z / math.sqrt(2))


def chi_square_critical(df: int, alpha: float) -> float:
    lo, hi = 0.0, 1000.0
    for _ in range(100):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if chi_square_tail(mid, df) > alpha else (lo, mid)
    return hi


def check_chi_square(tokens: list[int] | torch.Tensor, probs: torch.Tensor, what: str) -> None:
    counts = torch.bincount(torch.as_tensor(tokens), minlength=probs.numel())
    pvalue = chi_square_pvalue(counts, probs)
    assert pvalue > ALPHA, f"{what}: chi-square p-value {pvalue:.3g}"


def test_chi_square_has_the_power_for_one_percent():
    """A total-variation error of 1% has sum(delta^2 / p) >= (sum |delta|)^2 = 4e-4 (Cauchy-Schwarz),
    so N samples give a noncentrality of at least N * 4e-4; with N_SAMPLES its expected statistic
    clears the critical value by two standard deviations."""
    df = V - 1
    lam = N_SAMPLES * 4e-4
    assert df + lam - 2 * math.sqrt(2 * (df + 2 * lam)) > chi_square_critical(df, ALPHA)
    # and on samples: the worst case for a 1% error (every token off by 2% of itself)
    p = torch.full((V,), 1 / V)
    off = p * torch.tensor([1.02, 0.98] * (V // 2))
    u = torch.rand(N_SAMPLES, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    check_chi_square(inverse_cdf(p, u), p, "the exact distribution")
    with pytest.raises(AssertionError, match="p-value"):
        check_chi_square(inverse_cdf(off.expand(N_SAMPLES, V), u), p, "1% off")


def test_categorical_is_inverse_cdf_on_its_uniform():
    p = toy_row("target", (9,), V, 0.25)
    a, b = SequenceRng(2, 0), SequenceRng(2, 0)
    drawn = [a.categorical(p) for _ in range(500)]
    assert drawn == inverse_cdf(p.expand(500, V), torch.tensor([b.uniform() for _ in range(500)])).tolist()
    edge = torch.tensor([0.0, 1, 0, 2, 0])
    rng = SequenceRng(0, 0)
    rng._buffer = [1.0, 0.0]  # popped from the end; u = 1 cannot come out, but rounding can act like it
    assert [rng.categorical(edge) for _ in range(2)] == [1, 3]


def test_inverse_cdf_samples_the_distribution_and_never_a_zero():
    p = toy_row("target", (9,), V, 0.25)
    u = torch.rand(N_SAMPLES, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    check_chi_square(inverse_cdf(p.expand(N_SAMPLES, V), u), p, "inverse_cdf")
    edge = torch.tensor([0.0, 1, 0, 2, 0])
    assert inverse_cdf(edge, torch.tensor([0.0, 0.5, 1 - 1e-16, 1.0])).tolist() == [1, 3, 3, 3]


CHI_TARGET = toy_row("chi target", (), V, 0.0)
CHI_DRAFT = 0.6 * CHI_TARGET + 0.4 * toy_row("chi draft", (), V, 0.5)  # a draft that roughly agrees
CHI_TOP = int(CHI_DRAFT.argmax())


def sample_first_tokens(case: str, n: int, seed: int) -> torch.Tensor:
    """First emitted token of n verifications from SequenceRng(seed, 0).

    chain: one deterministic child, the draft's top token (draft_probs None).
    mixed_tree: production-shaped; the root's children are the draft's top token (one-hot row)
    and two tokens drawn from q (drawn up front, all at once); the top child has a
    deterministic child of its own.
    """
    child = torch.stack([toy_row("chi target", (t,), V, 0.25) for t in range(V)])
    rng = SequenceRng(seed, 0)
    out = torch.empty(n, dtype=torch.int64)
    if case == "chain":
        tree, probs = DraftTree.chain([CHI_TOP]), torch.stack([CHI_TARGET, child[CHI_TOP]])
        for i in range(n):
            out[i] = rejection_accept(tree, probs, None, rng).tokens[0]
        return out
    drafts = torch.multinomial(CHI_DRAFT, 2 * n, replacement=True, generator=torch.Generator().manual_seed(seed))
    tree = DraftTree(torch.tensor([CHI_TOP, 0, 0, 1]), (-1, -1, -1, 0))
    one_hot = torch.nn.functional.one_hot(torch.tensor([CHI_TOP, 1]), V).float()
    q = torch.stack([one_hot[0], CHI_DRAFT, CHI_DRAFT, one_hot[1]])
    fixed = torch.stack([CHI_TARGET, child[CHI_TOP], child[0], child[0], toy_row("chi target", (CHI_TOP, 1), V, 0.25)])
    table = fixed.expand(V, V, 5, V).clone()  # the block's rows for drafts (a, b)
    table[:, :, 2] = child[:, None]
    table[:, :, 3] = child[None, :]
    for i, (a, b) in enumerate(drafts.view(n, 2).tolist()):
        tree.tokens[1], tree.tokens[2] = a, b  # the shape (and its cached children) stays
        out[i] = rejection_accept(tree, table[a, b], q, rng).tokens[0]
    return out


@pytest.mark.parametrize("case", ["chain", "mixed_tree"])
def test_chi_square_first_token(case):
    check_chi_square(sample_first_tokens(case, N_SAMPLES, 0), CHI_TARGET, case)


@pytest.mark.parametrize("case, broken", [
    ("chain", "resample_from_p"),
    ("chain", "reused_uniform"),
    ("mixed_tree", "resample_from_p"),
    ("mixed_tree", "no_renormalise"),
])
def test_chi_square_catches_broken_variants(case, broken, monkeypatch):
    """The same check on a tenth of the samples (the statistic grows with N, so failing here
    means failing at N_SAMPLES too). no_renormalise needs siblings to show; a reused uniform
    barely moves the mixed tree's first token (about 0.2% total variation at N_SAMPLES, not
    detectable), but on the chain it reuses the rejection's uniform for the correction."""
    break_it(monkeypatch, broken)
    with pytest.raises(AssertionError, match="p-value"):
        check_chi_square(sample_first_tokens(case, N_SAMPLES // 10, 0), CHI_TARGET, f"{case}, {broken}")


# --- coupled (Gumbel-max) ------------------------------------------------------------------------

CV = 16
COUPLED = SamplingParams(temperature=0.8, top_k=12, top_p=0.95, seed=11)


def toy_logits(prefix: tuple[int, ...]) -> torch.Tensor:
    g = torch.Generator().manual_seed(derive_seed("logits", prefix))
    return torch.randn(CV, generator=g) * 2


def coupled_reference(prompt: list[int], n: int, rng: SequenceRng) -> list[int]:
    """Target-only coupled decoding: the token at position t is argmax(log p_t + g_t)."""
    tokens = list(prompt)
    for _ in range(n):
        logprobs = target_logprobs(toy_logits(tuple(tokens))[None], COUPLED)[0]
        tokens.append(coupled_token(logprobs, rng.gumbel(len(tokens), CV)))
    return tokens[len(prompt):]


def random_tree(gen: torch.Generator, guess: list[int], max_nodes: int = 10) -> DraftTree:
    """A random tree whose nodes copy `guess` (the true continuation) at their depth half the time."""
    parents: list[int] = []
    tokens: list[int] = []
    depths: list[int] = []
    for _ in range(int(torch.randint(0, max_nodes + 1, (), generator=gen))):
        parent = int(torch.randint(-1, len(parents), (), generator=gen))
        depth = 1 if parent < 0 else depths[parent] + 1
        right = depth <= len(guess) and float(torch.rand((), generator=gen)) < 0.5
        tokens.append(guess[depth - 1] if right else int(torch.randint(0, CV, (), generator=gen)))
        parents.append(parent)
        depths.append(depth)
    return DraftTree(torch.tensor(tokens, dtype=torch.int64), tuple(parents))


def test_coupled_speculation_emits_the_target_only_tokens():
    prompt, n = [1, 2, 3], 40
    assert coupled_reference(prompt, n, SequenceRng(COUPLED.seed, 0)) == coupled_reference(
        prompt, n, SequenceRng(COUPLED.seed, 0))  # the same seed reproduces
    for index in range(3):
        reference = coupled_reference(prompt, n, SequenceRng(COUPLED.seed, index))
        rng = SequenceRng(COUPLED.seed, index)
        gen = torch.Generator().manual_seed(index)
        tokens, accepted = list(prompt), 0
        while len(tokens) < len(prompt) + n:
            done = len(tokens) - len(prompt)
            tree = random_tree(gen, reference[done:])
            rows = [tuple(tokens)] + [tuple(tokens) + tuple(int(tree.tokens[i]) for i in tree.path_to(node))
                                      for node in range(tree.n_nodes)]
            logprobs = target_logprobs(torch.stack([toy_logits(r) for r in rows]), COUPLED)
            acc = coupled_accept(tree, logprobs, coupled_noise(rng, tree, len(tokens), CV))
            tokens += acc.tokens
            accepted += acc.n_accepted
        assert tokens[len(prompt):len(prompt) + n] == reference
        assert accepted > n // 4  # the trees did get accepted


def test_coupled_noise_is_addressed_by_position_alone():
    a, b = SequenceRng(4, 2), SequenceRng(4, 2)
    for _ in range(5):
        b.uniform()  # consuming the decision stream does not move the noise
    assert torch.equal(a.gumbel(17, CV), b.gumbel(17, CV))
    assert not torch.equal(a.gumbel(17, CV), a.gumbel(18, CV))
    assert not torch.equal(a.gumbel(17, CV), SequenceRng(4, 3).gumbel(17, CV))
    assert not torch.equal(a.gumbel(17, CV), SequenceRng(5, 2).gumbel(17, CV))
    c = SequenceRng(4, 2)
    c.gumbel(3, CV)  # and drawing noise does not move the decision stream
    d = SequenceRng(4, 2)
    assert [c.uniform() for _ in range(3)] == [d.uniform() for _ in range(3)]
    tree = DraftTree(torch.tensor([1, 2, 3, 4]), (-1, -1, 0, 2))
    noise = coupled_noise(a, tree, 10, CV)
    for row, depth in enumerate((0, *tree.depths)):
        assert torch.equal(noise[row], a.gumbel(10 + depth, CV))


def test_coupled_sampling_follows_the_target_distribution():
    logits = toy_logits((5,))[None]
    logprobs, p = target_logprobs(logits, COUPLED)[0], target_probs(logits, COUPLED)[0]
    rng = SequenceRng(COUPLED.seed, 0)
    n = N_SAMPLES // 4  # gumbel makes a generator per position; this still catches 2% errors
    check_chi_square([coupled_token(logprobs, rng.gumbel(t, CV)) for t in range(n)], p, "coupled")


# --- temperature 0 is greedy, bit for bit ---------------------------------------------------------


def test_temperature_zero_is_greedy_for_every_rule():
    gen = torch.Generator().manual_seed(3)
    greedy = SamplingParams(temperature=0.0, top_k=3, top_p=0.5)
    for trial in range(60):
        tree = random_tree(gen, [])
        logits = torch.randint(-3, 3, (tree.n_nodes + 1, CV), generator=gen).float()  # many ties
        want = greedy_accept(tree, logits)
        probs = target_probs(logits, greedy)
        assert torch.equal(probs.argmax(-1), logits.argmax(-1))
        assert torch.equal(probs.max(-1).values, torch.ones(len(probs)))
        rng = SequenceRng(trial, 0)
        assert coupled_accept(tree, target_logprobs(logits, greedy), coupled_noise(rng, tree, 5, CV)) == want
        assert rejection_accept(tree, probs, None, rng) == want
        q = torch.rand(tree.n_nodes, CV, generator=gen).softmax(-1)
        assert rejection_accept(tree, probs, q, rng) == want
        assert coupled_token(target_logprobs(logits, greedy)[0], rng.gumbel(0, CV)) == int(logits[0].argmax())


# --- the target's distribution -------------------------------------------------------------------


def kept_tokens(probs: torch.Tensor) -> list[int]:
    return (probs > 0).nonzero().flatten().tolist()


def test_temperature_scales_the_logits():
    logits = torch.randn(3, V, generator=torch.Generator().manual_seed(0))
    for t in (0.5, 1.0, 2.0):
        assert torch.allclose(target_probs(logits, SamplingParams(t)), (logits / t).softmax(-1), atol=1e-7)
    assert target_probs(logits.double(), SamplingParams(1.0)).dtype == torch.float32


def test_top_k_keeps_k_and_its_ties():
    logits = torch.tensor([[0.0, 3.0, 1.0, 2.0, 2.0, -1.0, 0.5, 1.5]])

    def keep(k: int) -> list[int]:
        return kept_tokens(target_probs(logits, SamplingParams(1.0, top_k=k))[0])

    assert keep(1) == [1]
    assert keep(2) == [1, 3, 4]  # 3 and 4 tie for second place: both stay
    assert keep(3) == [1, 3, 4]
    assert keep(4) == [1, 3, 4, 7]
    assert keep(0) == keep(V) == keep(100) == list(range(V))


def test_top_p_keeps_the_smallest_set_reaching_the_mass():
    probs = torch.tensor([0.1, 0.4, 0.05, 0.3, 0.15])
    logits = probs.log()[None]

    def keep(top_p: float) -> list[int]:
        return kept_tokens(target_probs(logits, SamplingParams(1.0, top_p=top_p))[0])

    assert keep(0.01) == [1]  # at least one token
    assert keep(0.39) == [1]
    assert keep(0.41) == [1, 3]
    assert keep(0.69) == [1, 3]
    assert keep(0.71) == [1, 3, 4]
    assert keep(1.0) == [0, 1, 2, 3, 4]
    kept = target_probs(logits, SamplingParams(1.0, top_p=0.71))[0]
    assert torch.allclose(kept, torch.tensor([0, 0.4, 0, 0.3, 0.15]) / 0.85, atol=1e-6)


def test_top_p_ties_go_to_the_lower_token_id():
    logits = torch.zeros(1, V)
    kept = target_probs(logits, SamplingParams(1.0, top_p=0.3))[0]
    assert kept_tokens(kept) == [0, 1, 2]  # 0.25 + 0.25 < 0.3 <= 0.75
    assert torch.allclose(kept[:3], torch.full((3,), 1 / 3))


def test_top_k_applies_before_top_p():
    logits = torch.tensor([[0.4, 0.3, 0.2, 0.1]]).log()
    kept = target_probs(logits, SamplingParams(1.0, top_k=2, top_p=0.5))[0]
    assert kept_tokens(kept) == [0]  # 4/7 >= 0.5 after top-k; top-p first would keep 2


def test_rows_are_independent_and_sum_to_one():
    logits = torch.randn(5, 32, generator=torch.Generator().manual_seed(2)) * 3
    params = SamplingParams(0.9, top_k=10, top_p=0.8)
    probs = target_probs(logits, params)
    assert torch.allclose(probs.sum(-1), torch.ones(5))
    for i in range(5):
        assert torch.equal(target_probs(logits[i:i + 1], params)[0], probs[i])
    logprobs = target_logprobs(logits, params)
    assert torch.equal(logprobs == -math.inf, probs == 0)
    assert torch.allclose(logprobs.exp(), probs, atol=1e-6)


# --- SamplingParams ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, flag",
    [
        ({"temperature": -0.1}, "--temperature"),
        ({"temperature": float("nan")}, "--temperature"),
        ({"temperature": float("inf")}, "--temperature"),
        ({"temperature": 1.0, "top_p": 0.0}, "--top_p"),
        ({"temperature": 1.0, "top_p": 1.5}, "--top_p"),
        ({"temperature": 1.0, "top_p": float("nan")}, "--top_p"),
        ({"temperature": 1.0, "top_k": -1}, "--top_k"),
    ],
)
def test_bad_sampling_params_are_user_errors(kwargs, flag):
    with pytest.raises(UserError, match=flag) as info:
        SamplingParams(**kwargs).validate()
    assert "\n" not in str(info.value)
    bad = next(iter(kwargs.values())) if len(kwargs) == 1 else list(kwargs.values())[1]
    assert str(bad) in str(info.value)


def test_sampling_params_defaults_are_greedy_and_valid():
    params = SamplingParams()
    assert params.validate() is params and params.is_greedy
    assert not SamplingParams(temperature=0.5).is_greedy
    assert SamplingParams(1.0, top_k=0, top_p=1.0).validate().top_k == 0
