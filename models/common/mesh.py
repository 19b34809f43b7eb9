"""Mesh devices over torch.distributed: DPxTP shapes, one worker process per mesh device.

`run_on_mesh(shape, fn, *args)` starts dp * tp processes on this machine (gloo on the CPU, each
with its share of the cores; NCCL on CUDA, one GPU each), joins them in a process group and a
DeviceMesh with "dp" and "tp" dimensions, runs fn(mesh, *args) on every rank and returns rank
0's result. No launcher is needed on one machine. A rank that raises or dies, or a collective
that hangs, ends the whole run within a bounded time with one line naming the rank and the
cause, and every worker is stopped: no orphans.

Each worker beats a heartbeat the parent watches: a rank that goes silent (stopped, frozen) is
the one blamed, not the healthy ranks whose collectives time out waiting for it. Each worker
also dies with its parent, even when the parent is killed outright (SIGKILL, the OOM killer).
$SPECDEC_MESH_TIMEOUT_S sets the collective timeout (default 120 s), which is also how long a
rank may be silent before the run ends.

Across machines the same fn runs under torchrun instead (`mesh_from_env`): torchrun starts the
processes and sets RANK / WORLD_SIZE / MASTER_ADDR, and nothing here spawns.
"""

from __future__ import annotations

import ctypes
import dataclasses
import datetime
import os
import queue
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from models.common.device import DeviceUnavailable, MeshShape
from models.common.errors import UserError

COLLECTIVE_TIMEOUT_S = 120.0  # a collective waiting longer than this fails on its rank ($SPECDEC_MESH_TIMEOUT_S)
TIMEOUT_ENV = "SPECDEC_MESH_TIMEOUT_S"
# collectives that may wait for a whole share of work (gathering the outputs, a draft group
# waiting for the target's ranks): a hang there ends the run after this long instead
LONG_TIMEOUT_S = 3600.0
POLL_S = 0.05
HEARTBEAT_S = 0.2  # a worker's heartbeat period (it beats while waiting in a collective too)
# once a collective has broken, a rank silent this long is the one that hung, not a victim
SILENT_S = 10 * HEARTBEAT_S
PR_SET_PDEATHSIG = 1  # linux/prctl.h


class MeshError(UserError):
    """A mesh run that could not finish: names the rank and the cause."""


@dataclasses.dataclass
class Mesh:
    """What fn receives on each rank: where it sits, and the groups it talks over. With device
    groups (draft_shape), ranks [0, shape.size) hold the target and the next draft_shape.size
    ranks the draft (role "draft"; shape and rank are then the draft group's own)."""

    shape: MeshShape
    rank: int
    device_mesh: Any  # torch.distributed.device_mesh.DeviceMesh, dims ("dp", "tp"); None with device groups
    device: torch.device
    role: str = "target"
    draft_shape: MeshShape | None = None
    group: Any = None  # with device groups: this role's tp group
    draft_leader: int = 0  # with device groups: the global rank of the draft group's first rank
    patient: Any = None  # every rank, with LONG_TIMEOUT_S: for waits as long as a share of the work

    @property
    def dp_rank(self) -> int:
        return self.rank // self.shape.tp

    @property
    def tp_rank(self) -> int:
        return self.rank % self.shape.tp

    @property
    def tp_group(self):
        return self.group if self.device_mesh is None else self.device_mesh.get_group("tp")


def check_fits(shape: MeshShape, device_type: str) -> None:
    """A mesh larger than this machine: DeviceUnavailable (tests skip, scripts refuse)."""
    if device_type == "cuda":
        have = torch.cuda.device_count()
        if shape.size > have:
            raise DeviceUnavailable(f"mesh {shape} needs {shape.size} GPUs; this machine has {have}")
    elif shape.size > (os.cpu_count() or 1) * 4:
        raise DeviceUnavailable(f"mesh {shape} needs {shape.size} CPU workers; this machine has "
                                f"{os.cpu_count()} cores (at most 4 workers a core)")


