"""Run-to-run comparison of two benchmark folders (BASE, then NEW): what got slower, what drafts worse.

Only (configuration, prompt) pairs present in both folders are compared (a configuration includes
the target it ran on, backend and weight format: a sweep of several pairs each target's rows with the
same target's, and an old one-backend log's rows with that backend's); a prompt is the same
prompt when its category, question id and text agree (texts from meta.json; without them, the
question id or the prompt's position). Everything skipped is said in the notes.

Per configuration x category, and overall per configuration:

- tau (mean accepted tokens per target call, emitted / verification calls over the pairs). With a
  fixed draft shape it is exact under greedy decoding: any drop is a regression, any rise is
  reported. With --tree_budget auto the budget is tuned from measured costs, so tau moves with
  timing, and a lower tau can be the tuner's intent (fewer nodes, less time per call): those rows
  get the same noise test as speedup, on per-prompt log(tau_new / tau_base), and a change beyond it
  is reported, not flagged; their speedup is what the tuner optimizes, and it is tested. Rows
  sampled with rejection verification (--temperature > 0, --verify rejection) get the same
  treatment: their tau is one sample of a random quantity (any change to what a run draws moves
  it), so it is tested for noise and reported, not flagged; their speedup is tested.
- speedup over target-only: per prompt, the suite's target-only time over the method's, both from
  the same folder (measured interleaved, so machine drift cancels). The two runs are paired prompt
  by prompt: d_i = log(speedup_new_i / speedup_base_i), which removes the large prompt-to-prompt
  spread (a repetitive prompt is fast for prompt lookup in both runs) and leaves the run-to-run
  noise plus any real change.

The noise band is estimated from those paired values themselves (nothing is re-run). For a row
(configuration x category) with n prompts, mean m and standard deviation s of its d_i:

    band = max(t(LEVEL, df) * S / sqrt(n), FLOOR_LOG)        regression: m < -band
    S, df = s, n - 1, or the pooled sd of every configuration's d_i in that category (and its
            degrees of freedom, the sum of n - 1), whichever sd is larger

LEVEL is the normal's P(Z < Z_SCORE) (Z_SCORE = 3: 0.135% false alarms per row under normal noise).
Two things make a band from a handful of prompts too narrow, and both showed on the tiny test
model, whose 16-token runs on a shared 2-core CPU vary 10x with other processes' load:

- few degrees of freedom: the sd comes from the same few prompts, so Student's t replaces z. With
  3 prompts z = 3 flags ~5% of honest rows; t(0.99865, 2) = 19.2 keeps it at 0.135%.
- a lucky sd: timing noise is a mixture (quiet and contended stretches), so one configuration's
  three d_i can agree to 2% while the others' scatter by 100%, and a 50% shift of an honest re-run
  then looks certain. The per-prompt noise comes from the same machine and prompts for every
  configuration, so no row may claim less of it than the pooled estimate: S is never below it.

A configuration noisier than the pool keeps its own s. FLOOR (3%) stays for shifts common to a
whole run that interleaving cannot cancel and no spread reveals (a run compared with itself has
s = 0). With one prompt and no pool (one prompt per category everywhere) the row is reported, not
tested. Two 48-prompt Spec-Bench sweeps of one command on the CPU (8 per category, ~10% per-prompt noise)
get bands of 9-21% per category and 5-8% overall; the 3-prompt test runs get 40% and more.

Peers (transformers' hf_greedy and hf_prompt_lookup, and any other Configuration.is_peer) are
compared too, but read the other way: their code is not ours, so their speedup (our target-only
time / theirs) measures our target-only decoding against a fixed yardstick. A peer's speedup
*rising* beyond the band means our target-only got slower, which the suite's own speedups cannot
show (they look better, or, when the shared forward pass slowed, unchanged); it is flagged as a
regression unless a version in meta.json (torch, transformers, ...; llama-cpp-python for llama.cpp
peers) changed between the runs. A peer's fall (our target-only got faster) is reported.
Target-only itself has speedup and tau 1 by definition and gets no row.

Also flagged: a configuration of BASE missing from NEW, and a NEW run whose output no longer
matches its reference (it did in BASE); a mismatch already in BASE is reported, not flagged, and so
is one where the configuration is not required to match (Configuration.must_match false, e.g. a
peer running other weights). Rejection-sampled rows are expected to differ from their target-only
sample (distribution-equal, not token-equal): how many do is reported, never flagged. Coupled
rows, like greedy ones, must equal target-only token for token.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
import types
import typing
from collections import defaultdict
from pathlib import Path

from models.benchmark.configurations import AUTO, TARGET
from models.benchmark.runlog import DONE, META, RUNS, RunLog, RunRecord, read_run_log
from models.benchmark.summary import OVERALL, REJECTION, categories_in_order, configuration_of
from models.common.errors import UserError
from models.common.metrics import Iteration

Z_SCORE = 3.0  # one-sided: P(Z > 3) = 0.135%, the false-alarm rate per row under normal noise
LEVEL = statistics.NormalDist().cdf(Z_SCORE)
FLOOR = 0.03  # the smallest change (3%) ever flagged, however closely the prompts agree
FLOOR_LOG = -math.log(1 - FLOOR)  # the floor as a log-change: a 3% drop exactly

# verdicts; the upper-case ones are regressions (exit status 1)
SLOWER, TAU_DOWN, MISMATCH, MISSING, TARGET_SLOWER = (
    "SLOWER", "TAU DOWN", "MISMATCH", "MISSING", "TARGET-ONLY SLOWER")
FASTER, TAU_UP, OLD_MISMATCH, TARGET_FASTER, FEW = (
    "faster", "tau up", "mismatch (as in base)", "target-only faster", "too few prompts to test")
AUTO_TAU_DOWN = "tau down (auto budget)"
SAMPLED_TAU_DOWN = "tau down (rejection sampling)"
SAMPLED_DIFFERS = "differs (rejection: not token-equal, expected)"
UNREQUIRED = "differs (not required to match)"
FAILING = (SLOWER, TAU_DOWN, MISMATCH, MISSING, TARGET_SLOWER)


# --- statistics -------------------------------------------------------------------------------

def _betainc(a: float, b: float, x: float) -> float:
    """Regularized incomplete beta I_x(a, b) by its continued fraction (Lentz), for Student's t
    without scipy (not a dependency of the suite)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    if x > (a + 1) / (a + b + 2):  # the fraction converges fast on this side only
        return 1.0 - _betainc(b, a, 1.0 - x)
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)) / a
    tiny = 1e-300
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    f = d
    for m in range(1, 500):
        for num in (m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
                    -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))):
            d = 1.0 + num * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + num / c
            c = c if abs(c) > tiny else tiny
            f *= c * d
        if abs(c * d - 1.0) < 1e-14:
            break
    return front * f


