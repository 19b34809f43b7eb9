"""The CPU kernels that make verification cheap: batch-invariant fp32 skinny GEMM and attention.

MKL's sgemm repacks the weight on every call and its M = 1 path (gemv) is poorly threaded, so
on the 2-core machines one decode step ran at about half the memory bandwidth and a k + 1 row
verify cost up to 2x a decode step. csrc/cpu_kernels.cpp register-tiles x rows against weight
rows in L2-sized blocks (AVX2 + FMA), so each weight load feeds many rows, and computes every
output by the same sequence of operations whatever the number of rows (up to 64: a tree of 63
nodes and its root), so the logits of a token do not depend on how many tokens share the call;
attention does the same under any tree mask. Compiled once with torch's extension builder
(cached under ~/.cache/torch_extensions); where it cannot be built the model falls back to
torch's kernels. Set SPECDEC_CPU_KERNELS=0 to turn it off.
"""

from __future__ import annotations

import os
from pathlib import Path

from loguru import logger

SOURCE = Path(__file__).resolve().parent / "csrc" / "cpu_kernels.cpp"
_ext = None
_tried = False


def _cpu_has_avx2_fma() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return " avx2" in flags and " fma" in flags


def skinny_kernels():
    """The compiled extension module, or None where it is disabled or cannot be built."""
    global _ext, _tried
    if _tried:
        return _ext
    _tried = True
    if os.environ.get("SPECDEC_CPU_KERNELS", "1") == "0":
        return None
    if not _cpu_has_avx2_fma():
        logger.warning("CPU lacks AVX2/FMA: using torch.mm for small-batch linears (slower verification)")
        return None
    try:
        from torch.utils.cpp_extension import load

        logger.info("loading the CPU skinny-GEMM kernel (compiled once, about a minute the first time)")
        _ext = load(
            name="specdec_cpu_kernels",
            sources=[str(SOURCE)],
            extra_cflags=["-O3", "-mavx2", "-mfma", "-fopenmp"],
            extra_ldflags=["-fopenmp"],
            verbose=False,
        )
    except Exception as exc:  # a missing compiler or ninja: correct but slower
        logger.warning(f"could not build the CPU kernel ({type(exc).__name__}: {str(exc)[:200]}); using torch.mm")
        _ext = None
    return _ext
