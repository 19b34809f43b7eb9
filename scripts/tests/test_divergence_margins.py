"""scripts/divergence_margins.py: the target's top-2 margin where a run left its reference."""

from __future__ import annotations

import json
import shutil

from models.backends import torch_backend
from models.common.device import open_device
from models.speculative.engine import top2_margin_after
from scripts.tests.conftest import BENCH_MODEL


def test_each_divergence_gets_the_targets_margin_at_its_first_differing_token(benchmark_run, run_script, tmp_path):
    folder = tmp_path / "run"
    shutil.copytree(benchmark_run[0], folder)
    lines = (folder / "runs.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    planted = next(i for i, r in enumerate(records) if r["method"] == "prompt_lookup")
    records[planted].update(matches_target_only=False, first_mismatch=3)  # as if it had left target-only there
    (folder / "runs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))

    code, err = run_script("divergence_margins", [str(folder)])
    assert code == 0, err
    found = json.loads((folder / "divergences.json").read_text())["divergences"]
    assert [(d["config_id"], d["prompt_index"], d["first_mismatch"]) for d in found] == [
        (records[planted]["config_id"], records[planted]["prompt_index"], 3)]
    meta = json.loads((folder / "meta.json").read_text())
    loaded = torch_backend.load(BENCH_MODEL, None, open_device("cpu"))
    prompt = next(p for p in meta["prompts"] if p["index"] == records[planted]["prompt_index"])
    ids = loaded.tokenizer.encode(prompt["text"], chat=bool(int(meta["options"]["instruct"])))
    margin = top2_margin_after(loaded.model, ids, records[planted]["output_ids"][:3])
    assert found[0]["top2_margin"] == round(margin, 4) and found[0]["near_tie"] == (margin < 0.25)


def test_an_unfinished_folder_is_one_line(run_script, tmp_path):
    code, err = run_script("divergence_margins", [str(tmp_path)])
    assert code == 2 and err.startswith("error: ") and len(err.strip().splitlines()) == 1
