"""Per configuration x category numbers from the run log, and the tables that show them.

The metric definitions are models.common.metrics.summarize's; this module only groups runs and
adds the one number a single run cannot give: speedup = the target-only runs' summed wall time
over this configuration's, on the same prompts, in the same sweep (interleaved, so drift hits
both alike). transformers and llama.cpp peers expose no iterations, so their acceptance columns
stay empty. `matches_target_only` counts prompts whose output equals the row's reference
(`compared_with`): target-only, except llama.cpp prompt lookup, compared with llama.cpp's own
greedy output (llama.cpp runs the GGUF's quantized weights, so llama.cpp greedy legitimately
differs from the suite's fp32 target-only; its count only shows by how much).

Each row also says how it decoded (temperature, verify: greedy, rejection or coupled); its speedup
and reference are target-only's at the same temperature and verify mode. Coupled output must
equal target-only's as greedy output must; rejection output is only distributed as it, so its
count is shown but a difference is no mismatch ("rejection: distribution-equal, not token-equal").

Every row carries its draft shape (tree_topk, tree_depth, tree_budget = nodes verified per call;
a chain of k is 1, k, k) and the tree counters: nodes drafted, mean nodes / depth / branching
per drafting call, verification calls, accepted draft tokens, bonus tokens (the target's own
token, one per call that emitted one: tokens = prompts + accepted + bonus) and, for multi-draft,
the calls whose accepted path ended on each proposer's branch.

A sweep of several backends (--backend torch,transformers) gives each row its backend; its speedup
and matches are against that backend's own target-only, and the tables get a backend column, rows
grouped by backend, each group with its own target-only row, and "not run" where a backend cannot
run a configuration (meta.json's not_run). The peers sit in the first backend's group. A sweep of
several weight formats (--weights fp32,gguf) is the same over its variants: each row has its format,
and the column and groups name the variant ("torch", "torch+gguf": a format other than the
backend's own is added).
"""

from __future__ import annotations

import csv
import dataclasses
import io
from collections import defaultdict

from models.benchmark.configurations import (
    GREEDY, LLAMA_GREEDY, LLAMA_PEERS, LLAMA_PROMPT_LOOKUP, PEERS, REJECTION, TARGET, Configuration,
    Variant, mode_text,
)
from models.benchmark.runlog import RunRecord, backend_of, backends_of
from models.common.metrics import SequenceStats, break_even_tau, summarize

OVERALL = "overall"
NOT_TOKEN_EQUAL = "rejection: distribution-equal, not token-equal"


@dataclasses.dataclass
class Row:
    config_id: str
    label: str
    method: str
    k: int
    tree_topk: int | None  # None where nothing is drafted
    tree_depth: int | None
    tree_budget: int | str | None  # nodes verified per target call ("auto": tuned); a chain of k: k
    max_generated_tokens: int
    temperature: float  # 0: greedy
    verify: str  # greedy, rejection or coupled
    category: str
    prompts: int
    generated_tokens: int
    seconds: float
    speedup: float | None  # None when the sweep has no target-only runs for these prompts
    mean_accepted_tokens: float | None
    acceptance_rate: float | None
    per_position_acceptance: list[float]  # by tree depth (a chain's depth is its position)
    tree_nodes: int | None  # draft nodes verified in all
    mean_tree_nodes: float | None  # per call that drafted
    mean_tree_depth: float | None
    mean_branching: float | None  # nodes / depth per call; 1 for a chain
    target_calls: int | None  # verification calls (target decode steps after the prefill)
    accepted_tokens: int | None
    bonus_tokens: int | None  # the target's own token (correction or bonus), one per call that emitted one
    accepted_by_source: dict[str, int]  # multi: calls whose accepted path ended on each proposer's branch
    decode_tokens_per_s: float | None
    e2e_tokens_per_s: float
    ttft_ms: float | None
    matches_target_only: int  # prompts whose output ids equal the reference's (compared_with)
    compared_with: str = TARGET  # the reference's method: target, or llama_cpp_greedy for llama.cpp prompt lookup
    backend: str = Variant().backend  # the target it ran on; speedup and matches are against its target-only
    weights: str = Variant().weights  # fp32 or gguf, as the backend resolved it
    # the tau at which this configuration would only break even: its mean iteration (draft +
    # verify) in its own target-only's decode steps, both from this sweep (metrics.break_even_tau)
    break_even_tau: float | None = None

    @property
    def variant(self) -> Variant:
        return Variant.of(vars(self))


