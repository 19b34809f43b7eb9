"""Mesh workers over torch.distributed: shapes, rank 0's result, and every way a run can fail
ending in one line that names the rank, within a bounded time, with no worker left behind."""

import multiprocessing
import os
import time

import pytest
import torch
import torch.distributed as dist

from models.common.errors import UserError
from models.common.mesh import MeshError, MeshShape, run_on_mesh


def where(mesh):
    total = torch.tensor([mesh.rank + 1.0])
    dist.all_reduce(total, group=mesh.tp_group)
    return (mesh.rank, mesh.dp_rank, mesh.tp_rank, total.item(), torch.get_num_threads())


def gather_all(mesh):
    out = [None] * mesh.shape.size
    dist.all_gather_object(out, (mesh.dp_rank, mesh.tp_rank))
    return out


def rank1_raises(mesh):
    if mesh.rank == 1:
        raise ValueError("bad shard\nsecond line")
    dist.barrier()  # rank 0 would wait here for ever


def rank1_dies(mesh):
    if mesh.rank == 1:
        os._exit(3)
    dist.barrier()


def rank1_hangs(mesh):
    if mesh.rank == 1:
        time.sleep(60)
    return "rank 0 done"


def no_workers_left() -> bool:
    deadline = time.monotonic() + 5
    while multiprocessing.active_children() and time.monotonic() < deadline:
        time.sleep(0.05)
    return not multiprocessing.active_children()


@pytest.mark.parametrize("text, shape", [("1x2", MeshShape(1, 2)), ("2X1", MeshShape(2, 1)), (" 2x2 ", MeshShape(2, 2))])
def test_shapes_parse(text, shape):
    assert MeshShape.parse(text) == shape and str(shape) == text.strip().lower() and shape.size == shape.dp * shape.tp


@pytest.mark.parametrize("text", ["0x2", "2x0", "1x", "x2", "2", "1x2x2", "-1x2", "axb"])
def test_malformed_shapes_are_one_line(text):
    with pytest.raises(UserError, match="DPxTP") as info:
        MeshShape.parse(text)
    assert "\n" not in str(info.value)


def test_rank0_returns_and_each_rank_knows_its_place():
    rank, dp, tp, total, threads = run_on_mesh(MeshShape(1, 2), where)
    assert (rank, dp, tp, total) == (0, 0, 0, 3.0)  # ranks 1 and 2 (1-based) summed over the tp group
    assert threads == max(1, (os.cpu_count() or 1) // 2)  # the cores shared out, not oversubscribed
    assert run_on_mesh(MeshShape(2, 2), gather_all) == [(0, 0), (0, 1), (1, 0), (1, 1)]
    assert no_workers_left()


def test_one_device_runs_in_this_process():
    assert run_on_mesh(MeshShape(1, 1), lambda mesh, x: (mesh.rank, x, os.getpid()), 7) == (0, 7, os.getpid())


@pytest.mark.parametrize("fn, cause", [
    (rank1_raises, "rank 1 failed: ValueError: bad shard"),
    (rank1_dies, "rank 1 died (exit code 3)"),
    (rank1_hangs, "rank 1 did not finish within 8 s"),
])
def test_a_failing_rank_ends_the_run_in_one_line_with_no_orphans(fn, cause):
    t0 = time.monotonic()
    with pytest.raises(MeshError) as info:
        run_on_mesh(MeshShape(1, 2), fn, timeout_s=8)
    assert cause in str(info.value) and "\n" not in str(info.value)
    assert time.monotonic() - t0 < 30
    assert no_workers_left()


@pytest.mark.parametrize("device, shape, expected", [
    ("cpu", None, MeshShape(1, 1)), ("cpu:1x2", None, MeshShape(1, 2)), ("cuda:1", None, MeshShape(1, 1)),
    ("cpu", "2x1", MeshShape(2, 1)), ("cpu:1x2", "1x2", MeshShape(1, 2)),
])
def test_a_device_and_a_mesh_shape_name_one_mesh(device, shape, expected):
    assert MeshShape.of(device, shape) == expected


def test_a_device_and_a_mesh_shape_naming_two_meshes_is_one_line():
    with pytest.raises(UserError, match="name two meshes") as info:
        MeshShape.of("cpu:1x2", "2x1")
    assert "\n" not in str(info.value)
