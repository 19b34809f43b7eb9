"""Sampled decoding end to end (issue 12): Engine -> Generator -> proposer -> verifier on tiny
random models, not hand-built distributions (test_sampling.py covers the pure functions).

- rejection: the joint distribution of the first three generated tokens equals target-only
  sampling's, computed exactly by enumerating the target's own (top-k-filtered) rows, for each
  method (a chi-square test at a fixed seed, samples = prompt indices of one seed, each an
  independent stream). The first token comes from the prefill; tokens 2 and 3 come through
  verification of a depth-2 draft (max_generated_tokens 4 leaves room for it), and every case
  must see drafts accepted, at depth 2 too, so acceptance is exercised, not only corrections.
  The same check must fail on deliberately broken verifiers (BROKEN).
- coupled: output equals target-only coupled sampling token for token, for every method and
  draft shape.
- reproducibility: a seed reproduces across engines, prompt indices pick their own streams, and
  temperature 0 is greedy decoding bit for bit.
- what the proposers hand the verifier: sampled chains carry their q rows, trees none.
"""

from __future__ import annotations

import collections
import dataclasses
import functools

import pytest
import torch

from models.common.device import open_device
from models.common.metrics import summarize
from models.speculative import sampling
from models.backends import torch_backend
from models.speculative.engine import Engine, RunConfig
from models.speculative.sampling import SamplingParams, SequenceRng, target_probs
from models.speculative.speculators import heads
from models.speculative.tests.test_sampling import BROKEN as UNIT_BROKEN
from models.speculative.tests.test_sampling import chi_square_tail
from models.speculative.tests.test_sampling import one_thread  # noqa: F401  (autouse here too: one torch thread)

MODEL = "random:tiny-llama"  # 4 layers, vocabulary 320, byte tokenizer (EOS = 2)
EOS = (2,)
TEXT = [1, *(b + 3 for b in b"the cat sat on the mat")]  # the byte tokenizer's ids (BOS = 1)
# Token 225 repeated: this model keeps repeating it (p about 0.6 to 0.8 under top-k 4), so n-gram
# drafts and heads that predict the last position's distribution do get accepted.
REPEATS = [1] + [225] * 8

TEMPERATURE, TOP_K, SEED = 1.0, 4, 0  # top-k 4: at most 4 + 16 + 64 outcomes for three tokens
N_TOKENS = 3  # the joint of the first three generated tokens
MAX_NEW = N_TOKENS + 1  # room for a depth-2 draft after the first token (the cap keeps one for the target)
N_SAMPLES = 500  # at SEED, resample_from_p gives p-values of 1e-6 to 1e-23 in every STAT_CASES case
ALPHA = 1e-3
MIN_EXPECTED = 5.0  # chi-square cells expected rarer than this are pooled


def config(**kw) -> RunConfig:
    base = dict(model=MODEL, instruct=False, n_draft_tokens=2, max_generated_tokens=MAX_NEW, max_seq_len=64,
                temperature=TEMPERATURE, top_k=TOP_K, seed=SEED, verify="rejection")
    return RunConfig(**{**base, **kw})


# --- speculators for the tiny target (the shipped ones only fit the default model) ---------------


def _target(n_layers: int | None):
    return torch_backend.load(MODEL, n_layers, open_device("cpu")).model


def _save_head(kind: str, target, vocab: torch.Tensor, folder):
    args = target.args
    cfg = heads.SpeculatorConfig(kind=kind, target=MODEL, dim=args.dim, vocab_size=args.vocab_size,
                                 draft_vocab_size=vocab.numel(), n_heads=3, n_blocks=1)
    head = heads.build(cfg, target, vocab)
    heads.initialise(head, target)
    with torch.no_grad():
        if kind == "eagle":
            # A copy of a one-layer target reading only the token embeddings: it computes the
            # target's own next-token distribution without the BOS and in bf16 (as saved), so
            # q is close to p but not equal: some drafts accepted, some rejected.
            for mine, theirs in zip(head.layer.layers[0].parameters(), target.layers[0].parameters()):
                mine.copy_(theirs)
            head.fc_weight.zero_()
            head.fc_weight[:, : args.dim] += torch.eye(args.dim, dtype=head.fc_weight.dtype)
            head.layer.norm.copy_(target.norm)
        else:  # small random blocks on top of the identity: each head a perturbed LM head
            gen = torch.Generator().manual_seed(0)
            head.weight.copy_(0.05 * torch.randn(head.weight.shape, generator=gen))
    heads.save(head, folder)
    return str(folder)