def configuration_of(record: RunRecord) -> Configuration:
    """A record's configuration; records from before token trees have no shape: chains of k."""
    topk = record.tree_topk or 1
    budget = (record.tree_budget or 0) if topk > 1 else 0
    return Configuration(record.method, record.k, record.max_generated_tokens, topk, budget,
                         float(record.temperature or 0.0), record.verify or GREEDY,
                         Variant.of(vars(record)))


def categories_in_order(records: list[RunRecord]) -> list[str]:
    return list(dict.fromkeys(r.category for r in sorted(records, key=lambda r: r.prompt_index)))


def _bonus_tokens(stats: list[SequenceStats]) -> int:
    """Tokens the target chose itself in verification calls (emitted minus accepted drafts)."""
    return sum(it.emitted - it.accepted for s in stats for it in s.iterations)


def _peer_decode_rate(runs: list[RunRecord]) -> float | None:
    """A peer that told its time to the first token (llama.cpp): the tokens after the first over
    the time after it. None for one that did not (transformers)."""
    if not runs or any(r.ttft_s is None for r in runs):
        return None
    after = sum(r.total_s - r.ttft_s for r in runs)
    return sum(r.generated_tokens - 1 for r in runs) / after if after > 0 else None


def _peer_ttft_ms(runs: list[RunRecord]) -> float | None:
    if not runs or any(r.ttft_s is None for r in runs):
        return None
    return sum(r.ttft_s for r in runs) / len(runs) * 1e3


def _row(config: Configuration, label: str, category: str, runs: list[RunRecord], baseline: dict) -> Row:
    seconds = sum(r.total_s for r in runs)
    base = [baseline.get((config.baseline_id, r.prompt_index)) for r in runs]
    speedup = sum(b.total_s for b in base) / seconds if all(base) and seconds else None
    stats = [s for s in (r.stats() for r in runs) if s is not None]
    drafted = bool(stats) and config.method != TARGET
    m = summarize(stats) if stats else None
    base_stats = [s for s in (b.stats() for b in base if b is not None) if s is not None]
    even = break_even_tau(m, summarize(base_stats)) if drafted and len(base_stats) == len(stats) else None
    generated = sum(r.generated_tokens for r in runs)
    topk, depth, budget = config.shape or (None, None, None)
    return Row(
        config_id=config.id, label=label, method=config.method, k=config.k,
        tree_topk=topk, tree_depth=depth, tree_budget=budget,
        max_generated_tokens=config.max_generated_tokens, temperature=config.temperature, verify=config.verify,
        category=category, prompts=len(runs),
        generated_tokens=generated, seconds=seconds, speedup=speedup,
        mean_accepted_tokens=m["mean_accepted_tokens"] if m else None,
        acceptance_rate=m["acceptance_rate"] if drafted else None,
        per_position_acceptance=m["per_position_acceptance"] if drafted else [],
        tree_nodes=m["proposed_tokens"] if drafted else None,
        mean_tree_nodes=m["mean_tree_nodes"] if drafted else None,
        mean_tree_depth=m["mean_tree_depth"] if drafted else None,
        mean_branching=m["mean_branching"] if drafted else None,
        target_calls=m["target_calls"] if m else None,
        accepted_tokens=m["accepted_tokens"] if m else None,
        bonus_tokens=_bonus_tokens(stats) if m else None,
        accepted_by_source=m["accepted_by_source"] if m else {},
        decode_tokens_per_s=m["decode_tokens_per_s"] if m else _peer_decode_rate(runs),
        e2e_tokens_per_s=generated / seconds if seconds else 0.0,
        ttft_ms=m["ttft_s"] * 1e3 if m else _peer_ttft_ms(runs),
        matches_target_only=sum(r.matches_target_only for r in runs),
        compared_with=LLAMA_GREEDY if config.method == LLAMA_PROMPT_LOOKUP else TARGET,
        backend=config.variant.backend, weights=config.variant.weights, break_even_tau=even,
    )


