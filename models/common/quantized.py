"""Weights held as a GGUF stores them: Q8_0 and Q4_1 blocks read by the CPU kernels as they are.

A quantized weight is an ordinary uint8 tensor [N, K / 32 * block bytes], one row of blocks per
output row, so it shares, slices and counts like any parameter; the block bytes per row tell its
kind (34 bytes a block: Q8_0, 20: Q4_1) once the row length K is known, which every use knows
(the input's last dimension, or the model's width). The kernels dequantize with the loader's own
float operations, so everything computed from a quantized weight has the bits the fp32 weight
would give: the kernels' linear for few rows, torch's on the dequantized weight for prefill.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from models.common.cpu_kernels import skinny_kernels

BLOCK = 32  # weights per block, for both kinds
KINDS = {"Q8_0": (0, 34), "Q4_1": (1, 20)}  # GGML type name -> (the kernels' kind, bytes per block)
_KIND_OF_BYTES = {nbytes: kind for kind, nbytes in KINDS.values()}


def is_quantized(weight: torch.Tensor) -> bool:
    return weight.dtype == torch.uint8


def kind_of(weight: torch.Tensor, k: int) -> int:
    """The kernels' kind of a quantized weight whose rows hold k weights."""
    nbytes = weight.shape[-1] * BLOCK // k if k % BLOCK == 0 else None
    if nbytes not in _KIND_OF_BYTES or weight.shape[-1] * BLOCK != nbytes * k:
        raise ValueError(f"a quantized weight of {weight.shape[-1]} bytes a row does not hold rows of {k} weights")
    return _KIND_OF_BYTES[nbytes]


def weights_per_row(weight: torch.Tensor) -> int:
    """How many weights a quantized row holds, from its bytes alone (for counting FLOPs; a row
    length both kinds could hold is refused)."""
    fits = {weight.shape[-1] // n * BLOCK for _, n in KINDS.values() if weight.shape[-1] % n == 0}
    if len(fits) != 1:
        raise ValueError(f"{weight.shape[-1]} bytes a row do not tell the block kind")
    return fits.pop()


def kernels():
    """The CPU kernels, which every quantized weight needs (its load refuses a machine without them)."""
    ext = skinny_kernels()
    if ext is None:
        raise RuntimeError("quantized weights need the CPU kernels, which are not available here")
    return ext


def dequantize(weight: torch.Tensor, k: int) -> torch.Tensor:
    """The fp32 weight [N, k] a quantized one stands for, bit for bit."""
    return kernels().dequantize(weight.contiguous(), kind_of(weight, k), k)


def linear(x2: torch.Tensor, weight: torch.Tensor, few_rows: bool) -> torch.Tensor:
    """x2 [M, K] against a quantized weight: the kernels' linear for few rows, else torch's on the
    dequantized weight (prefill: the same bits as the fp32 path, which takes torch's there too)."""
    k = x2.shape[-1]
    if few_rows:
        return kernels().skinny_linear_q(x2, weight, kind_of(weight, k))
    return F.linear(x2, dequantize(weight, k))


def rows(weight: torch.Tensor, index: torch.Tensor, k: int) -> torch.Tensor:
    """weight[index] as fp32 rows of k: an embedding lookup in either format."""
    if not is_quantized(weight):
        return weight[index]
    return dequantize(weight[index.reshape(-1)], k).reshape(*index.shape, k)