def t_cdf(t: float, df: int) -> float:
    tail = 0.5 * _betainc(df / 2, 0.5, df / (df + t * t))
    return 1.0 - tail if t > 0 else tail


def t_quantile(p: float, df: int) -> float:
    """Student's t quantile for p > 0.5, by bisection on the CDF (monotone, so it cannot miss)."""
    lo, hi = 0.0, 1.0
    while t_cdf(hi, df) < p:
        lo, hi = hi, hi * 2
    for _ in range(200):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if t_cdf(mid, df) < p else (lo, mid)
        if hi - lo < 1e-12 * hi:
            break
    return (lo + hi) / 2


@dataclasses.dataclass
class Change:
    """Paired per-prompt log-changes (new over base) and the band their mean must leave to count."""

    logs: list[float]  # d_i = log(new_i / base_i), one per prompt
    sd: float | None = None  # the per-prompt sd the band used (the row's own, or the pool's)
    df: int = 0  # its degrees of freedom
    pooled: bool = False  # True: the pool's sd, larger than the row's own
    band_log: float | None = None  # None: nothing to estimate the noise from

    @property
    def n(self) -> int:
        return len(self.logs)

    @property
    def mean_log(self) -> float:
        return statistics.fmean(self.logs)

    @property
    def own_var(self) -> float | None:
        return statistics.variance(self.logs) if self.n > 1 else None

    @property
    def percent(self) -> float:
        return 100 * math.expm1(self.mean_log)

    @property
    def drop(self) -> bool:
        return self.band_log is not None and self.mean_log < -self.band_log

    @property
    def rise(self) -> bool:
        return self.band_log is not None and self.mean_log > self.band_log

    def band_percent(self, rising: bool = False) -> float | None:
        """The band as the percentage change that crosses it (downwards, or upwards for a peer)."""
        if self.band_log is None:
            return None
        return 100 * (math.expm1(self.band_log) if rising else -math.expm1(-self.band_log))