@pytest.fixture(scope="module")
def speculators(tmp_path_factory) -> dict[str, str]:
    """--speculator folders: eagle for the one-layer target, multi_projection for the 4-layer one.

    Each leaves a token the target often wants out of its draft vocabulary (draft id -> target
    id is then not the identity, and that token can only come out through the residual)."""
    root = tmp_path_factory.mktemp("speculators")
    one_layer, full = _target(1), _target(None)
    vocab = functools.partial(_vocab_without, full.args.vocab_size)
    return {
        "eagle": _save_head("eagle", one_layer, vocab(_likely_second(one_layer, TEXT)), root / "eagle"),
        "multi_projection": _save_head("multi_projection", full, vocab(_likely_second(full, REPEATS)),
                                       root / "multi_projection"),
    }


def _vocab_without(vocab_size: int, token: int) -> torch.Tensor:
    return torch.tensor([t for t in range(vocab_size) if t != token])


@torch.inference_mode()
def _likely_second(model, prompt: list[int]) -> int:
    """The target's second choice for the second generated token after its favourite first."""
    first = int(_logits(model, prompt).argmax())
    return int(_logits(model, prompt + [first]).topk(2).indices[1])


# --- the exact target-only joint -----------------------------------------------------------------


def _logits(model, ids: list[int]) -> torch.Tensor:
    """The target's fp32 logits for the token after ids: the generator's prefill call."""
    return model(torch.tensor([ids]), model.new_cache(len(ids)), 0, logits_for="last")[0, -1]


@torch.inference_mode()
def exact_joint(model, prompt: list[int], params: SamplingParams, n_tokens: int) -> dict[tuple[int, ...], float]:
    """P(first n_tokens generated) under target-only sampling: prod over t of p(x_t | prompt, x_<t)
    with p = sampling.target_probs of the target's logits; an EOS ends an outcome early.

    Speculation computes the same rows from other block shapes (verify blocks, the KV cache),
    which changes their last bits only: each row's k-th and (k + 1)-th logits must be far apart,
    so that those bits cannot change which tokens top-k keeps."""
    dist: dict[tuple[int, ...], float] = {}
    stack: list[tuple[tuple[int, ...], float]] = [((), 1.0)]
    while stack:
        prefix, weight = stack.pop()
        if len(prefix) == n_tokens or (prefix and prefix[-1] in EOS):
            dist[prefix] = weight
            continue
        logits = _logits(model, prompt + list(prefix))
        top = (logits.float() / params.temperature).topk(params.top_k + 1).values
        assert float(top[-2] - top[-1]) > 1e-3, f"top-k boundary too close to call after {prefix}"
        p = target_probs(logits, params).double()
        p = p / p.sum()
        stack.extend((prefix + (t,), weight * float(p[t])) for t in p.nonzero().flatten().tolist())
    assert abs(sum(dist.values()) - 1) < 1e-9
    return dist


_JOINTS: dict[tuple, dict] = {}


def joint_for(target_layers: int | None, prompt: list[int]) -> dict[tuple[int, ...], float]:
    key = (target_layers, tuple(prompt))
    if key not in _JOINTS:
        params = SamplingParams(TEMPERATURE, TOP_K, 1.0, SEED)
        _JOINTS[key] = exact_joint(_target(target_layers), prompt, params, N_TOKENS)
    return _JOINTS[key]


# --- chi-square (Pearson, pooling rare outcomes; test_sampling.py's Wilson-Hilferty tail) --------


def chi_square_pvalue(counts: collections.Counter, exact: dict[tuple[int, ...], float]) -> float:
    """Counts of outcomes against their exact probabilities. Outcomes expected fewer than
    MIN_EXPECTED times are pooled into one cell (merged into the smallest other cell when the
    pool is still that rare). An outcome with probability 0 gives 0."""
    n = sum(counts.values())
    if any(exact.get(k, 0.0) <= 0 for k in counts):
        return 0.0
    cells = sorted(exact, key=exact.get)
    rare = [k for k in cells if n * exact[k] < MIN_EXPECTED]
    bins = [[k] for k in cells if n * exact[k] >= MIN_EXPECTED]
    if rare:
        if bins and n * sum(exact[k] for k in rare) < MIN_EXPECTED:
            bins[0] += rare
        else:
            bins.insert(0, rare)
    if len(bins) < 2:
        return 1.0
    stat = 0.0
    for cell in bins:
        expected = n * sum(exact[k] for k in cell)
        stat += (sum(counts[k] for k in cell) - expected) ** 2 / expected
    return chi_square_tail(stat, len(bins) - 1)


