"""Mesh workers over torch.distributed: shapes, rank 0's result, and every way a run can fail
ending in one line that names the rank, within a bounded time, with no worker left behind."""

import multiprocessing
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

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


def rank_stops(mesh, stopped: int):
    if mesh.rank == stopped:
        os.kill(os.getpid(), signal.SIGSTOP)  # as `kill -STOP` would, or a debugger
    dist.barrier()  # the other rank waits here until its collective times out


def record_pid_and_wait(mesh, folder: str):
    """Each rank names its pid in folder (written whole, then renamed); rank 1 then stops, which
    only a signal from the kernel can end, and rank 0 sleeps."""
    tmp = Path(folder, f".rank{mesh.rank}")
    tmp.write_text(str(os.getpid()))
    tmp.rename(Path(folder, f"rank{mesh.rank}.pid"))
    if mesh.rank == 1:
        os.kill(os.getpid(), signal.SIGSTOP)
    time.sleep(600)


PARENT = ("import sys; from models.common.mesh import MeshShape, run_on_mesh; "
          "from models.common.tests.test_mesh import record_pid_and_wait; "
          "run_on_mesh(MeshShape(1, 2), record_pid_and_wait, sys.argv[1])")


def alive(pid: int) -> bool:
    """A process that exists and is not a zombie (an orphan's zombie waits for init to reap it)."""
    try:
        os.kill(pid, 0)
        stat = Path(f"/proc/{pid}/stat")
        return not stat.exists() or stat.read_text().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except (ProcessLookupError, FileNotFoundError):
        return False


def worker_pids(folder: Path, parent: subprocess.Popen, n: int, log: Path) -> list[int]:
    deadline = time.monotonic() + 120  # two workers importing torch on a loaded machine
    while len(list(folder.glob("*.pid"))) < n:
        assert parent.poll() is None, f"the mesh run ended early: {log.read_text()[-2000:]}"
        assert time.monotonic() < deadline, "the mesh workers did not start"
        time.sleep(0.1)
    return [int(path.read_text()) for path in sorted(folder.glob("*.pid"))]


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


@pytest.mark.parametrize("stopped, collective_timeout_s, run_timeout_s", [
    (1, "6", None), (0, "6", None),  # the waiting rank's collective times out
    (1, "", 10),  # the run's own timeout_s ends it first (the collective would wait 120 s)
])
def test_a_stopped_rank_is_blamed_not_the_rank_that_waited_for_it(monkeypatch, stopped, collective_timeout_s,
                                                                  run_timeout_s):
    monkeypatch.setenv("SPECDEC_MESH_TIMEOUT_S", collective_timeout_s)  # also the silence allowed
    with pytest.raises(MeshError) as info:
        run_on_mesh(MeshShape(1, 2), rank_stops, stopped, timeout_s=run_timeout_s)
    message = str(info.value)
    assert f"rank {stopped} stopped responding" in message and "failed" not in message and "\n" not in message
    assert no_workers_left()  # the stopped rank too


@pytest.mark.parametrize("value", ["0", "-5", "soon", "inf", "nan"])
def test_a_bad_mesh_timeout_is_one_line(monkeypatch, value):
    monkeypatch.setenv("SPECDEC_MESH_TIMEOUT_S", value)
    with pytest.raises(UserError, match="SPECDEC_MESH_TIMEOUT_S") as info:
        run_on_mesh(MeshShape(1, 2), where)
    assert repr(value) in str(info.value) and "\n" not in str(info.value)
    assert not multiprocessing.active_children()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the parent-death signal is Linux's")
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_workers_die_with_their_parent_even_a_stopped_one(tmp_path, sig):
    """Only the parent is killed (kill -TERM or kill -KILL of its pid): its workers, rank 1
    stopped among them, must not outlive it."""
    log = tmp_path / "parent.log"  # a file, not a pipe: an orphan holding a pipe open would block reading it
    with log.open("w") as err:
        parent = subprocess.Popen([sys.executable, "-c", PARENT, str(tmp_path)], cwd=Path(__file__).parents[3],
                                  stdout=subprocess.DEVNULL, stderr=err)
    pids: list[int] = []
    try:
        pids = worker_pids(tmp_path, parent, 2, log)
        parent.send_signal(sig)
        parent.wait(timeout=30)
        deadline = time.monotonic() + 5
        while any(alive(pid) for pid in pids) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert [pid for pid in pids if alive(pid)] == []
    finally:
        parent.kill()
        parent.wait()
        for pid in pids:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)


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