def collective_timeout_s() -> float:
    """$SPECDEC_MESH_TIMEOUT_S, else COLLECTIVE_TIMEOUT_S: how long a collective may wait, and
    a rank stay silent, before the run ends (tests shorten it)."""
    text = os.environ.get(TIMEOUT_ENV, "").strip()
    if not text:
        return COLLECTIVE_TIMEOUT_S
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not 0 < value < float("inf"):
        raise UserError(f"${TIMEOUT_ENV} {text!r} is not a positive number of seconds (e.g. 120)")
    return value


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _join(shape: MeshShape, rank: int, device_type: str, init_method: str | None,
          draft_shape: MeshShape | None = None, local_rank: int | None = None) -> Mesh:
    """local_rank: this process's place on its node (torchrun's LOCAL_RANK; one node: the rank)."""
    from torch.distributed.device_mesh import init_device_mesh

    backend = "nccl" if device_type == "cuda" else "gloo"
    world = shape.size + (draft_shape.size if draft_shape else 0)
    if device_type == "cuda":
        torch.cuda.set_device((rank if local_rank is None else local_rank) % torch.cuda.device_count())
    dist.init_process_group(backend, init_method=init_method, rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=collective_timeout_s()))
    device = torch.device("cuda", torch.cuda.current_device()) if device_type == "cuda" else torch.device("cpu")
    # every rank creates every group, in the same order
    patient = dist.new_group(list(range(world)), timeout=datetime.timedelta(seconds=LONG_TIMEOUT_S))
    if draft_shape is None:
        device_mesh = init_device_mesh(device_type, (shape.dp, shape.tp), mesh_dim_names=("dp", "tp"))
        return Mesh(shape, rank, device_mesh, device, patient=patient)
    # two device groups, one tp group each
    target_group = dist.new_group(list(range(shape.size)))
    draft_group = dist.new_group(list(range(shape.size, world)))
    if rank < shape.size:
        return Mesh(shape, rank, None, device, "target", draft_shape, target_group, shape.size, patient)
    return Mesh(draft_shape, rank - shape.size, None, device, "draft", draft_shape, draft_group, shape.size, patient)


def _die_with_parent(parent: int) -> None:
    """Worker: be killed when the parent dies, however it dies (SIGKILL included). On Linux the
    kernel sends SIGKILL (which also ends a stopped worker) when the thread that started this
    worker exits; run_on_mesh's thread waits for its workers, so that is the parent's death.
    Elsewhere the heartbeat thread watches the parent's pid. A parent already gone is caught by
    comparing the parent's pid after the request."""
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
        except (OSError, AttributeError):
            pass  # the heartbeat thread's check still ends this worker
    if os.getppid() != parent:
        os._exit(1)


def _beat(rank: int, beats, parent: int) -> None:
    """Worker thread: mark this rank alive every HEARTBEAT_S, so the parent can tell a stopped or
    frozen rank from one waiting in a collective; end the worker if the parent is gone."""
    while True:
        if os.getppid() != parent:
            os._exit(1)
        beats[rank] = time.monotonic()
        time.sleep(HEARTBEAT_S)


def _worker(rank: int, shape: MeshShape, device_type: str, port: int, threads: int, fn: Callable,
            args: tuple, results: mp.Queue, draft_shape: MeshShape | None = None, beats=None,
            parent: int | None = None) -> None:
    if parent is not None:
        _die_with_parent(parent)
        threading.Thread(target=_beat, args=(rank, beats, parent), daemon=True, name="mesh-heartbeat").start()
    torch.set_num_threads(threads)
    try:
        mesh = _join(shape, rank, device_type, f"tcp://127.0.0.1:{port}", draft_shape)
        result = fn(mesh, *args)
        results.put((rank, "ok", result if rank == 0 else None))
    except UserError as exc:  # a usage mistake: the same on every rank, reported as it is
        results.put((rank, "user", str(exc)))
    except BaseException as exc:  # reported to the parent as one line
        line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        results.put((rank, "error", f"{type(exc).__name__}: {line}"))
    finally:
        if dist.is_initialized():
            try:
                dist.destroy_process_group()
            except Exception:
                pass