def test_chi_square_pooling_and_power():
    """The helper on known distributions: exact samples pass, a 10% shift of mass between two
    cells fails at N_SAMPLES (so the checks below can see errors of that size), and an
    impossible outcome fails outright."""
    probs = {(i,): w for i, w in enumerate([0.4, 0.3, 0.2, 0.05, 0.03, 0.02, 0.001, 0.0005])}
    total = sum(probs.values())
    probs = {k: v / total for k, v in probs.items()}
    keys = list(probs)
    u = torch.rand(N_SAMPLES, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    draw = sampling.inverse_cdf(torch.tensor([probs[k] for k in keys]).expand(N_SAMPLES, -1), u)
    assert chi_square_pvalue(collections.Counter(keys[i] for i in draw.tolist()), probs) > ALPHA
    off = dict(probs)
    off[(0,)] -= 0.1
    off[(1,)] += 0.1
    draw = sampling.inverse_cdf(torch.tensor([off[k] for k in keys]).expand(N_SAMPLES, -1), u)
    assert chi_square_pvalue(collections.Counter(keys[i] for i in draw.tolist()), probs) < ALPHA
    assert chi_square_pvalue(collections.Counter({(0,): 5, (9,): 1}), probs) == 0.0


# --- rejection sampling: the joint of the first tokens ----------------------------------------


@dataclasses.dataclass(frozen=True)
class Case:
    prompt: tuple[int, ...]
    options: dict  # RunConfig fields; "speculator" names a speculators() entry


CASES = {
    # a separate model, the target's first 3 of 4 layers (own weights copy, own cache): q != p
    "draft_model": Case(tuple(TEXT), dict(method="draft_model", draft_layers=3)),
    # deterministic top-2 children (draft_probs None): depth 2, 5 of the 6 candidates kept
    "draft_model_tree": Case(tuple(TEXT), dict(method="draft_model", draft_layers=3, tree_topk=2, tree_budget=5)),
    "self_draft": Case(tuple(TEXT), dict(method="self_draft", draft_layers=2)),
    "prompt_lookup": Case(tuple(REPEATS), dict(method="prompt_lookup")),
    # drafts from the earlier samples' outputs (the run's history): deterministic, and changing
    "suffix": Case(tuple(TEXT), dict(method="suffix")),
    # a reduced draft vocabulary mapped into the target's (sample_chain's token_map path)
    "eagle": Case(tuple(TEXT), dict(method="eagle", target_layers=1, speculator="eagle")),
    # every head drawn at once from the root's hidden state
    "multi_projection": Case(tuple(REPEATS), dict(method="multi_projection", speculator="multi_projection")),
}


def build_engine(case: Case, speculators: dict[str, str], **overrides) -> Engine:
    options = dict(case.options)
    if "speculator" in options:
        options["speculator"] = speculators[options["speculator"]]
    return Engine(config(**{**options, **overrides}))


def sample_joint(engine: Engine, prompt: list[int], n: int) -> tuple[collections.Counter, collections.Counter]:
    """(outcome counts of the first N_TOKENS tokens, how many drafts the first verification
    accepted: count per number) over prompt indices 0..n-1 of one seed."""
    outcomes: collections.Counter = collections.Counter()
    accepted: collections.Counter = collections.Counter()
    for index in range(n):
        result = engine.run(prompt, prompt_index=index)
        outcomes[tuple(result.tokens[:N_TOKENS])] += 1
        its = result.stats.iterations
        accepted[its[0].accepted if its and its[0].proposed else None] += 1  # None: nothing drafted
    return outcomes, accepted


def check_joint(outcomes: collections.Counter, exact: dict, what: str) -> None:
    pvalue = chi_square_pvalue(outcomes, exact)
    worst = max(exact, key=lambda k: abs(outcomes[k] / sum(outcomes.values()) - exact[k]))
    assert pvalue > ALPHA, (f"{what}: chi-square p-value {pvalue:.3g} over {len(exact)} outcomes; worst "
                            f"{worst}: seen {outcomes[worst]}, expected {exact[worst] * sum(outcomes.values()):.1f}; "
                            f"impossible outcomes seen: {[k for k in outcomes if k not in exact]}")


# self_draft drafts through draft_model's code and suffix is verified as prompt_lookup is: both
# are left to the coupled token-for-token test below, which checks their bookkeeping exactly.
STAT_CASES = ["draft_model", "draft_model_tree", "prompt_lookup", "eagle", "multi_projection"]


@pytest.mark.parametrize("name", STAT_CASES)
def test_rejection_sampling_joint_equals_target_only(name, speculators):
    case = CASES[name]
    engine = build_engine(case, speculators)
    exact = joint_for(case.options.get("target_layers"), list(case.prompt))
    outcomes, accepted = sample_joint(engine, list(case.prompt), N_SAMPLES)
    check_joint(outcomes, exact, name)
    # the check exercised acceptance: first verifications accepted drafts, at depth 2 too
    some = sum(c for a, c in accepted.items() if a)
    assert some >= N_SAMPLES // 20, f"{name}: drafts accepted in only {some} of {N_SAMPLES} first verifications"
    assert accepted[2] >= N_SAMPLES // 100, f"{name}: both drafts accepted in only {accepted[2]} of {N_SAMPLES}"


def test_target_only_sampling_matches_the_enumeration():
    """The reference itself: the target-only baseline (no proposer) against the same joint, so a
    failure above is speculation's, not the enumeration's (half the samples: a sanity check)."""
    engine = Engine(config(method="target"))
    outcomes, _ = sample_joint(engine, TEXT, N_SAMPLES // 2)
    check_joint(outcomes, joint_for(None, TEXT), "target only")


# (Verifying sampled drafts as if they were deterministic, draft_probs dropped, is not on this
# list: accepting x with p(x) and removing x from p on rejection is exact for any draft chosen
# independently of the verifier's uniforms, sampled ones included; it only accepts less.)
# after a rejection the correction is drawn from p, not from the residual max(0, p - q); every
# uniform feeds two decisions (a draft draw and its acceptance, an acceptance and the correction)
BROKEN = {name: UNIT_BROKEN[name] for name in ("resample_from_p", "reused_uniform")}


@pytest.mark.parametrize("name, broken", [
    ("draft_model", "resample_from_p"),
    ("draft_model_tree", "resample_from_p"),
    ("prompt_lookup", "reused_uniform"),
])
def test_joint_check_catches_broken_verifiers(name, broken, speculators, monkeypatch):
    """The same check, samples and seed as above on a broken rule: it must reject."""
    case = CASES[name]
    exact = joint_for(case.options.get("target_layers"), list(case.prompt))
    owner, attr, replacement = BROKEN[broken]
    monkeypatch.setattr(owner, attr, replacement)
    engine = build_engine(case, speculators)
    outcomes, _ = sample_joint(engine, list(case.prompt), N_SAMPLES)
    with pytest.raises(AssertionError, match="p-value"):
        check_joint(outcomes, exact, f"{name}, {broken}")


# --- coupled: token for token ----------------------------------------------------------------

COUPLED = dict(temperature=0.8, top_k=8, top_p=0.9, verify="coupled")  # peaked enough that n-gram drafts stand
COUPLED_PROMPTS = [TEXT, REPEATS, [1, *(b + 3 for b in b"abc abc abc ab")], TEXT]  # TEXT twice: own streams
COUPLED_TOKENS = 16
COUPLED_METHODS = {
    "draft_model": dict(method="draft_model", draft_layers=3),
    "self_draft": dict(method="self_draft", draft_layers=2),
    "prompt_lookup": dict(method="prompt_lookup"),
    "suffix": dict(method="suffix"),
    "multi": dict(method="multi", proposers="draft_model,prompt_lookup,suffix", draft_layers=3),
    "eagle": dict(method="eagle", target_layers=1, speculator="eagle"),
    "multi_projection": dict(method="multi_projection", speculator="multi_projection"),
}
SHAPES = [dict(n_draft_tokens=k, tree_topk=topk, tree_budget=budget)
          for k in (1, 3) for topk, budget in ((1, None), (2, 4), (2, 8))]


def coupled_outputs(options: dict, seed: int) -> list:
    engine = Engine(config(**options, **COUPLED, seed=seed, max_generated_tokens=COUPLED_TOKENS))
    return [engine.run(ids, prompt_index=i) for i, ids in enumerate(COUPLED_PROMPTS)]


@functools.lru_cache(maxsize=None)
def coupled_reference(target_layers: int | None, seed: int) -> tuple[tuple[int, ...], ...]:
    options = dict(method="target", target_layers=target_layers)
    return tuple(tuple(r.tokens) for r in coupled_outputs(options, seed))


@pytest.mark.parametrize("name", list(COUPLED_METHODS))
def test_coupled_speculation_equals_target_only_token_for_token(name, speculators):
    options = dict(COUPLED_METHODS[name])
    if "speculator" in options:
        options["speculator"] = speculators[options["speculator"]]
    accepted = branched = 0
    for seed, shape in enumerate(SHAPES):  # a seed of its own for every shape
        expected = coupled_reference(options.get("target_layers"), seed)
        results = coupled_outputs({**options, **shape}, seed)
        assert tuple(tuple(r.tokens) for r in results) == expected, f"{name} {shape} seed {seed}"
        accepted += summarize([r.stats for r in results])["accepted_tokens"]
        branched += sum(it.proposed > it.draft_depth for r in results for it in r.stats.iterations)
    assert accepted > 0, f"{name}: no draft accepted: only the target's own tokens were compared"
    assert branched > 0 or name in ("prompt_lookup", "suffix"), f"{name}: no tree had a branch"


def test_coupled_reference_varies():
    """Guard against a vacuous comparison: seeds and prompt indices change the coupled output."""
    a, b = coupled_reference(None, 0), coupled_reference(None, 1)
    assert a != b and a[0] != a[3]  # TEXT at indices 0 and 3


# --- reproducibility ---------------------------------------------------------------------------


@pytest.mark.parametrize("verify", ["rejection", "coupled"])
def test_same_seed_reproduces_with_a_new_engine(verify):
    def run(seed):
        engine = Engine(config(method="draft_model", draft_layers=3, n_draft_tokens=3, max_generated_tokens=16,
                               verify=verify, seed=seed))
        results = [engine.run(ids, prompt_index=i) for i, ids in enumerate([TEXT, REPEATS])]
        return [(r.tokens, [(it.proposed, it.accepted) for it in r.stats.iterations]) for r in results]

    assert run(7) == run(7)
    assert run(7) != run(8)


@pytest.mark.parametrize("verify", ["rejection", "coupled"])
def test_prompt_index_picks_the_stream(verify):
    """A prompt repeated N times gives N different samples; each index's sample is the same
    whatever ran before it (its stream depends on (seed, index) only)."""
    engine = Engine(config(method="self_draft", draft_layers=2, n_draft_tokens=3, max_generated_tokens=16,
                           verify=verify))
    outs = [engine.run(TEXT, prompt_index=i).tokens for i in range(6)]
    assert len({tuple(o) for o in outs}) >= 5
    fresh = Engine(config(method="self_draft", draft_layers=2, n_draft_tokens=3, max_generated_tokens=16,
                          verify=verify))
    assert fresh.run(TEXT, prompt_index=4).tokens == outs[4]


GREEDY_METHODS = [
    dict(method="target"),
    dict(method="draft_model", draft_layers=3),
    dict(method="draft_model", draft_layers=3, tree_topk=2, tree_budget=6),
    dict(method="self_draft", draft_layers=2),
    dict(method="prompt_lookup"),
    dict(method="suffix"),
]


@pytest.mark.parametrize("options", GREEDY_METHODS, ids=lambda o: "-".join(str(v) for v in o.values()))
def test_temperature_zero_is_greedy_bit_for_bit(options):
    """temperature 0 with top-k / top-p / seed set decodes exactly as a run without any sampling
    argument: the same tokens, the same drafts accepted at every iteration."""
    common = dict(model=MODEL, instruct=False, n_draft_tokens=3, max_generated_tokens=20, max_seq_len=64, **options)

    def run(**sampling_args):
        engine = Engine(RunConfig(**common, **sampling_args))
        results = [engine.run(ids, prompt_index=i) for i, ids in enumerate([TEXT, REPEATS])]
        return [(r.tokens, [(it.proposed, it.accepted, it.emitted) for it in r.stats.iterations]) for r in results]

    assert run(temperature=0.0, top_k=3, top_p=0.5, seed=9) == run()


# --- what the proposers hand the verifier ------------------------------------------------------


def recorded_trees(engine: Engine, prompts: list[list[int]]) -> list:
    trees = []
    propose = engine.proposer.propose

    def recording(ctx, spec):
        tree = propose(ctx, spec)
        trees.append(tree)
        return tree

    engine.proposer.propose = recording  # the generator holds this very proposer
    for i, ids in enumerate(prompts):
        engine.run(ids, prompt_index=i)
    return [t for t in trees if t.n_nodes]


@pytest.mark.parametrize("name", ["draft_model", "self_draft", "eagle", "multi_projection"])
def test_sampled_chains_carry_their_draft_distribution(name, speculators):
    """Under rejection a model proposer's chain carries q: one row per node over the target's
    vocabulary, summing to 1, with mass on the token drawn from it, and no more than top-k
    tokens (the draft's own filter); outside a reduced draft vocabulary q is 0."""
    case = CASES[name]
    engine = build_engine(case, speculators, n_draft_tokens=3, max_generated_tokens=12)
    trees = recorded_trees(engine, [list(case.prompt)] * 3)
    assert trees
    vocab = engine.target.model.args.vocab_size
    for tree in trees:
        q = tree.draft_probs
        assert q is not None and q.shape == (tree.n_nodes, vocab) and q.dtype == torch.float32
        assert torch.allclose(q.double().sum(-1), torch.ones(tree.n_nodes, dtype=torch.float64), atol=1e-5)
        assert bool((q[torch.arange(tree.n_nodes), tree.tokens] > 0).all())
        assert bool(((q > 0).sum(-1) <= TOP_K).all())
        if name in ("eagle", "multi_projection"):
            head = engine.proposer.heads if name == "multi_projection" else engine.proposer.head
            draft_vocab = head.draft_vocab
            outside = torch.ones(vocab, dtype=torch.bool)
            outside[draft_vocab] = False
            assert outside.any() and bool((q[:, outside] == 0).all())


@pytest.mark.parametrize("name, options, verify", [
    ("draft_model_tree", {}, "rejection"),
    ("eagle", dict(tree_topk=2, tree_budget=5), "rejection"),
    ("multi_projection", dict(tree_topk=2, tree_budget=5), "rejection"),
    ("prompt_lookup", {}, "rejection"),
    ("suffix", {}, "rejection"),
    ("draft_model", {}, "coupled"),  # coupled chains are argmax picks: nothing to pass
])
def test_deterministic_drafts_carry_no_draft_distribution(name, options, verify, speculators):
    case = CASES[name]
    engine = build_engine(case, speculators, max_generated_tokens=12, verify=verify, **options)
    trees = recorded_trees(engine, [list(case.prompt), TEXT, REPEATS])
    assert trees and all(t.draft_probs is None for t in trees)
    if options.get("tree_topk", case.options.get("tree_topk", 1)) > 1:
        assert any(not t.is_chain for t in trees)


def test_draft_equal_to_target_accepts_every_draft():
    """q == p (the draft is the target itself, its own spec, own cache): min(1, p / q) = 1, so
    every sampled draft stands; q rows misaligned with the verified rows would reject often."""
    engine = Engine(config(method="draft_model", n_draft_tokens=3, max_generated_tokens=25))
    results = [engine.run(ids, prompt_index=i) for i, ids in enumerate([TEXT, REPEATS, TEXT])]
    s = summarize([r.stats for r in results])
    assert s["acceptance_rate"] >= 0.99, s["acceptance_rate"]


def test_sequence_stream_of_the_first_token_is_the_baseline_one():
    """The first token after the prefill is the same draw in speculation and target only (the
    same stream state, the same row), so with one seed and index the two agree on it."""
    engine = Engine(config(method="draft_model", draft_layers=3))
    for index in range(20):
        spec = engine.run(TEXT, prompt_index=index).tokens[0]
        base = engine.run(TEXT, prompt_index=index, baseline=True).tokens[0]
        assert spec == base, index
    rng = SequenceRng(SEED, 0)
    with torch.inference_mode():
        p = target_probs(_logits(engine.target.model, TEXT), engine.config.sampling)
    assert engine.run(TEXT, prompt_index=0).tokens[0] == sampling.sample_token(p, rng)
