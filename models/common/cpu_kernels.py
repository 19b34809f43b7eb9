"""The CPU kernels that make verification cheap: batch-invariant fp32 skinny GEMM and attention.

MKL's sgemm repacks the weight on every call and its M = 1 path (gemv) is poorly threaded, so
on the 2-core machines one decode step ran at about half the memory bandwidth and a k + 1 row
verify cost up to 2x a decode step. csrc/cpu_kernels.cpp register-tiles x rows against weight
rows in L2-sized blocks (AVX2 + FMA), so each weight load feeds many rows, and computes every
output by the same sequence of operations whatever the number of rows (up to 64: a tree of 63
nodes and its root), so the logits of a token do not depend on how many tokens share the call;
attention does the same under any tree mask. The same GEMM also reads GGUF Q8_0 / Q4_1 weight
blocks as stored, dequantizing them in cache with the loader's float operations: the same bits
from a quarter to a sixth of the bytes (models/common/quantized.py). Compiled once with torch's extension builder
(cached under ~/.cache/torch_extensions); where it cannot be built the model falls back to
torch's kernels. Set SPECDEC_CPU_KERNELS=0 to turn it off.

torch's builder guards its build folder with a baton file (`lock`) that a killed build leaves
behind, and then every later load waits on it forever. So the build runs under a lock of ours
(flock, which the kernel drops when its holder dies) that proves, once held, that any baton
left is a dead build's; the wait for a live builder is logged and bounded.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from loguru import logger

SOURCE = Path(__file__).resolve().parent / "csrc" / "cpu_kernels.cpp"
NAME = "specdec_cpu_kernels"
BATON = "lock"  # torch.utils.cpp_extension._jit_compile's FileBaton, in the build folder
BUILD_LOCK = "specdec-build.flock"  # ours, beside it; holds the holder's pid for the messages
LOCK_WAIT_S = 600.0  # a compile takes about a minute; a holder alive this long is hung
LOG_EVERY_S = 30.0
_POLL_S = 0.2
_ext = None
_tried = False


def _cpu_has_avx2_fma() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return " avx2" in flags and " fma" in flags and " f16c" in flags


def skinny_kernels():
    """The compiled extension module, or None where it is disabled or cannot be built."""
    global _ext, _tried
    if _tried:
        return _ext
    _tried = True
    if os.environ.get("SPECDEC_CPU_KERNELS", "1") == "0":
        return None
    if not _cpu_has_avx2_fma():
        logger.warning("CPU lacks AVX2/FMA/F16C: using torch.mm for small-batch linears (slower verification)")
        return None
    try:
        logger.info("loading the CPU skinny-GEMM kernel (compiled once, about a minute the first time)")
        # -ffp-contract=off: a GGUF block's (d * q) + m must round twice, as the loader's does
        flags = ["-O3", "-mavx2", "-mfma", "-mf16c", "-ffp-contract=off", "-fopenmp"]
        _ext = load_extension(NAME, [SOURCE], extra_cflags=flags, extra_ldflags=["-fopenmp"])
    except Exception as exc:  # a missing compiler or ninja, a hung builder: correct but slower
        logger.warning(f"could not build the CPU kernel ({type(exc).__name__}: {str(exc)[:200]}); using torch.mm")
        _ext = None
    return _ext


def load_extension(name: str, sources: list[Path], **kwargs):
    """torch's cpp_extension.load under the build lock, in the folder torch would pick itself
    ($TORCH_EXTENSIONS_DIR or ~/.cache/torch_extensions/<python>_<accelerator>/<name>)."""
    from torch.utils.cpp_extension import _get_build_directory, load

    folder = Path(_get_build_directory(name, verbose=False))
    with build_lock(folder):
        return load(name=name, sources=[str(s) for s in sources], build_directory=str(folder), verbose=False, **kwargs)


@contextlib.contextmanager
def build_lock(folder: Path, timeout_s: float = LOCK_WAIT_S) -> Iterator[None]:
    """Hold the build folder's lock: a live builder is waited for (at most timeout_s, then
    TimeoutError naming it); a dead one's baton is removed so torch's load does not wait on it.
    (A process running code without this lock would not be seen: only this module builds here.)"""
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / BUILD_LOCK, "a+") as f:
        _acquire(f, folder, timeout_s)
        f.seek(0)
        f.truncate()
        f.write(f"{os.getpid()}\n")
        f.flush()
        _remove_stale_baton(folder)
        yield  # closing the file releases the lock


def _holder(f: IO[str]) -> str:
    f.seek(0)
    pid = f.read().strip()
    return f"process {pid}" if pid.isdigit() else "another process"


def _acquire(f: IO[str], folder: Path, timeout_s: float) -> None:
    """flock, waiting for a live holder with a message now and then; never forever."""
    start = time.monotonic()
    next_log = start + 1.0  # a quick no-op build by a neighbour (mesh ranks) is not news
    while True:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            pass
        now = time.monotonic()
        if now - start > timeout_s:
            raise TimeoutError(f"{_holder(f)} has held the kernel build lock {folder / BUILD_LOCK} "
                               f"for over {timeout_s:.0f} s")
        if now >= next_log:
            logger.info(f"waiting for {_holder(f)}, which is building the CPU kernel in {folder} "
                        f"({now - start:.0f} s so far, at most {timeout_s:.0f})")
            next_log = now + LOG_EVERY_S
        time.sleep(_POLL_S)


def _remove_stale_baton(folder: Path) -> None:
    """Under the build lock a baton can only be a killed build's (its holder dropped our lock)."""
    baton = folder / BATON
    if baton.exists():
        logger.warning(f"removing {baton}, left by a kernel build that was killed; building again")
        baton.unlink(missing_ok=True)
