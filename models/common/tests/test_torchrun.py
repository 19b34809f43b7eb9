"""The multi-node entry docs/meshes.md describes, run under torchrun with two local CPU processes:
mesh_from_env joins the mesh torchrun started, a collective goes over its tp group, and
run_prompts decodes with the target sharded tp=2, equal to one device token for token.

This file is also that entry: `python -m torch.distributed.run --standalone --nproc_per_node 2
models/common/tests/test_torchrun.py 1x2 OUT.json`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from models.common.device import MeshShape
from models.common.errors import UserError
from models.common.mesh import TORCHRUN_ENV, mesh_from_env, run_on_mesh
from models.common.prompts import Prompt
from models.speculative.engine import RunConfig
from models.speculative.mesh_runs import run_prompts

ROOT = Path(__file__).resolve().parents[3]
MODEL = "random:tiny-llama"  # 2 KV heads: tp 2
PROMPTS = ["count: one two three one two three one two", "The quick brown fox"]
METHODS = {"target": {}, "prompt_lookup": {"max_ngram_size": 2}}


def decode_all(mesh, shape: str | None) -> dict | None:
    """Every method on this mesh: each prompt's tokens, from rank 0 (the others None)."""
    out = {}
    for method, options in METHODS.items():
        config = RunConfig(model=MODEL, method=method, max_generated_tokens=16, max_seq_len=128, mesh_shape=shape,
                           **options)
        run = run_prompts(mesh, config, [Prompt(p) for p in PROMPTS], warm_up=False)
        if run is not None:
            out[method] = [r.tokens for r in run.result.results]
    return out or None


def entry(shape_text: str, out_path: str) -> None:
    """What each torchrun process runs: join, sum the ranks over the tp group, decode, and rank 0
    writes what it saw (whole, then renamed)."""
    mesh = mesh_from_env(MeshShape.parse(shape_text), "cpu")
    try:
        total = torch.tensor([mesh.rank + 1.0])
        dist.all_reduce(total, group=mesh.tp_group)
        tokens = decode_all(mesh, shape_text)
        if mesh.rank == 0:
            tmp = Path(out_path + ".tmp")
            tmp.write_text(json.dumps({"world": dist.get_world_size(), "tp_sum": total.item(),
                                       "tp_rank": mesh.tp_rank, "tokens": tokens}))
            tmp.rename(out_path)
    finally:
        dist.destroy_process_group()


def torchrun(shape: str, out: Path, nproc: int = 2) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "SPECDEC_MESH_TIMEOUT_S": "60"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
               __file__, shape, str(out)]
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def test_mesh_from_env_under_torchrun_decodes_as_one_device(tmp_path):
    out = tmp_path / "rank0.json"
    done = torchrun("1x2", out)
    assert done.returncode == 0, done.stderr[-3000:]
    seen = json.loads(out.read_text())
    assert (seen["world"], seen["tp_sum"], seen["tp_rank"]) == (2, 3.0, 0)  # ranks 1 + 2 over the tp group
    single = run_on_mesh(MeshShape(1, 1), decode_all, None)
    assert seen["tokens"] == single
    assert seen["tokens"]["prompt_lookup"] == seen["tokens"]["target"]


def test_a_torchrun_of_the_wrong_size_is_one_line(monkeypatch):
    for name, value in {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1",
                        "MASTER_PORT": "1"}.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(UserError, match="mesh 1x2 needs 2 processes; torchrun started 1"):
        mesh_from_env(MeshShape(1, 2))  # before any process group: nothing waits for the missing rank
    assert not dist.is_initialized()


def test_outside_torchrun_mesh_from_env_says_so(monkeypatch):
    for name in TORCHRUN_ENV:
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(UserError, match=r"\$RANK is not set; run the entry under torchrun") as info:
        mesh_from_env(MeshShape(1, 1))
    assert "\n" not in str(info.value)


if __name__ == "__main__":
    entry(*sys.argv[1:])
