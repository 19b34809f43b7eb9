"""scripts/report.py: the page built from a real (tiny) sweep, the token-tree view (budget plot,
shape columns, tree size on hover), the token colouring rebuilt from per-iteration counts, bad
inputs, and the page rendered by headless Chromium when it is installed."""

import html
import json
import os
import re
import shutil
import struct
import subprocess

import pytest

from models.benchmark.runlog import RunRecord, read_run_log
from models.benchmark.token_view import DRAFT, PEER, PLAIN, TARGET, token_sources
from models.common.cli import run_cli

from .conftest import load_script

PNGS = ("speedup_vs_k.png", "tau_speedup_vs_budget.png", "acceptance_by_position.png",
        "mean_accepted_by_category.png", "speedup_vs_tau.png")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    return struct.unpack(">II", data[16:24])


def build_report(folder):
    module = load_script("report")
    with pytest.raises(SystemExit) as exit_info:
        run_cli(lambda: module.main([str(folder)]))
    assert exit_info.value.code == 0
    return folder, (folder / "report.html").read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def report(benchmark_run):
    folder, _, code = benchmark_run
    assert code == 0
    return build_report(folder)


@pytest.fixture(scope="module")
def tree_report(tree_benchmark_run):
    folder, _, code = tree_benchmark_run
    assert code == 0
    return build_report(folder)


def test_report_is_self_contained_with_table_plots_and_coloured_tokens(report):
    folder, page = report
    assert "<table id=results class=sortable>" in page and "Spec-Bench table" in page
    assert not re.search(r"https?://", page), "the page must not reference anything online"
    assert all(src.startswith("data:image/png;base64,") for src in re.findall(r"src='([^']*)'", page))
    assert page.count("data:image/png;base64,") == len(PNGS)
    for name in PNGS:
        width, height = png_size((folder / name).read_bytes())
        assert width > 300 and height > 200 and (folder / name).stat().st_size > 5000, name

    records = read_run_log(folder).records
    spans = re.findall(r"<span class='(draft|target|plain|peer)( div)?'( title='[^']*')?>", page)
    assert len(spans) == sum(len(r.output_ids) for r in records)  # every generated token, once
    drafts = sum(min(it["accepted"], it["emitted"]) for r in records for it in r.iterations or [])
    assert drafts > 0 and sum(kind == "draft" for kind, _, _ in spans) == drafts
    assert any(kind == "target" for kind, _, _ in spans)
    assert "iteration 1: accepted draft, accepted 2/2" in page  # draft_model: the target drafts for itself
    assert page.count("<details class=prompt") == 3


def test_tree_report_has_the_budget_plot_shape_columns_and_tree_sizes_on_hover(tree_report):
    folder, page = tree_report
    width, height = png_size((folder / "tau_speedup_vs_budget.png").read_bytes())
    assert width > 600 and height > 200
    assert "<img alt='tau_speedup_vs_budget.png' src='data:image/png;base64," in page
    head = re.search(r"<table id=results class=sortable><thead><tr>(.*?)</tr>", page).group(1)
    columns = re.findall(r"<th>([^<]*)</th>", head)
    assert columns[:5] == ["configuration", "topk", "depth", "budget", "n"]
    assert {"nodes/call", "mean depth", "branching", "calls", "accepted", "bonus", "by proposer"} <= set(columns)
    assert "<td>suffix tree 2x3/6</td><td data-v='2'>2</td><td data-v='3'>3</td><td data-v='6'>6</td>" in page
    assert "<td>suffix k=2</td><td data-v='1'>1</td><td data-v='2'>2</td><td data-v='2'>2</td>" in page
    # colours as before; hovering a drafted call's token tells the tree's size, and multi's proposer
    records = read_run_log(folder).records
    spans = re.findall(r"<span class='(draft|target|plain|peer)( div)?'( title='[^']*')?>", page)
    assert len(spans) == sum(len(r.output_ids) for r in records)
    assert sum(kind == "draft" for kind, _, _ in spans) == sum(it["accepted"] for r in records for it in r.iterations)
    titles = re.findall(r"title='(iteration \d+: [^']*)'", page)
    assert any(re.search(r"accepted \d+/(\d+); tree \1 nodes, depth \d+$", t) for t in titles)
    assert any("accepted draft" in t and t.endswith("; accepted path from suffix") for t in titles)


def record(iterations, n_tokens):
    return RunRecord(
        config_id="x", method="prompt_lookup", k=4, max_generated_tokens=64, prompt_index=0, run_order=0,
        category="c", source="s", question_id=None, prompt_tokens=5, output_ids=list(range(n_tokens)),
        token_strings=["t"] * n_tokens, total_s=1.0, ttft_s=0.1, iterations=iterations,
        matches_target_only=True, first_mismatch=None,
    )