def summary_rows(records: list[RunRecord]) -> list[Row]:
    """Per configuration (in sweep order, grouped by backend): one row per category in file order, then overall."""
    by_config: dict[Configuration, list[RunRecord]] = defaultdict(list)
    for r in records:
        by_config[configuration_of(r)].append(r)
    variants = list(dict.fromkeys(c.variant for c in by_config))
    by_config = dict(sorted(by_config.items(), key=lambda item: variants.index(item[0].variant)))  # stable
    baseline = {(r.config_id, r.prompt_index): r for r in records if r.method == TARGET}
    several_lengths = len({c.max_generated_tokens for c in by_config}) > 1
    categories = categories_in_order(records)
    rows = []
    for config, runs in by_config.items():
        label = config.label(several_lengths)
        for category in categories:
            selected = [r for r in runs if r.category == category]
            if selected:
                rows.append(_row(config, label, category, selected, baseline))
        rows.append(_row(config, label, OVERALL, runs, baseline))
    return rows


def _fmt(value, spec: str, empty: str = "") -> str:
    return empty if value is None else format(value, spec)


CSV_COLUMNS = [f.name for f in dataclasses.fields(Row)]


def to_csv(rows: list[Row]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for row in rows:
        values = dataclasses.asdict(row)
        values["per_position_acceptance"] = " ".join(f"{a:.4f}" for a in row.per_position_acceptance)
        values["accepted_by_source"] = by_source(row.accepted_by_source)
        writer.writerow(
            [f"{v:.6g}" if isinstance(v, float) else ("" if v is None else v) for v in values.values()]
        )
    return out.getvalue()


def by_source(counts: dict[str, int]) -> str:
    """'eagle:12 prompt_lookup:3' (multi-draft's accepted paths per proposer); '' otherwise."""
    return " ".join(f"{name}:{n}" for name, n in counts.items())


def shape_text(row: Row) -> str:
    """'chain 4' or 'tree 4x5/16' (topk x depth / nodes per call); '-' where nothing is drafted."""
    if row.tree_topk is None:
        return "-"
    if row.tree_topk == 1:
        return f"chain {row.tree_depth}"
    return f"tree {row.tree_topk}x{row.tree_depth}/{row.tree_budget}"


def several_variants(rows: list[Row]) -> bool:
    """Whether the rows ran on several targets (backends or weight formats): the tables then name each."""
    return len({r.variant for r in rows}) > 1


def shown_label(row: Row, several: bool) -> str:
    """The row's label, naming its variant where a sweep has several (plots and the report's legends);
    a peer runs once, on no target of ours."""
    return f"{row.label} on {row.variant.text}" if several and row.method not in PEERS else row.label


def matches_text(row: Row) -> str:
    """'3/3'; llama.cpp rows say what they were compared with, and (unless the target is llama.cpp
    itself) that greedy may differ."""
    text = f"{row.matches_target_only}/{row.prompts}"
    if row.verify == REJECTION and row.method != TARGET:  # target-only is its own reference
        return f"{text} ({NOT_TOKEN_EQUAL})"
    if row.method == LLAMA_PROMPT_LOOKUP:
        return f"{text} vs llama.cpp greedy"
    if row.method == LLAMA_GREEDY:
        return f"{text} ({'the same runtime' if row.backend == 'llama_cpp' else 'quantized weights: may differ'})"
    return text


def _markdown(header: list[str], body: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(cells) + " |" for cells in body]
    return "\n".join(lines) + "\n"


def spec_bench_table(rows: list[Row], not_run: list[dict] | None = None) -> str:
    """Spec-Bench's layout: a row per method, a column per category and overall; each cell is
    speedup over target-only, then mean accepted tokens (tau). Several variants (backends, weight formats): a
    backend column naming each, its rows together under its own target-only row, "not run" where it could not
    run one."""
    categories = list(dict.fromkeys(r.category for r in rows))
    several = several_variants(rows)
    cells: dict[tuple[str, str], dict[str, Row]] = defaultdict(dict)
    for r in rows:
        if r.method != TARGET or several:
            cells[r.variant.text, r.label][r.category] = r
    skipped = {(Variant.of(n).text, n.get("label")) for n in not_run or [] if several and isinstance(n, dict)}
    labels = list(dict.fromkeys([label for _, label in cells] + [label for _, label in skipped]))

    def cell(r: Row | None) -> str:
        if r is None:
            return ""
        return f"{_fmt(r.speedup, '.2f', '-')}x / {_fmt(r.mean_accepted_tokens, '.2f', '-')}"

    body = []
    for backend in dict.fromkeys(r.variant.text for r in rows):
        for label in labels:
            if (backend, label) in cells:
                body.append([backend, label] + [cell(cells[backend, label].get(c)) for c in categories])
            elif (backend, label) in skipped:
                body.append([backend, label] + ["not run"] * len(categories))
    if not several:
        return _markdown(["method"] + categories, [line[1:] for line in body])
    return _markdown(["backend", "method"] + categories, body)


def full_table(rows: list[Row]) -> str:
    several = several_variants(rows)
    header = ["configuration", "shape", "category", "prompts", "tokens", "seconds", "speedup", "mean accepted",
              "break-even tau", "acceptance", "nodes/call", "mean depth", "branching", "calls", "accepted", "bonus",
              "accepted by proposer", "decode tok/s", "e2e tok/s", "TTFT ms", "matches target-only"]
    body = [[
        r.label, shape_text(r), r.category, str(r.prompts), str(r.generated_tokens), f"{r.seconds:.2f}",
        _fmt(r.speedup, ".2f", "-"), _fmt(r.mean_accepted_tokens, ".2f", "-"), _fmt(r.break_even_tau, ".2f", "-"),
        _fmt(r.acceptance_rate, ".3f", "-"),
        _fmt(r.mean_tree_nodes, ".2f", "-"), _fmt(r.mean_tree_depth, ".2f", "-"), _fmt(r.mean_branching, ".2f", "-"),
        _fmt(r.target_calls, "d", "-"), _fmt(r.accepted_tokens, "d", "-"), _fmt(r.bonus_tokens, "d", "-"),
        by_source(r.accepted_by_source) or "-",
        _fmt(r.decode_tokens_per_s, ".1f", "-"), f"{r.e2e_tokens_per_s:.1f}", _fmt(r.ttft_ms, ".1f", "-"),
        matches_text(r),
    ] for r in rows]
    if several:
        return _markdown(["backend", *header], [[r.variant.text, *line] for r, line in zip(rows, body, strict=True)])
    return _markdown(header, body)


def backends_note(rows: list[Row], meta: dict) -> list[str]:
    """A paragraph for a sweep of several variants (backends, weight formats): what each row is held to, and
    what did not run."""
    if not several_variants(rows):
        return []
    names = list(dict.fromkeys(r.variant.text for r in rows))  # the peers' (the first one's) first
    text = (f"Targets {', '.join(names)}: each is loaded on its own and runs the same methods, interleaved in one "
            "loop; a row's speedup and matches are against its own target's target-only (its group's `target` "
            f"row). Peers, if any, are timed against {names[0]}'s.")
    skipped: dict[tuple, list[str]] = defaultdict(list)  # (variant, why) -> labels
    for n in meta.get("not_run") or []:
        if isinstance(n, dict):
            skipped[Variant.of(n).text, n.get("reason")].append(str(n.get("label")))
    for (backend, why), labels in skipped.items():
        text += f" Not run on {backend}: {', '.join(dict.fromkeys(labels))} ({why})."
    return [text, ""]


def llama_cpp_note(rows: list[Row], meta: dict) -> list[str]:
    """A paragraph on the llama.cpp rows, when there are any: what they run and what they are compared with."""
    if not any(r.method in LLAMA_PEERS for r in rows):
        return []
    info = meta.get("llama_cpp") or {}
    how = (f"llama-cpp-python {info.get('llama_cpp_python', '?')} on {info.get('gguf', 'the GGUF')} "
           f"({info.get('weights', 'quantized')} weights, {info.get('n_threads', '?')} threads)")
    if backend_of(meta) == "llama_cpp":
        return [
            f"`llama_cpp_*` rows: {how}, greedy, fed the same prompt token ids. This suite's target is llama.cpp "
            "too here (--backend llama_cpp), so llama.cpp greedy's matches count prompts equal to this suite's "
            "target-only on the same runtime, and llama.cpp prompt lookup's those equal to llama.cpp greedy.",
            "",
        ]
    return [
        f"`llama_cpp_*` rows: {how}, greedy, fed the same prompt token ids. They run the quantized weights, "
        "so their tokens legitimately differ from this suite's fp32 target-only: llama.cpp prompt lookup's "
        "matches count prompts equal to llama.cpp's own greedy output, llama.cpp greedy's those equal to "
        "target-only (how far the quantization drifts). Their speedup is still over the suite's target-only; "
        "compare llama.cpp prompt lookup with llama.cpp greedy by their tok/s.",
        "",
    ]


def sampling_note(rows: list[Row], meta: dict) -> list[str]:
    """A paragraph on the sampled rows, when there are any: how they sampled and what their
    'matches target-only' means."""
    sampled = list(dict.fromkeys((r.temperature, r.verify) for r in rows if r.verify != GREEDY))
    if not sampled:
        return []
    options = meta.get("options") or {}
    knobs = ", ".join(f"{name} {options[name]}" for name in ("top_k", "top_p", "seed") if name in options)
    text = (
        f"Sampled rows ({', '.join(f'`{mode_text(t, v)}`' for t, v in sampled)}{'; ' + knobs if knobs else ''}): "
        "prompt i draws from the random stream (seed, i), for each method and for its reference, target-only "
        "sampling at the same temperature and verify mode, which is also its speedup's denominator. "
        "`coupled` rows share target-only's noise and must equal its output token for token, as greedy rows must."
    )
    if any(v == REJECTION for _, v in sampled):
        text += (f" `rejection` rows ({NOT_TOKEN_EQUAL}): distributed exactly as target-only sampling, but drawing "
                 "other random numbers, so their output differs from target-only's by design: their matches are "
                 "only counted, never a mismatch, and their tau is a sample, not an exact number.")
    return [text, ""]


def backends_text(meta: dict) -> str:
    """'backend: torch', 'backends: torch, transformers', and '; weights: fp32, gguf' where --weights was given."""
    names = backends_of(meta)
    options = meta.get("options") if isinstance(meta.get("options"), dict) else {}
    weights = [w.strip() for w in str(options.get("weights") or "").split(",") if w.strip()]
    return f"backend{'s' if len(names) > 1 else ''}: {', '.join(names)}" + (
        f"; weights: {', '.join(weights)}" if weights else "")


def summary_markdown(rows: list[Row], meta: dict) -> str:
    """summary.md: how the numbers were made, the Spec-Bench table, then every row."""
    return "\n".join([
        "# Benchmark summary",
        "",
        f"Command: `{meta.get('command', '')}`  ",
        f"Model: {meta.get('model', '')}; {backends_text(meta)}; device: {meta.get('device', '')} "
        f"({meta.get('cpu', '')}); "
        f"started {meta.get('started', '')}; load average at start (1/5/15 min) "
        f"{'/'.join(str(v) for v in meta.get('load_average_at_start', []))}",
        "",
        "## Spec-Bench table",
        "",
        "Each cell: speedup over this suite's target-only decoding (summed wall time, same prompts, same "
        "sweep) / mean accepted tokens per target call (tau; '-' where a peer, transformers or llama.cpp, "
        "exposes no iterations). "
        "`tree TxD/B`: a token tree of T children per node, D levels, B nodes verified per target call; "
        "`k=K`: a chain of K draft tokens; `T=t rejection|coupled`: sampled at temperature t (no T: greedy).",
        "",
        *backends_note(rows, meta),
        *llama_cpp_note(rows, meta),
        *sampling_note(rows, meta),
        spec_bench_table(rows, meta.get("not_run")),
        "## All configurations",
        "",
        full_table(rows),
    ])
