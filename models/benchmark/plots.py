"""The report's plots, drawn once with matplotlib (Agg) and kept as PNG bytes: the same images
go into report.html (inline) and beside it as files for CI artifacts. A sweep of several variants
names each line's and bar's ("prompt_lookup on transformers", "prompt_lookup on torch+gguf")."""

from __future__ import annotations

import io
from collections import defaultdict

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from models.benchmark.configurations import GREEDY, HF_GREEDY, PEERS, TARGET, mode_text
from models.benchmark.summary import OVERALL, Row, several_variants, shown_label

DPI = 110
LEGEND = dict(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=3, frameon=False)  # below the axes
# text.parse_math off: categories and labels come from the user's files and are shown as written
# ("$5 to $10" is no formula, and an unbalanced "$" would stop the report)
STYLE = {"axes.spines.top": False, "axes.spines.right": False, "axes.grid": True, "grid.alpha": 0.3, "font.size": 9,
         "text.parse_math": False}


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def _series_name(r: Row, several_lengths: bool, several_variants: bool = False) -> str:
    """A method's line: one per length, decoding mode (sampled rows: 'T=0.7 coupled') and variant."""
    name = r.method + (f" n={r.max_generated_tokens}" if several_lengths else "")
    name = name if r.verify == GREEDY else f"{name} {mode_text(r.temperature, r.verify)}"
    return f"{name} on {r.variant.text}" if several_variants and r.method not in PEERS else name


def speedup_vs_k(rows: list[Row]) -> bytes:
    """Overall speedup per method as the chain grows (trees are in the budget plot); 1.0 is
    target-only, dashed lines are transformers greedy."""
    overall = [r for r in rows if r.category == OVERALL and r.speedup is not None]
    several, variants = len({r.max_generated_tokens for r in overall}) > 1, several_variants(rows)
    series: dict[str, list[tuple[int, float]]] = defaultdict(list)
    for r in overall:
        if r.k and r.tree_topk in (1, None):
            series[_series_name(r, several, variants)].append((r.k, r.speedup))
    with plt.rc_context(STYLE):
        fig, ax = plt.subplots(figsize=(6.0, 3.6))
        for name, points in series.items():
            xs, ys = zip(*sorted(points), strict=True)
            ax.plot(xs, ys, marker="o", label=name)
        ax.axhline(1.0, color="black", lw=1, label="target-only (suite)")
        for r in overall:
            if r.method == HF_GREEDY:
                label = _series_name(r, several, variants).replace("hf_", "transformers ")
                ax.axhline(r.speedup, color="grey", ls="--", lw=1, label=label)
        ks = sorted({k for points in series.values() for k, _ in points})
        ax.set_xticks(ks or [1])
        ax.set_xlabel("k (draft tokens per target call)")
        ax.set_ylabel("speedup over target-only")
        ax.set_title("Speedup vs k (all prompts)")
        ax.legend(**LEGEND)
        return _png(fig)


def acceptance_by_position(rows: list[Row]) -> bytes:
    """Per-position acceptance: of the drafts that reached position i, the share accepted."""
    curves = [r for r in rows if r.category == OVERALL and r.per_position_acceptance]
    several = several_variants(rows)
    with plt.rc_context(STYLE):
        fig, ax = plt.subplots(figsize=(6.0, 3.6))
        for r in curves:
            xs = range(1, len(r.per_position_acceptance) + 1)
            ax.plot(xs, r.per_position_acceptance, marker="o", label=shown_label(r, several))
        if not curves:
            ax.text(0.5, 0.5, "no drafting configuration", ha="center", va="center", transform=ax.transAxes)
        ax.set_ylim(0, 1.05)
        ax.set_xlabel("draft depth (a chain's position)")
        ax.set_ylabel("acceptance")
        ax.set_title("Per-position acceptance (all prompts)")
        if curves:
            ax.legend(**LEGEND)
            ax.set_xticks(range(1, max(len(r.per_position_acceptance) for r in curves) + 1))
        return _png(fig)


def mean_accepted_by_category(rows: list[Row]) -> bytes:
    """Mean accepted tokens per target call (tau) by category, one bar per drafting configuration."""
    drafting = [r for r in rows if r.method != TARGET and r.mean_accepted_tokens is not None]
    categories = list(dict.fromkeys(r.category for r in drafting)) or [OVERALL]
    several = several_variants(rows)
    labels = list(dict.fromkeys(shown_label(r, several) for r in drafting))
    value = {(shown_label(r, several), r.category): r.mean_accepted_tokens for r in drafting}
    width = 0.8 / max(len(labels), 1)
    with plt.rc_context(STYLE):
        fig, ax = plt.subplots(figsize=(max(6.0, 0.6 * len(categories) * max(1, len(labels)) ** 0.5 + 2), 3.6))
        for j, label in enumerate(labels):
            xs = [i + (j - (len(labels) - 1) / 2) * width for i in range(len(categories))]
            ax.bar(xs, [value.get((label, c), 0.0) for c in categories], width, label=label)
        ax.axhline(1.0, color="black", lw=1)
        ax.set_xticks(range(len(categories)))
        ax.set_xticklabels(categories, rotation=30, ha="right")
        ax.set_ylabel("mean accepted tokens")
        ax.set_title("Mean accepted tokens per target call, by category")
        if labels:
            ax.legend(**{**LEGEND, "bbox_to_anchor": (0.5, -0.32)})
        return _png(fig)