def it(proposed, accepted, emitted, **tree):
    return {"proposed": proposed, "accepted": accepted, "emitted": emitted, "seconds": 0.1, "draft_seconds": 0.0,
            **tree}


def test_token_sources_split_drafts_from_target_tokens():
    # prefill; 2 of 4 accepted + correction; all 4 accepted + bonus; nothing drafted; EOS inside 3 accepted
    r = record([it(4, 2, 3), it(4, 4, 5), it(0, 0, 1), it(3, 3, 2)], 1 + 3 + 5 + 1 + 2)
    kinds = [s.kind for s in token_sources(r)]
    assert kinds == [TARGET, DRAFT, DRAFT, TARGET, DRAFT, DRAFT, DRAFT, DRAFT, TARGET, PLAIN, DRAFT, DRAFT]
    sources = token_sources(r)
    assert [s.iteration for s in sources] == [0, 1, 1, 1, 2, 2, 2, 2, 2, 3, 4, 4]
    assert sources[3].describe() == "iteration 1: target token, accepted 2/4; tree 4 nodes, depth 4"  # an old log
    assert sources[9].describe() == "iteration 3: target decode, no drafts, accepted 0/0"
    peer = record(None, 3)
    assert [s.kind for s in token_sources(peer)] == [PEER] * 3
    tree = token_sources(record([it(7, 2, 3, depth=3, source="suffix")], 4))
    assert [s.kind for s in tree] == [TARGET, DRAFT, DRAFT, TARGET]
    assert tree[1].describe() == (
        "iteration 1: accepted draft, accepted 2/7; tree 7 nodes, depth 3; accepted path from suffix")


def test_bad_inputs_are_one_line(run_script, benchmark_run, tmp_path):
    code, err = run_script("report", [str(tmp_path / "nope")])
    assert code == 2 and "is not a folder written by scripts/benchmark.py" in err
    unfinished = tmp_path / "unfinished"
    shutil.copytree(benchmark_run[0], unfinished)
    (unfinished / "done.json").unlink()
    (unfinished / "report.html").unlink(missing_ok=True)
    code, err = run_script("report", [str(unfinished)])
    assert code == 2 and "did not finish (no done.json)" in err and len(err.strip().splitlines()) == 1
    assert not (unfinished / "report.html").exists()
    code, err = run_script("report", [str(benchmark_run[0]), "--output", str(tmp_path / "no" / "r.html")])
    assert code == 2 and "does not exist" in err