def run_on_mesh(shape: MeshShape, fn: Callable[..., Any], *args, device_type: str = "cpu",
                timeout_s: float | None = None, draft_shape: MeshShape | None = None) -> Any:
    """fn(mesh, *args) on every rank of a new mesh; rank 0's return value. fn and args must
    pickle (a module-level function). A single device runs fn in this process. draft_shape: a
    second device group of that shape after the target's (QEfficient's draft device group).
    timeout_s: end the run after this long (default none: hung collectives time out by themselves).
    A rank silent for the collective timeout (collective_timeout_s) ends the run too."""
    if shape.size == 1 and draft_shape is None:
        return fn(Mesh(shape, 0, None, torch.device("cuda" if device_type == "cuda" else "cpu")), *args)
    world = shape.size + (draft_shape.size if draft_shape else 0)
    check_fits(MeshShape(1, world), device_type)
    silent_limit = collective_timeout_s()
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    beats = ctx.RawArray("d", world)  # each rank's last heartbeat (time.monotonic); 0 until its first
    threads = max(1, (os.cpu_count() or 1) // world)
    port = _free_port()
    procs = [ctx.Process(target=_worker, args=(rank, shape, device_type, port, threads, fn, args, results, draft_shape,
                                               beats, os.getpid()),
                         daemon=True, name=f"mesh-rank-{rank}") for rank in range(world)]
    for p in procs:
        p.start()
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    done: dict[int, Any] = {}
    try:
        while len(done) < world:
            try:
                rank, status, *payload = results.get(timeout=POLL_S)
            except queue.Empty:
                dead = _died_silently(procs, done, results)
                if dead is not None:
                    raise MeshError(f"mesh {shape}: rank {dead} died (exit code {procs[dead].exitcode}) before finishing")
                silent = _silent(procs, beats, done, silent_limit)
                if silent is not None:
                    raise MeshError(f"mesh {shape}: {_silence(beats, silent)}")
                if deadline is not None and time.monotonic() > deadline:
                    silent = _silent(procs, beats, done, SILENT_S)
                    if silent is not None:
                        raise MeshError(f"mesh {shape}: {_silence(beats, silent)}")
                    waiting = [r for r in range(world) if r not in done]
                    raise MeshError(f"mesh {shape}: rank {waiting[0]} did not finish within {timeout_s:.0f} s "
                                    f"(a collective hung?)")
                continue
            if status == "user":
                raise UserError(payload[0])
            if status == "error":
                raise MeshError(f"mesh {shape}: {_cause(procs, beats, done, results, rank, payload[0])}")
            done[rank] = payload[0]
        return done[0]
    finally:
        for p in procs:
            p.join(timeout=5.0 if len(done) == world else 0.5)
        for p in procs:
            if p.is_alive():
                p.kill()
                p.join(timeout=5.0)


def _died_silently(procs, done: dict, results) -> int | None:
    """A rank whose process ended with an error code without reporting anything."""
    for rank, p in enumerate(procs):
        if rank not in done and p.exitcode not in (None, 0) and results.empty():
            return rank
    return None


def _silent(procs, beats, done: dict, limit_s: float, skip=()) -> int | None:
    """The first rank still running whose heartbeat has been silent longer than limit_s: stopped
    or frozen (a rank waiting in a collective keeps beating). A rank before its first beat is
    still starting, and is not judged."""
    now = time.monotonic()
    for rank, p in enumerate(procs):
        if rank in done or rank in skip or p.exitcode is not None:
            continue
        if beats[rank] and now - beats[rank] > limit_s:
            return rank
    return None


def _silence(beats, rank: int) -> str:
    return (f"rank {rank} stopped responding (no heartbeat for {time.monotonic() - beats[rank]:.0f} s: "
            f"stopped or frozen); the other ranks were waiting for it")


def _cause(procs, beats, done: dict, results, rank: int, error: str) -> str:
    """What broke a run in which `rank` reported `error`: a rank that died beats the errors its
    death caused in the others' collectives, a real error beats a broken connection, and a rank
    gone silent beats the timeouts of the ranks that waited for it."""
    time.sleep(10 * POLL_S)  # let a dying rank's exit code, and the others' reports, arrive
    errors = {rank: error}
    while True:
        try:
            other, status, *payload = results.get_nowait()
        except queue.Empty:
            break
        if status in ("error", "user"):
            errors.setdefault(other, payload[0])
        else:
            done[other] = payload[0]
    for r, p in enumerate(procs):
        if r not in done and r not in errors and p.exitcode not in (None, 0):
            return f"rank {r} died (exit code {p.exitcode}) before finishing"
    broken = ("connection closed", "remote worker", "connection reset", "broken pipe", "timed out")
    first = min(errors, key=lambda r: (any(b in errors[r].lower() for b in broken), r))
    if any(b in errors[first].lower() for b in broken):
        silent = _silent(procs, beats, done, SILENT_S, skip=errors)
        if silent is not None:
            return _silence(beats, silent)
    return f"rank {first} failed: {errors[first]}"


TORCHRUN_ENV = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def mesh_from_env(shape: MeshShape, device_type: str = "cpu") -> Mesh:
    """Join the mesh torchrun started: it sets RANK, LOCAL_RANK (the GPU on its node),
    WORLD_SIZE and MASTER_ADDR/PORT, and nothing here spawns. The caller ends with
    torch.distributed.destroy_process_group()."""
    missing = [name for name in TORCHRUN_ENV if name not in os.environ]
    if missing:
        raise UserError(f"mesh_from_env joins a mesh torchrun started, and ${missing[0]} is not set; "
                        f"run the entry under torchrun (or use run_on_mesh on one machine)")
    world = int(os.environ["WORLD_SIZE"])
    if world != shape.size:
        raise UserError(f"mesh {shape} needs {shape.size} processes; torchrun started {world}")
    return _join(shape, int(os.environ["RANK"]), device_type, None, local_rank=int(os.environ["LOCAL_RANK"]))