def _budget_points(rows: list[Row], value: str) -> dict[str, list[tuple[int, float, bool]]]:
    """Per method: (nodes verified per call, value, is a tree) for each drafting configuration."""
    overall = [r for r in rows if r.category == OVERALL and r.tree_budget and getattr(r, value) is not None]
    several, variants = len({r.max_generated_tokens for r in overall}) > 1, several_variants(rows)
    series: dict[str, list[tuple[int, float, bool]]] = defaultdict(list)
    for r in overall:
        nodes = r.tree_budget if isinstance(r.tree_budget, int) else round(r.mean_tree_nodes or 0)  # auto: as used
        series[_series_name(r, several, variants)].append((nodes, getattr(r, value), r.tree_topk > 1))
    return series


def _budget_panel(ax, series: dict[str, list[tuple[int, float, bool]]], colours: dict[str, str], ylabel: str) -> None:
    """One line per method through its best value at each budget; circles are chains, triangles trees."""
    for name, points in series.items():
        colour = colours[name]
        best: dict[int, float] = {}
        for x, y, _ in points:
            best[x] = max(best.get(x, y), y)
        xs = sorted(best)
        ax.plot(xs, [best[x] for x in xs], color=colour, lw=1.2)
        for marker, tree in (("o", False), ("^", True)):
            chosen = [(x, y) for x, y, t in points if t == tree]
            if chosen:
                ax.scatter(*zip(*chosen, strict=True), color=colour, marker=marker, s=22, zorder=3)
    ax.axhline(1.0, color="black", lw=1)
    budgets = sorted({x for points in series.values() for x, _, _ in points})
    ax.set_xticks(budgets or [1])
    ax.set_xlabel("nodes verified per target call")
    ax.set_ylabel(ylabel)
    if not series:
        ax.text(0.5, 0.5, "no drafting configuration", ha="center", va="center", transform=ax.transAxes)


def tau_and_speedup_vs_budget(rows: list[Row]) -> bytes:
    """tau and speedup against the node budget (a chain of k is k nodes): does a wider tree buy
    more accepted tokens per call than a longer chain, and does that pay in wall time?"""
    tau, speed = _budget_points(rows, "mean_accepted_tokens"), _budget_points(rows, "speedup")
    names = list(dict.fromkeys([*tau, *speed]))  # one colour per method in both panels
    colours = {name: f"C{i % 10}" for i, name in enumerate(names)}
    with plt.rc_context(STYLE):
        fig, (left, right) = plt.subplots(1, 2, figsize=(9.0, 3.6))
        _budget_panel(left, tau, colours, "mean accepted tokens (tau)")
        _budget_panel(right, speed, colours, "speedup over target-only")
        left.set_title("tau vs node budget (all prompts)")
        right.set_title("Speedup vs node budget (all prompts)")
        handles = [plt.Line2D([], [], color=colours[n]) for n in names]
        handles += [plt.Line2D([], [], color="grey", marker=m, ls="") for m in ("o", "^")]
        fig.legend(handles, [*names, "chain", "tree"], **{**LEGEND, "bbox_to_anchor": (0.5, -0.02), "ncol": 4})
        return _png(fig)


def speedup_vs_tau(rows: list[Row]) -> bytes:
    """Speedup against tau, one point per drafting configuration and category, one colour per
    target (variant): a configuration pays right of its target's break-even tau (dashed: the
    median over its configurations), and its speedup is about tau / break-even there."""
    points = [r for r in rows if r.method not in (TARGET, *PEERS) and r.speedup is not None
              and r.mean_accepted_tokens is not None]
    with plt.rc_context(STYLE):
        fig, ax = plt.subplots(figsize=(6.0, 3.6))
        for i, variant in enumerate(dict.fromkeys(r.variant for r in points)):
            mine = [r for r in points if r.variant == variant]
            colour = f"C{i}"
            ax.scatter([r.mean_accepted_tokens for r in mine], [r.speedup for r in mine], s=14, color=colour,
                       label=variant.text)
            evens = sorted(r.break_even_tau for r in mine if r.break_even_tau is not None)
            if evens:
                even = evens[len(evens) // 2]
                ax.axvline(even, color=colour, ls="--", lw=1, label=f"{variant.text} break-even tau {even:.2f}")
        ax.axhline(1.0, color="black", lw=1, label="target-only")
        ax.set_xlabel("mean accepted tokens per target call (tau)")
        ax.set_ylabel("speedup over target-only")
        ax.set_title("speedup vs tau, per category")
        ax.legend(fontsize=7, loc="upper left")
        return _png(fig)


PLOTS = {
    "speedup_vs_k.png": speedup_vs_k,
    "tau_speedup_vs_budget.png": tau_and_speedup_vs_budget,
    "acceptance_by_position.png": acceptance_by_position,
    "mean_accepted_by_category.png": mean_accepted_by_category,
    "speedup_vs_tau.png": speedup_vs_tau,
}


def draw_all(rows: list[Row]) -> dict[str, bytes]:
    return {name: draw(rows) for name, draw in PLOTS.items()}