def test_parent_folder_means_its_newest_finished_sweep(run_script, benchmark_run, tmp_path):
    parent = tmp_path / "logs"
    parent.mkdir()
    code, err = run_script("report", [str(parent)])
    assert code == 2 and "has no meta.json" in err
    older, newer, unfinished = parent / "b-older", parent / "a-newer", parent / "c-unfinished"
    for folder in (older, newer, unfinished):
        shutil.copytree(benchmark_run[0], folder)
        (folder / "report.html").unlink(missing_ok=True)
    (unfinished / "done.json").unlink()
    os.utime(older / "done.json", (1_000_000_000, 1_000_000_000))
    code, _ = run_script("report", [str(parent)])
    assert code == 0
    assert (newer / "report.html").is_file()
    assert not (older / "report.html").exists() and not (unfinished / "report.html").exists()


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install chromium)")
def test_report_renders_in_headless_chromium(report, tmp_path):
    folder, _ = report
    shot = tmp_path / "report.png"
    command = [
        CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={shot}", "--window-size=1400,1000",
        (folder / "report.html").as_uri(),
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert shot.is_file(), done.stderr[-2000:]
    assert png_size(shot.read_bytes()) == (1400, 1000)
    from PIL import Image

    with Image.open(shot) as image:
        colours = image.convert("RGB").getcolors(maxcolors=1 << 20)
    assert colours is not None and len(colours) > 200, "the screenshot looks blank"


@pytest.fixture(scope="module")
def sampled_report(sampled_benchmark_run):
    folder, _, code = sampled_benchmark_run
    assert code == 0
    return build_report(folder)


def test_sampled_report_labels_modes_and_does_not_mark_rejection_as_differing(sampled_report):
    """Rejection sampling is distribution-equal, not token-equal: its runs say so, never in red,
    and no token is underlined as diverging; labels carry the temperature and verify mode."""
    folder, page = sampled_report
    for label in ("draft_model k=2", "draft_model k=2 T=0.9 rejection", "prompt_lookup k=2 T=0.9 coupled",
                  "target T=0.9 coupled"):
        assert f"<td>{label}</td>" in page and f"<b>{label}</b>" in page, label
    records = read_run_log(folder).records
    rejection = [r for r in records if r.verify == "rejection" and r.method != "target"]
    assert any(not r.matches_target_only for r in rejection)
    assert page.count("sampled (rejection): not token-equal by design") == len(rejection)
    assert "class=bad" not in page and "differs from target-only" not in page
    assert not re.search(r"<span class='\w+ div'", page)
    assert "runs equal to their reference (rejection-sampled runs aside" in page
    judged = [r for r in records if r.verify != "rejection"]
    assert f"<b>{len(judged)}/{len(judged)}</b>" in page


def _spoiled_copy(src, dst, line: int = 0, meta: dict | None = None, **fields):
    """A copy of a run folder whose runs.jsonl line `line` (0-based) gets `fields`, and meta.json `meta`."""
    shutil.copytree(src, dst)
    for name in ("report.html", *PNGS):
        (dst / name).unlink(missing_ok=True)
    lines = (dst / "runs.jsonl").read_text().splitlines()
    lines[line] = json.dumps(json.loads(lines[line]) | fields)
    (dst / "runs.jsonl").write_text("\n".join(lines) + "\n")
    if meta:
        (dst / "meta.json").write_text(json.dumps(json.loads((dst / "meta.json").read_text()) | meta))
    return dst


WRONG_TYPES = [
    # (id, line, fields, meta, the one-line error after the folder)
    ("seconds a word", 2, {"total_s": "fast"}, None, "runs.jsonl line 3: total_s is 'fast' (expected: number)"),
    ("category a list", 0, {"category": [1]}, None, "runs.jsonl line 1: category is [1] (expected: string)"),
    ("index a string", 1, {"prompt_index": "0"}, None, "runs.jsonl line 2: prompt_index is '0' (expected: integer)"),
    ("ids not numbers", 4, {"output_ids": ["a"]}, None,
     "runs.jsonl line 5: output_ids is ['a'] (expected: list of integers)"),
    ("strings short", 3, {"token_strings": ["x"]}, None, "runs.jsonl line 4: token_strings holds 1 strings for"),
    ("iteration count a word", 3, {"iterations": [{"proposed": 2, "accepted": "2", "emitted": 1, "seconds": 0.1}]},
     None, "runs.jsonl line 4: iterations[0].accepted is '2' (expected: integer)"),
    ("iteration field unknown", 3, {"iterations": [{"proposed": 2, "accepted": 2, "emitted": 1, "seconds": 0.1,
                                                    "x": 1}]}, None, "iterations[0] has unknown field(s) x"),
    ("meta prompt index", 0, {}, {"prompts": [{"index": "0"}]},
     "meta.json: prompts[0].index is '0' (expected: integer)"),
    ("meta versions", 0, {}, {"versions": "new"}, "meta.json: versions is 'new' (expected: object)"),
]


@pytest.mark.parametrize("name, line, fields, meta, message", WRONG_TYPES, ids=[w[0] for w in WRONG_TYPES])
def test_a_wrong_typed_field_is_one_line_naming_line_and_field(run_script, benchmark_run, tmp_path, name, line,
                                                               fields, meta, message):
    folder = _spoiled_copy(benchmark_run[0], tmp_path / "run", line, meta, **fields)
    code, err = run_script("report", [str(folder)])
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith(f"error: {folder}/") and message in lines[0], err
    assert not (folder / "report.html").exists() and not any((folder / png).exists() for png in PNGS)


def test_a_category_holding_dollars_is_shown_as_written(run_script, benchmark_run, tmp_path):
    """'$' would start matplotlib's mathtext: an unbalanced one stopped the report with a traceback."""
    category = r"costs $\frac{1$ each"
    folder = tmp_path / "run"
    shutil.copytree(benchmark_run[0], folder)
    lines = [json.loads(line) for line in (folder / "runs.jsonl").read_text().splitlines()]
    (folder / "runs.jsonl").write_text("".join(json.dumps(r | {"category": category}) + "\n" for r in lines))
    code, err = run_script("report", [str(folder)])
    assert code == 0, err
    assert f"<summary>#0 {html.escape(category)}" in (folder / "report.html").read_text(encoding="utf-8")
    assert png_size((folder / "mean_accepted_by_category.png").read_bytes())[0] > 300


@pytest.mark.parametrize("where", ["--output", "plot"])
def test_an_output_that_cannot_be_written_is_found_before_any_drawing(run_script, benchmark_run, tmp_path, where):
    folder = tmp_path / "run"
    shutil.copytree(benchmark_run[0], folder)
    for name in ("report.html", *PNGS):
        (folder / name).unlink(missing_ok=True)
    if where == "plot":  # the plots go beside the run log whatever --output says
        (folder / PNGS[-1]).mkdir()
        argv = [str(folder), "--output", str(tmp_path / "r.html")]
        message = f"plot {str(folder / PNGS[-1])!r} is a folder"
    else:
        argv, message = [str(folder), "--output", str(folder)], f"--output {str(folder)!r} is a folder"
    code, err = run_script("report", argv)
    assert code == 2 and err.startswith(f"error: {message}") and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "r.html").exists() and not any((folder / png).is_file() for png in PNGS)