def pooled_variance(changes: list[Change]) -> tuple[float, int]:
    """The per-prompt variance of d_i pooled over rows (each about its own mean), and its df."""
    tested = [c for c in changes if c.n > 1]
    df = sum(c.n - 1 for c in tested)
    return (sum((c.n - 1) * c.own_var for c in tested) / df if df else 0.0), df


def set_band(change: Change, pool: tuple[float, int] = (0.0, 0)) -> Change:
    """band = max(t(LEVEL, df) * S / sqrt(n), FLOOR_LOG), S the larger of the row's sd and the pool's."""
    pool_var, pool_df = pool
    own = change.own_var
    if own is None and not pool_df:
        return change
    change.pooled = own is None or (pool_df > 0 and pool_var > own)
    var, change.df = (pool_var, pool_df) if change.pooled else (own, change.n - 1)
    change.sd = math.sqrt(var)
    change.band_log = max(t_quantile(LEVEL, change.df) * change.sd / math.sqrt(change.n), FLOOR_LOG)
    return change


def log_change(ratios: list[float], pool: tuple[float, int] = (0.0, 0)) -> Change:
    """The noise test on paired ratios new_i / base_i (see the module docstring)."""
    return set_band(Change([math.log(r) for r in ratios]), pool)


# --- reading and pairing the two runs ---------------------------------------------------------

@dataclasses.dataclass
class Measured:
    """What the comparison needs of one run: its speedup (None for target-only, or without a
    target-only run of that prompt and length) and its verification counts (None for peers)."""

    record: RunRecord
    speedup: float | None
    emitted: int | None
    calls: int | None


