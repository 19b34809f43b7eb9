"""report.html: one self-contained page (inline CSS, JS and PNGs; no external reference), so it
opens offline from a CI artifact. Static HTML carries every number and token; the small script
only sorts and filters, so the page still reads with scripting off.

Sampled configurations carry their temperature and verify mode in their labels. Rejection
sampling is distributed as target-only sampling, not equal to it token for token: its runs are
never shown as differing from target-only, nor counted against the runs equal to their reference.

A sweep of several variants (backends, weight formats) gets a backend column naming each ("torch+gguf")
in its tables (each row held to and timed against its own variant's target-only) and the variant in each
generation's label."""

from __future__ import annotations

import base64
import html
from collections import defaultdict

from models.benchmark.configurations import LLAMA_GREEDY, LLAMA_PROMPT_LOOKUP, TARGET, Variant
from models.benchmark.runlog import RunLog, RunRecord
from models.benchmark.summary import OVERALL, REJECTION, Row, backends_text, by_source, several_variants, shown_label
from models.benchmark.token_view import PEER, token_sources
from models.common.metrics import summarize

CSS = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0;color:#1d2330;background:#f6f7fb}
main{max-width:1320px;margin:0 auto;padding:18px 28px 60px}
h1{font-size:22px;margin:6px 0 2px}
h2{font-size:17px;margin:28px 0 8px;border-bottom:1px solid #dde1ea;padding-bottom:4px}
.meta{color:#566;font-size:12.5px}.meta code{background:#eceff5;padding:1px 4px;border-radius:3px}
.cards{display:flex;gap:12px;flex-wrap:wrap;margin:14px 0}
.card{background:#fff;border:1px solid #e1e5ee;border-radius:8px;padding:10px 14px;min-width:150px}
.card b{display:block;font-size:20px}.card span{color:#667;font-size:12px}
table{border-collapse:collapse;background:#fff;font-size:12.5px}
th,td{border:1px solid #e3e6ee;padding:4px 8px;text-align:right;white-space:nowrap}
th{background:#eef1f7;position:sticky;top:0}td:first-child,th:first-child{text-align:left}
table.sortable th{cursor:pointer;user-select:none}table.sortable th[data-dir=asc]::after{content:" \\25B2"}
table.sortable th[data-dir=desc]::after{content:" \\25BC"}
.sb td small{color:#555;display:block;font-size:11px}
.plots{display:grid;grid-template-columns:repeat(auto-fit,minmax(420px,1fr));gap:12px}
.plots figure{margin:0;background:#fff;border:1px solid #e1e5ee;border-radius:8px;padding:8px}
.plots img{width:100%;height:auto}.plots figcaption{font-size:12px;color:#556}
.controls{margin:6px 0;display:flex;gap:12px;align-items:center;flex-wrap:wrap}
.controls input[type=search]{padding:4px 8px;width:260px}
.scroll{max-height:520px;overflow:auto;border:1px solid #e1e5ee}.wide{overflow-x:auto}
td.l{text-align:left}
details.prompt{background:#fff;border:1px solid #e1e5ee;border-radius:8px;margin:8px 0;padding:6px 12px}
details.prompt>summary{cursor:pointer;font-weight:600}details.prompt>summary small{font-weight:400;color:#667}
.ptext{white-space:pre-wrap;background:#f3f4f8;
padding:6px 8px;border-radius:4px;font-size:12.5px;max-height:160px;overflow:auto}
.gen{margin:10px 0}.gen-head{font-size:12.5px;color:#445}.gen-head b{color:#1d2330}
.bad{color:#b3261e;font-weight:600}.ok{color:#1b7f3b}
.tokens{white-space:pre-wrap;font:12.5px/1.7 ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;word-break:break-word}
.tokens span{border-radius:2px;box-shadow:inset -1px 0 0 rgba(0,0,0,.12)}
.draft{background:#c8efcf}.target{background:#f8c9c4}.plain{background:#eceef3}.peer{background:#e7ecf7}
.tokens .div{text-decoration:underline wavy #b3261e}
.legend span{padding:1px 6px;border-radius:3px;margin-right:8px;font-size:12px}
"""

JS = """
document.querySelectorAll('table.sortable').forEach(function(table){
  table.querySelectorAll('th').forEach(function(th, col){
    th.addEventListener('click', function(){
      var dir = th.dataset.dir === 'asc' ? 'desc' : 'asc';
      table.querySelectorAll('th').forEach(function(h){ delete h.dataset.dir; });
      th.dataset.dir = dir;
      var body = table.tBodies[0], rows = Array.prototype.slice.call(body.rows);
      function key(r){ var c = r.cells[col], v = c.dataset.v;
        if (v === undefined) return c.textContent; return v === '' ? -Infinity : parseFloat(v); }
      rows.sort(function(a, b){ var x = key(a), y = key(b);
        var d = (typeof x === 'number') ? x - y : String(x).localeCompare(String(y));
        return dir === 'asc' ? d : -d; });
      rows.forEach(function(r){ body.appendChild(r); });
    });
  });
});
function filterResults(){
  var q = document.getElementById('q').value.toLowerCase();
  var overall = document.getElementById('overall-only').checked;
  document.querySelectorAll('#results tbody tr').forEach(function(r){
    r.hidden = (q && r.textContent.toLowerCase().indexOf(q) < 0) || (overall && r.dataset.category !== 'overall');
  });
}
function filterPrompts(){
  var c = document.getElementById('cat').value;
  document.querySelectorAll('details.prompt').forEach(function(d){ d.hidden = c && d.dataset.category !== c; });
}
function openAll(open){
  document.querySelectorAll('details.prompt').forEach(function(d){ if(!d.hidden) d.open = open; });
}
"""


def esc(value: object) -> str:
    return html.escape(str(value), quote=True)


def _num(value: float | None, spec: str) -> tuple[str, str]:
    """(shown text, sort value) for a table cell."""
    return ("-", "") if value is None else (format(value, spec), f"{value:.6g}")


def _speed_colour(speedup: float | None) -> str:
    if speedup is None:
        return "#ffffff"
    if speedup >= 1:
        return f"hsl(135,55%,{max(62, 96 - 40 * min(speedup - 1, 1)):.0f}%)"
    return f"hsl(6,75%,{max(70, 96 - 40 * min(1 - speedup, 1) * 1.5):.0f}%)"


def _load(values: list[float] | None) -> str:
    return "/".join(f"{v:.1f}" for v in values) if values else "?"


def _judged(record: RunRecord) -> bool:
    """Whether a difference from the reference would be a mismatch: not for llama.cpp greedy
    (quantized weights) nor rejection sampling (distribution-equal, not token-equal)."""
    return record.method != LLAMA_GREEDY and record.verify != REJECTION


def _match_html(record: RunRecord) -> str:
    """How the output compares with its reference: target-only, or for llama.cpp's prompt lookup
    llama.cpp's own greedy output (llama.cpp greedy runs quantized weights: a difference is expected;
    rejection sampling draws other random numbers than target-only: a difference is by design)."""
    reference = "llama.cpp greedy" if record.method == LLAMA_PROMPT_LOOKUP else "target-only"
    if record.verify == REJECTION and record.method != TARGET:  # target-only is its own reference
        same = " (equal to target-only's sample here)" if record.matches_target_only else ""
        return f"sampled (rejection): not token-equal by design{same}"
    if record.matches_target_only:
        return f"<span class=ok>= {reference}</span>"
    if record.method == LLAMA_GREEDY:
        return f"differs from target-only at token {record.first_mismatch} (Q4_1 weights: expected)"
    return f"<span class=bad>differs from {reference} at token {record.first_mismatch}</span>"


def header(log: RunLog, rows: list[Row]) -> str:
    meta, done = log.meta, log.done
    overall = [r for r in rows if r.category == OVERALL and r.method != TARGET and r.speedup is not None]
    best = max(overall, key=lambda r: r.speedup, default=None)
    several = several_variants(rows)
    runs, skipped = len(log.records), meta.get("skipped_prompts", 0)
    judged = [r for r in log.records if _judged(r)]  # quantized weights, rejection: differences expected
    mismatched = sum(not r.matches_target_only for r in judged)
    runs = len(judged)
    sampled = any(r.verify == REJECTION for r in log.records)
    cards = [
        (f"{best.speedup:.2f}x" if best else "-", f"best: {shown_label(best, several)}" if best else "best speedup"),
        (str(len(meta.get("prompts", []))), "prompts" + (f" ({skipped} skipped)" if skipped else "")),
        (str(len(meta.get("configurations", []))), "configurations"),
        (f"{runs - mismatched}/{runs}", "runs equal to their reference"
         + (" (rejection-sampled runs aside: not token-equal by design)" if sampled else "")),
        (f"{done.get('elapsed_s', 0) / 60:.1f} min", "sweep wall time"),
    ]
    versions = ", ".join(f"{k} {v}" for k, v in meta.get("versions", {}).items())
    return (
        "<h1>Speculative decoding benchmark</h1>"
        f"<div class=meta>model <b>{esc(meta.get('model'))}</b> ({esc(backends_text(meta))}) on "
        f"{esc(meta.get('device'))} "
        f"({esc(meta.get('cpu', ''))}); "
        f"{esc(versions)}; started {esc(meta.get('started'))}, finished {esc(done.get('finished'))}; "
        f"load average {_load(meta.get('load_average_at_start'))} at start, {_load(done.get('load_average_at_end'))} "
        f"at end on {esc(meta.get('cpu_count', '?'))} CPUs<br>"
        f"<code>{esc(meta.get('command'))}</code></div>"
        "<div class=cards>" + "".join(f"<div class=card><b>{esc(v)}</b><span>{esc(t)}</span></div>" for v, t in cards)
        + "</div>"
    )


def spec_bench(rows: list[Row], not_run: list[dict] | None = None) -> str:
    """Several variants: a backend column naming each, each group with its own target-only row, then what it
    could not run."""
    categories = list(dict.fromkeys(r.category for r in rows))
    several = several_variants(rows)
    table: dict[tuple[str, str], dict[str, Row]] = defaultdict(dict)
    for r in rows:
        if r.method != TARGET or several:
            table[r.variant.text, r.label][r.category] = r
    variants = list(dict.fromkeys(r.variant.text for r in rows))
    skipped = [(Variant.of(n).text, n.get("label")) for n in not_run or [] if several and isinstance(n, dict)]
    keys = sorted(dict.fromkeys([*table, *skipped]), key=lambda k: variants.index(k[0]) if k[0] in variants else 0)
    head = ("<th>backend</th>" if several else "") + "".join(f"<th>{esc(c)}</th>" for c in categories)
    body = []
    for variant, label in keys:
        tds = [f"<td>{esc(variant)}</td>"] if several else []
        if (variant, label) not in table:
            body.append(f"<tr><td>{esc(label)}</td>{''.join(tds)}{'<td>not run</td>' * len(categories)}</tr>")
            continue
        cells = table[variant, label]
        for c in categories:
            r = cells.get(c)
            if r is None:
                tds.append("<td></td>")
                continue
            tau = "-" if r.mean_accepted_tokens is None else f"{r.mean_accepted_tokens:.2f}"
            speed = "-" if r.speedup is None else f"{r.speedup:.2f}x"
            tds.append(f"<td style='background:{_speed_colour(r.speedup)}'>{speed}<small>&tau; {tau}</small></td>")
        body.append(f"<tr><td>{esc(label)}</td>{''.join(tds)}</tr>")
    return (
        "<h2>Spec-Bench table</h2><p class=meta>Speedup over this suite's target-only decoding (summed wall time, "
        "same prompts, same interleaved sweep) and &tau; = mean accepted tokens per target call "
        "('-' where transformers exposes no iterations). <i>k=K</i>: a chain of K draft tokens; "
        "<i>tree T&times;D/B</i>: a token tree of T children per node, D levels, B nodes verified per call; "
        "<i>T=t rejection|coupled</i>: sampled at temperature t, against target-only sampled alike "
        "(no T: greedy).</p>"
        f"<div class=wide><table class=sb><thead><tr><th>method</th>{head}</tr></thead>"
        f"<tbody>{''.join(body)}</tbody></table></div>"
    )


PLOT_CAPTIONS = {
    "speedup_vs_k.png": "Speedup over target-only vs k (chains), all prompts.",
    "tau_speedup_vs_budget.png": "Mean accepted tokens per target call (tau) and speedup vs nodes verified per "
    "call (a chain of k counts as k): one line per method through its best configuration at each budget; "
    "circles are chains, triangles trees.",
    "acceptance_by_position.png": "Per-depth acceptance: of the drafts that reached depth i, the share that "
    "accepted a token there (a chain's depth is its position).",
    "mean_accepted_by_category.png": "Mean accepted tokens per target call by category.",
    "speedup_vs_tau.png": "Speedup vs mean accepted tokens per target call, per configuration and category; "
    "dashed: each target's break-even tau (a configuration's draft + verify in its target-only's decode steps), "
    "right of which speculation pays.",
}


def plots(images: dict[str, bytes]) -> str:
    figures = "".join(
        f"<figure><img alt='{esc(name)}' src='data:image/png;base64,{base64.b64encode(png).decode()}'>"
        f"<figcaption>{esc(PLOT_CAPTIONS.get(name, name))}</figcaption></figure>"
        for name, png in images.items()
    )
    return f"<h2>Plots</h2><div class=plots>{figures}</div>"


RESULT_COLUMNS = ["configuration", "topk", "depth", "budget", "n", "category", "prompts", "tokens", "seconds",
                  "speedup", "mean accepted", "acceptance", "nodes/call", "mean depth", "branching", "calls",
                  "accepted", "bonus", "by proposer", "decode tok/s", "e2e tok/s", "TTFT ms", "matches target-only"]


def _int(value: int | None) -> tuple[str, str]:
    return ("-", "") if value is None else (str(value), str(value))


def _number_cell(item: tuple[str, str]) -> str:
    """A number cell: shown text, sorted by its data-v value."""
    return f"<td data-v='{item[1]}'>{esc(item[0])}</td>"


def _text_cell(value: str) -> str:
    return f"<td class=l>{esc(value)}</td>"


def _result_cells(r: Row, several: bool = False) -> str:
    """One results row: label (and backend, where several), shape (topk, depth, nodes per call), counters
    and timings."""
    shape = [_int(r.tree_topk), _int(r.tree_depth), _int(r.tree_budget), _int(r.max_generated_tokens)]
    counts = [
        _int(r.prompts), _int(r.generated_tokens), _num(r.seconds, ".2f"), _num(r.speedup, ".2f"),
        _num(r.mean_accepted_tokens, ".2f"), _num(r.acceptance_rate, ".3f"), _num(r.mean_tree_nodes, ".2f"),
        _num(r.mean_tree_depth, ".2f"), _num(r.mean_branching, ".2f"), _int(r.target_calls),
        _int(r.accepted_tokens), _int(r.bonus_tokens),
    ]
    speeds = [
        _num(r.decode_tokens_per_s, ".1f"), _num(r.e2e_tokens_per_s, ".1f"), _num(r.ttft_ms, ".1f"),
        (f"{r.matches_target_only}/{r.prompts}", str(r.matches_target_only / r.prompts)),
    ]
    return "".join([
        f"<td>{esc(r.label)}</td>", *([_text_cell(r.variant.text)] if several else []), *map(_number_cell, shape),
        _text_cell(r.category), *map(_number_cell, counts),
        _text_cell(by_source(r.accepted_by_source) or "-"), *map(_number_cell, speeds),
    ])


def results(rows: list[Row]) -> str:
    several = several_variants(rows)
    body = [f"<tr data-category='{esc(r.category)}'>{_result_cells(r, several)}</tr>" for r in rows]
    columns = [RESULT_COLUMNS[0], *(["backend"] if several else []), *RESULT_COLUMNS[1:]]
    head = "".join(f"<th>{esc(c)}</th>" for c in columns)
    return (
        "<h2>Results</h2><div class=controls>"
        "<input id=q type=search placeholder='filter rows (e.g. prompt_lookup, qa)' oninput='filterResults()'>"
        "<label><input id=overall-only type=checkbox onchange='filterResults()'> overall only</label>"
        "<span class=meta>click a column header to sort</span></div>"
        f"<div class=scroll><table id=results class=sortable><thead><tr>{head}</tr></thead><tbody>{''.join(body)}"
        "</tbody></table></div>"
    )


def _token_html(text: str) -> str:
    if text == "":
        return "\u2205"
    return esc(text.replace("\n", "\u21b5\n"))


def generation(record: RunRecord, label: str) -> str:
    spans = []
    differs = record.first_mismatch is not None and record.verify != REJECTION  # rejection sampling: by design
    for i, (text, src) in enumerate(zip(record.token_strings, token_sources(record), strict=True)):
        diverged = " div" if differs and i >= record.first_mismatch else ""
        title = "" if src.kind == PEER else f" title='{esc(src.describe())}'"  # peers: nothing to tell per token
        spans.append(f"<span class='{src.kind}{diverged}'{title}>{_token_html(text)}</span>")
    stats = record.stats()
    drafted = stats is not None and record.method != TARGET
    tau = f"&tau; {summarize([stats])['mean_accepted_tokens']:.2f} &middot; " if drafted else ""
    match = _match_html(record)
    return (
        f"<div class=gen><div class=gen-head><b>{esc(label)}</b> &middot; {tau}{record.generated_tokens} tokens in "
        f"{record.total_s:.2f} s &middot; {match}</div><div class=tokens>{''.join(spans)}</div></div>"
    )


LEGEND = (
    "<div class=legend><span class=draft>accepted draft</span><span class=target>target token (prefill, correction "
    "or bonus)</span><span class=plain>target decode step, nothing drafted</span><span class=peer>transformers "
    "generate</span><span style='text-decoration:underline wavy #b3261e'>after the first difference from "
    "target-only</span> hover a token for its iteration, accepted/proposed and its tree's size (nodes, depth)</div>"
)


def generations(log: RunLog) -> str:
    labels = {c["id"]: c["label"] for c in log.meta.get("configurations", [])}
    order = {cid: i for i, cid in enumerate(labels)}
    by_prompt: dict[int, list[RunRecord]] = defaultdict(list)
    for r in log.records:
        by_prompt[r.prompt_index].append(r)
    prompts = {p["index"]: p for p in log.meta.get("prompts", [])}
    categories = list(dict.fromkeys(r.category for r in sorted(log.records, key=lambda r: r.prompt_index)))
    parts = []
    for n, (index, records) in enumerate(sorted(by_prompt.items())):
        records.sort(key=lambda r: order.get(r.config_id, len(order)))
        info = prompts.get(index, {})
        text = info.get("text", "")
        qid = f" &middot; question {esc(info['question_id'])}" if info.get("question_id") is not None else ""
        bad = sum(not r.matches_target_only for r in records if _judged(r))
        flag = f" &middot; <span class=bad>{bad} differ</span>" if bad else ""
        body = "".join(generation(r, labels.get(r.config_id, r.config_id)) for r in records)
        parts.append(
            f"<details class=prompt data-category='{esc(records[0].category)}'{' open' if n == 0 else ''}>"
            f"<summary>#{index} {esc(records[0].category)}{qid} <small>&middot; {info.get('prompt_tokens', '?')} "
            f"prompt tokens &middot; {esc(text[:90])}{'...' if len(text) > 90 else ''}</small>{flag}</summary>"
            f"<div class=ptext>{esc(text)}</div>{body}</details>"
        )
    options = "".join(f"<option>{esc(c)}</option>" for c in categories)
    return (
        "<h2>Generations</h2><div class=controls><label>category <select id=cat onchange='filterPrompts()'>"
        f"<option value=''>all</option>{options}</select></label><button onclick='openAll(true)'>open all</button>"
        f"<button onclick='openAll(false)'>close all</button></div>{LEGEND}{''.join(parts)}"
    )


def render(log: RunLog, rows: list[Row], images: dict[str, bytes]) -> str:
    title = f"Benchmark: {log.meta.get('model', '')} ({log.meta.get('started', '')})"
    return (
        f"<!DOCTYPE html><html lang=en><head><meta charset=utf-8><title>{esc(title)}</title>"
        f"<meta name=viewport content='width=device-width,initial-scale=1'><style>{CSS}</style></head><body><main>"
        + header(log, rows) + spec_bench(rows, log.meta.get("not_run")) + plots(images) + results(rows)
        + generations(log)
        + f"</main><script>{JS}</script></body></html>\n"
    )