def _positive(value: object, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0 or not math.isfinite(value):
        raise ValueError(f"{what} must be a positive number of seconds, got {value!r}")
    return float(value)


def _counts(record: RunRecord) -> tuple[int | None, int | None]:
    if record.iterations is None:
        return None, None
    if not isinstance(record.iterations, list) or not all(isinstance(it, dict) for it in record.iterations):
        raise ValueError("iterations must be a list of objects")
    emitted = [it["emitted"] for it in record.iterations]
    if not all(isinstance(e, int) and not isinstance(e, bool) and e >= 0 for e in emitted):
        raise ValueError("each iteration's emitted must be a count")
    return sum(emitted), len(emitted)


def measure(log: RunLog) -> dict[tuple[str, int], Measured]:
    """(config_id, prompt_index) -> Measured; a record with unusable numbers is refused in one line."""
    targets = {(r.config_id, r.prompt_index): r for r in log.records if r.method == TARGET}
    out = {}
    for r in log.records:
        try:
            seconds = _positive(r.total_s, "total_s")
            reference = targets.get((configuration_of(r).baseline_id, r.prompt_index))
            speedup = None
            if r.method != TARGET and reference is not None:
                speedup = _positive(reference.total_s, "target-only total_s") / seconds
            out[(r.config_id, r.prompt_index)] = Measured(r, speedup, *_counts(r))
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            detail = f"missing {exc}" if isinstance(exc, KeyError) else str(exc)
            raise UserError(f"{log.folder / RUNS}: {r.config_id!s} prompt {r.prompt_index!s}: {detail}; "
                            "give a run log written by scripts/benchmark.py") from None
    return out


def load_run(folder: str | Path, which: str) -> RunLog:
    """read_run_log, plus the one-line errors it leaves to Python (binary junk, a meta.json that is
    not an object, a field of the wrong type, named with its line): what compare_runs and the
    report read is checked here once. `which` names the folder in messages (BASE, NEW, ...)."""
    try:
        log = read_run_log(folder)
    except UserError:
        raise
    except UnicodeDecodeError:
        raise UserError(f"{which} {str(folder)!r}: not UTF-8 text; "
                        "give a folder written by scripts/benchmark.py") from None
    except (AttributeError, ValueError) as exc:
        raise UserError(f"{which} {str(folder)!r}: malformed run log ({exc})") from None
    if not isinstance(log.meta, dict) or not isinstance(log.done, dict):
        raise UserError(f"{which} {log.folder}: meta.json and done.json must hold JSON objects")
    _check_object(log.folder / META, log.meta, META_TYPES)
    _check_object(log.folder / DONE, log.done, DONE_TYPES)
    for i, p in enumerate(log.meta.get("prompts", [])):
        _check_object(log.folder / META, p, META_PROMPT_TYPES, f"prompts[{i}].", required=("index",))
    for i, c in enumerate(log.meta.get("configurations", [])):
        _check_object(log.folder / META, c, META_CONFIGURATION_TYPES, f"configurations[{i}].", required=("id", "label"))
    lines = _line_numbers(log.folder / RUNS, len(log.records))
    for line, record in zip(lines, log.records, strict=True):
        _check_record(f"{log.folder / RUNS} {line}", record)
    return log


RECORD_TYPES = typing.get_type_hints(RunRecord)  # every field, as scripts/benchmark.py writes it
ITERATION_TYPES = typing.get_type_hints(Iteration)
ITERATION_REQUIRED = tuple(f.name for f in dataclasses.fields(Iteration) if f.default is dataclasses.MISSING)
# what the report reads from meta.json and done.json (each optional, of this type when present)
META_TYPES = {"prompts": list[dict], "configurations": list[dict], "versions": dict, "skipped_prompts": int,
              "load_average_at_start": list[float] | None, "not_run": list[dict]}
DONE_TYPES = {"elapsed_s": float, "load_average_at_end": list[float] | None}
META_PROMPT_TYPES = {"index": int, "text": str, "question_id": int | str | None, "prompt_tokens": int}
META_CONFIGURATION_TYPES = {"id": str, "label": str}
JSON_NAMES = {int: "integer", float: "number", str: "string", bool: "true or false", dict: "object",
              type(None): "null"}
SHOWN = 60  # characters of a bad value shown in the message


def _fits(value: object, hint: object) -> bool:
    """Whether a JSON value has an annotation's type: an int is no bool, a float may be an int,
    list[X] checks its items."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_fits(value, h) for h in args)
    if hint in (int, float):
        return isinstance(value, int if hint is int else int | float) and not isinstance(value, bool)
    if origin is list:
        return isinstance(value, list) and all(_fits(v, args[0]) for v in value)
    return isinstance(value, origin or hint)


def _type_text(hint: object) -> str:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_text(h) for h in args)
    if origin is list:
        return f"list of {_type_text(args[0])}s"
    return JSON_NAMES.get(hint, getattr(hint, "__name__", str(hint)))


def _shown(value: object) -> str:
    text = repr(value)
    return text if len(text) <= SHOWN else text[: SHOWN - 3] + "..."


def _field_error(where: str, name: str, value: object, hint: object) -> UserError:
    return UserError(f"{where}: {name} is {_shown(value)} (expected: {_type_text(hint)}); "
                     "give a folder written by scripts/benchmark.py")


def _check_object(where: Path | str, data: object, kinds: dict, prefix: str = "",
                  required: tuple[str, ...] = ()) -> None:
    """A JSON object's fields against their types; `required` must be there."""
    if not isinstance(data, dict):
        raise UserError(f"{where}: {prefix.rstrip('.')} is {_shown(data)} (expected: object); "
                        "give a folder written by scripts/benchmark.py")
    for name in required:
        if name not in data:
            raise UserError(f"{where}: {prefix}{name} is missing; give a folder written by scripts/benchmark.py")
    for name, hint in kinds.items():
        if name in data and not _fits(data[name], hint):
            raise _field_error(str(where), prefix + name, data[name], hint)


def _check_record(where: str, record: RunRecord) -> None:
    """Every field of a run (and of each of its iterations) of the type scripts/benchmark.py writes."""
    for name, hint in RECORD_TYPES.items():
        if not _fits(getattr(record, name), hint):
            raise _field_error(where, name, getattr(record, name), hint)
    if len(record.token_strings) != len(record.output_ids):
        raise UserError(f"{where}: token_strings holds {len(record.token_strings)} strings for "
                        f"{len(record.output_ids)} output_ids; give a folder written by scripts/benchmark.py")
    for i, it in enumerate(record.iterations or []):
        unknown = sorted(set(it) - set(ITERATION_TYPES))
        missing = [name for name in ITERATION_REQUIRED if name not in it]
        if unknown or missing:
            what = f"has unknown field(s) {', '.join(unknown)}" if unknown else f"lacks {', '.join(map(repr, missing))}"
            raise UserError(f"{where}: iterations[{i}] {what}; give a folder written by scripts/benchmark.py")
        _check_object(where, it, ITERATION_TYPES, f"iterations[{i}].")


def _line_numbers(path: Path, n_records: int) -> list[str]:
    """'line N' of each record (read_run_log skips blank lines); 'run N' if the count disagrees."""
    lines = path.read_text(encoding="utf-8").split("\n")
    numbers = [f"line {i}" for i, line in enumerate(lines, start=1) if line.strip()]
    return numbers if len(numbers) == n_records else [f"run {i}" for i in range(1, n_records + 1)]


def prompt_keys(log: RunLog, with_text: bool) -> dict[int, tuple]:
    """prompt_index -> what makes two runs' prompts the same prompt (category, question id, text);
    a repeated prompt gets its occurrence number so the pairs stay one to one."""
    texts = _meta_texts(log)
    first = {}
    for r in sorted(log.records, key=lambda r: r.prompt_index):
        first.setdefault(r.prompt_index, r)
    keys, seen = {}, defaultdict(int)
    for index, r in first.items():
        if with_text:
            key = (r.category, r.question_id, texts.get(index))
        else:
            key = (r.category, r.question_id if r.question_id is not None else f"#{index}")
        seen[key] += 1
        keys[index] = (*key, seen[key])
    return keys


def _meta_texts(log: RunLog) -> dict[int, str]:
    """prompt index -> text, from meta.json (absent in hand-made or very old logs)."""
    prompts = log.meta.get("prompts")
    return {p["index"]: p["text"] for p in prompts if isinstance(p, dict) and isinstance(p.get("index"), int)
            and isinstance(p.get("text"), str)} if isinstance(prompts, list) else {}


def _has_texts(log: RunLog) -> bool:
    return {r.prompt_index for r in log.records} <= set(_meta_texts(log))


@dataclasses.dataclass
class Pair:
    config_id: str
    category: str
    key: tuple
    base: Measured
    new: Measured


def pair_runs(base: RunLog, new: RunLog) -> tuple[dict[str, list[Pair]], dict]:
    """The (configuration, prompt) runs present in both logs, by configuration in BASE's order,
    and what was left out (counts and names, for the notes)."""
    with_text = _has_texts(base) and _has_texts(new)
    base_keys, new_keys = prompt_keys(base, with_text), prompt_keys(new, with_text)
    common = set(base_keys.values()) & set(new_keys.values())
    if not common:
        raise UserError(f"{base.folder} and {new.folder} share no prompt (category, question id and text); "
                        "give two runs of the same prompt set")
    base_m, new_m = measure(base), measure(new)
    new_by_key = {(cid, new_keys[i]): m for (cid, i), m in new_m.items()}
    base_configs = list(dict.fromkeys(r.config_id for r in base.records))
    new_configs = {cid for cid, _ in new_by_key}
    if not set(base_configs) & new_configs:
        raise UserError(f"{base.folder} and {new.folder} share no configuration; give two runs of the same sweep")
    pairs: dict[str, list[Pair]] = defaultdict(list)
    for (cid, i), m in sorted(base_m.items(), key=lambda item: item[0][1]):
        other = new_by_key.get((cid, base_keys[i]))
        if other is not None:
            pairs[cid].append(Pair(cid, m.record.category, base_keys[i], m, other))
    skipped = {
        "prompts_only_in_base": len(set(base_keys.values()) - common),
        "prompts_only_in_new": len(set(new_keys.values()) - common),
        "missing_in_new": [c for c in base_configs if c not in new_configs],
        "only_in_new": list(dict.fromkeys(r.config_id for r in new.records if r.config_id not in set(base_configs))),
    }
    return {c: pairs[c] for c in base_configs if c in pairs}, skipped


# --- the comparison ---------------------------------------------------------------------------

@dataclasses.dataclass
class Row:
    config_id: str
    label: str
    category: str
    peer: bool
    must_match: bool  # False where a different output is expected, not a bug
    prompts: int
    tau_base: float | None
    tau_new: float | None
    tau_exact: int  # fixed shapes: -1, 0, 1 as the summed counts' tau fell, held or rose
    tau_change: Change | None  # --tree_budget auto (tau moves with timing): the noise test on per-prompt tau
    speedup_base: float | None  # summed target-only time / summed method time over the pairs
    speedup_new: float | None
    speedup_change: Change | None
    new_mismatches: int  # pairs matching target-only in BASE and not in NEW
    old_mismatches: int  # pairs differing in both runs
    verdicts: list[str] = dataclasses.field(default_factory=list)
    auto: bool = False  # --tree_budget auto: tau moves with timing
    rejection: bool = False  # sampled, rejection verification: tau is a sample, output not token-equal

    @property
    def regression(self) -> bool:
        return any(_failing(v) for v in self.verdicts)


def _tau(measured: list[Measured]) -> float | None:
    calls = sum(m.calls or 0 for m in measured)
    return sum(m.emitted or 0 for m in measured) / calls if calls else None


def _summed_speedup(measured: list[Measured]) -> float | None:
    """summary.py's speedup on these prompts: target-only's summed time over the method's."""
    if not measured or any(m.speedup is None for m in measured):
        return None
    return sum(m.speedup * m.record.total_s for m in measured) / sum(m.record.total_s for m in measured)


def _exact_tau_change(pairs: list[Pair]) -> int:
    """-1, 0 or 1: tau from the summed integer counts, compared without rounding."""
    counted = [p for p in pairs if p.base.calls and p.new.calls]
    emitted_b, calls_b = sum(p.base.emitted for p in counted), sum(p.base.calls for p in counted)
    emitted_n, calls_n = sum(p.new.emitted for p in counted), sum(p.new.calls for p in counted)
    return (emitted_n * calls_b > emitted_b * calls_n) - (emitted_n * calls_b < emitted_b * calls_n)


def compare_row(config_id: str, label: str, category: str, pairs: list[Pair]) -> Row:
    """A row's numbers and unbanded changes; compare() sets the bands (they pool over rows)."""
    record = pairs[0].base.record
    config = configuration_of(record)
    auto = record.tree_budget == AUTO
    rejection = config.verify == REJECTION
    noisy = auto or rejection  # tau is not exact: the noise test, reported, not flagged
    counted = [p for p in pairs if p.base.emitted and p.new.emitted]  # emitted > 0: calls > 0 too
    tau_change = None
    if noisy and counted:
        tau_change = Change([math.log((p.new.emitted / p.new.calls) / (p.base.emitted / p.base.calls))
                             for p in counted])
    timed = [p for p in pairs if p.base.speedup is not None and p.new.speedup is not None]
    return Row(
        config_id=config_id, label=label, category=category, peer=config.is_peer,
        must_match=getattr(config, "must_match", True),
        prompts=len(pairs), tau_base=_tau([p.base for p in pairs]), tau_new=_tau([p.new for p in pairs]),
        tau_exact=0 if noisy else _exact_tau_change(pairs), tau_change=tau_change,
        speedup_base=_summed_speedup([p.base for p in timed]), speedup_new=_summed_speedup([p.new for p in timed]),
        speedup_change=Change([math.log(p.new.speedup / p.base.speedup) for p in timed]) if timed else None,
        new_mismatches=sum(p.base.record.matches_target_only and not p.new.record.matches_target_only
                           for p in pairs),
        old_mismatches=sum(not p.base.record.matches_target_only and not p.new.record.matches_target_only
                           for p in pairs),
        auto=auto, rejection=rejection,
    )


def _speedup_verdicts(change: Change | None, peer: bool, versions_changed: str) -> list[str]:
    if change is None:
        return []
    if change.band_log is None:
        return [FEW]
    if peer:  # the peer's speedup is our target-only against transformers (module docstring)
        if change.rise:
            return [f"peer faster or ours slower ({versions_changed})"] if versions_changed else [TARGET_SLOWER]
        return [TARGET_FASTER] if change.drop else []
    return [SLOWER] if change.drop else [FASTER] if change.rise else []


def _tau_verdicts(row: Row) -> list[str]:
    if row.tau_change is not None:  # auto budget, rejection sampling: reported, not flagged (module docstring)
        down = AUTO_TAU_DOWN if row.auto else SAMPLED_TAU_DOWN
        return [down] if row.tau_change.drop else [TAU_UP] if row.tau_change.rise else []
    return [TAU_DOWN] if row.tau_exact < 0 else [TAU_UP] if row.tau_exact > 0 else []


def verdicts(row: Row, versions_changed: str) -> list[str]:
    found = _speedup_verdicts(row.speedup_change, row.peer, versions_changed) + _tau_verdicts(row)
    if row.rejection:  # differing from target-only's sample is by design: counted, never flagged
        differ = row.new_mismatches + row.old_mismatches
        return found + ([f"{SAMPLED_DIFFERS} {differ}/{row.prompts}"] if differ else []) or ["ok"]
    if row.new_mismatches:
        found.append(f"{MISMATCH if row.must_match else UNREQUIRED} {row.new_mismatches}/{row.prompts}")
    found += [f"{OLD_MISMATCH} {row.old_mismatches}/{row.prompts}"] if row.old_mismatches else []
    return found or ["ok"]


def set_bands(rows: list[Row]) -> None:
    """Speedup bands pool the per-prompt noise of every configuration in the same category;
    auto-budget tau bands use each row's own spread (a different quantity, in a few rows)."""
    by_category: dict[str, list[Change]] = defaultdict(list)
    for row in rows:
        if row.speedup_change is not None:
            by_category[row.category].append(row.speedup_change)
    for changes in by_category.values():
        pool = pooled_variance(changes)
        for change in changes:
            set_band(change, pool)
    for row in rows:
        if row.tau_change is not None:
            set_band(row.tau_change)


@dataclasses.dataclass
class Comparison:
    base: str
    new: str
    rows: list[Row]
    missing: list[str]  # configurations of BASE that NEW lacks (regressions)
    only_in_new: list[str]
    notes: list[str]

    @property
    def regressions(self) -> list[str]:
        found = [f"{r.label} / {r.category}: {', '.join(v for v in r.verdicts if _failing(v))}"
                 for r in self.rows if r.regression]
        return found + [f"{c}: {MISSING} from NEW" for c in self.missing]


def _failing(verdict: str) -> bool:
    return any(verdict == f or verdict.startswith(f + " ") for f in FAILING)


def _versions(meta: dict) -> dict:
    """The versions a peer's timing depends on: meta.json's "versions", and llama-cpp-python's."""
    found = dict(meta.get("versions")) if isinstance(meta.get("versions"), dict) else {}
    llama = meta.get("llama_cpp")
    if isinstance(llama, dict) and "llama_cpp_python" in llama:
        found["llama_cpp_python"] = llama["llama_cpp_python"]
    return found


def _versions_changed(base: RunLog, new: RunLog) -> str:
    """'transformers 5.0 -> 5.1' when the peers' yardstick moved between the runs; '' otherwise."""
    vb, vn = _versions(base.meta), _versions(new.meta)
    return ", ".join(f"{k} {vb.get(k)} -> {vn.get(k)}" for k in dict.fromkeys([*vb, *vn]) if vb.get(k) != vn.get(k))


def _setup_notes(base: RunLog, new: RunLog) -> list[str]:
    notes = []
    for key in ("model", "device", "cpu"):
        if base.meta.get(key) != new.meta.get(key):
            notes.append(f"the runs differ in {key}: {base.meta.get(key)!r} -> {new.meta.get(key)!r}")
    options_b, options_n = (log.meta.get("options") if isinstance(log.meta.get("options"), dict) else {}
                            for log in (base, new))
    for key, default in (("top_k", 0), ("top_p", 1.0), ("seed", 0)):  # sampled rows draw otherwise
        was, now = options_b.get(key, default), options_n.get(key, default)  # older logs: the default
        if was != now:
            notes.append(f"the runs sample with different --{key}: {was!r} -> {now!r}")
    moved = _versions_changed(base, new)
    if moved:
        notes.append(f"versions changed ({moved}): peer rows are reported, not tested")
    return notes


def _target_output_notes(pairs: dict[str, list[Pair]]) -> list[str]:
    """Target-only is the reference every match is judged by; say if its own output changed."""
    changed = sum(p.base.record.output_ids != p.new.record.output_ids
                  for ps in pairs.values() for p in ps if p.base.record.method == TARGET)
    return [f"target-only's output changed between the runs on {changed} prompt(s)"] if changed else []


def compare(base: RunLog, new: RunLog) -> Comparison:
    """Every configuration of BASE (target-only aside) against NEW, per category and overall."""
    pairs, skipped = pair_runs(base, new)
    records = [p.base.record for ps in pairs.values() for p in ps]
    categories = categories_in_order(records)
    several_lengths = len({r.max_generated_tokens for r in records}) > 1
    several_variants = len({configuration_of(r).variant for r in records}) > 1
    rows = []
    for config_id, config_pairs in pairs.items():
        record = config_pairs[0].base.record
        if record.method == TARGET:
            continue
        label = configuration_of(record).label(several_lengths, several_variants)
        if len(categories) > 1:
            for category in categories:
                selected = [p for p in config_pairs if p.category == category]
                if selected:
                    rows.append(compare_row(config_id, label, category, selected))
        rows.append(compare_row(config_id, label, OVERALL, config_pairs))
    set_bands(rows)
    versions_changed = _versions_changed(base, new)
    for row in rows:
        row.verdicts = verdicts(row, versions_changed)
    notes = _setup_notes(base, new) + _target_output_notes(pairs)
    if skipped["prompts_only_in_base"] or skipped["prompts_only_in_new"]:
        notes.append(f"skipped prompts not in both runs: {skipped['prompts_only_in_base']} only in BASE, "
                     f"{skipped['prompts_only_in_new']} only in NEW")
    if skipped["only_in_new"]:
        notes.append(f"configurations only in NEW (not compared): {', '.join(skipped['only_in_new'])}")
    untimed = [r for r in rows if r.speedup_change is None and r.category == OVERALL]
    if untimed:
        notes.append(f"no target-only run to time against for: {', '.join(r.config_id for r in untimed)}")
    return Comparison(str(base.folder), str(new.folder), rows, skipped["missing_in_new"], skipped["only_in_new"],
                      notes)


# --- output -----------------------------------------------------------------------------------

def _num(value: float | None, spec: str, suffix: str = "") -> str:
    return "-" if value is None else f"{value:{spec}}{suffix}"


def _band_text(percent: float | None) -> str:
    """A band past 999% (a noisy peer's rise on three prompts) says only that it is huge."""
    return _num(percent, ".1f", "%") if percent is None or percent < 999.5 else ">999%"


def table(comparison: Comparison) -> str:
    """Aligned plain-text table: one line per configuration x category, then the missing ones."""
    header = ["configuration", "category", "prompts", "tau base -> new", "speedup base -> new", "change",
              "band", "verdict"]
    body = []
    for r in comparison.rows:
        change = r.speedup_change
        body.append([
            r.label, r.category, str(r.prompts),
            f"{_num(r.tau_base, '.3f')} -> {_num(r.tau_new, '.3f')}" if r.tau_base is not None else "-",
            f"{_num(r.speedup_base, '.2f', 'x')} -> {_num(r.speedup_new, '.2f', 'x')}",
            _num(change.percent if change else None, '+.1f', '%'),
            _band_text(change.band_percent(rising=r.peer) if change else None),
            ", ".join(r.verdicts),
        ])
    body += [[c, "-", "-", "-", "-", "-", "-", f"{MISSING} from NEW"] for c in comparison.missing]
    widths = [max(len(line[i]) for line in [header] + body) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip()
             for line in [header, ["-" * w for w in widths]] + body]
    return "\n".join(lines) + "\n"


def report(comparison: Comparison) -> str:
    """The table with what was compared, the notes and the verdict, for stdout."""
    lines = [f"BASE {comparison.base}", f"NEW  {comparison.new}",
             f"change: geometric mean of per-prompt speedup ratios; band: max(t({LEVEL:.5f}, df) x sd / sqrt(n), "
             f"{FLOOR:.0%}), sd the larger of the row's and the category's pooled per-prompt sd",
             "", table(comparison)]
    lines += [f"note: {n}" for n in comparison.notes]
    found = comparison.regressions
    lines.append(f"{len(found)} regression(s): " + "; ".join(found) if found else "no regression beyond the band")
    return "\n".join(lines) + "\n"


def _change_json(change: Change | None, rising: bool = False) -> dict | None:
    if change is None:
        return None
    return {"prompts": change.n, "mean_log_change": change.mean_log, "change_percent": change.percent,
            "sd_log": change.sd, "df": change.df, "sd_pooled": change.pooled, "band_log": change.band_log,
            "band_percent": change.band_percent(rising)}


def to_json(comparison: Comparison) -> dict:
    rows = [{
        "config_id": r.config_id, "label": r.label, "category": r.category, "peer": r.peer, "prompts": r.prompts,
        "tau_base": r.tau_base, "tau_new": r.tau_new, "tau_change": _change_json(r.tau_change),
        "speedup_base": r.speedup_base, "speedup_new": r.speedup_new,
        "speedup_change": _change_json(r.speedup_change, rising=r.peer),
        "new_mismatches": r.new_mismatches, "old_mismatches": r.old_mismatches,
        "verdicts": r.verdicts, "regression": r.regression,
    } for r in comparison.rows]
    return {
        "base": comparison.base, "new": comparison.new,
        "statistics": {"z_score": Z_SCORE, "level": LEVEL, "floor": FLOOR,
                       "band": "max(t(level, df) * max(own sd, pooled sd of the category) / sqrt(n), -log(1 - floor))"},
        "rows": rows, "missing_in_new": comparison.missing, "only_in_new": comparison.only_in_new,
        "notes": comparison.notes, "regressions": comparison.regressions,
    }
