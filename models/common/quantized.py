"""Weights held as a GGUF stores them: Q8_0 and Q4_1 blocks (and BF16, a shipped speculator
head's) read by the CPU kernels as they are.

A quantized weight is an ordinary uint8 tensor [N, K / 32, block bytes]: one row of blocks per
output row, so it shares, slices and counts like any parameter, and its shape says what it is
(34 bytes a block: Q8_0, 20: Q4_1, 64: BF16; K = 32 x its blocks). The kernels dequantize with the loader's
own float operations, so everything computed from a quantized weight has the bits the fp32
weight would give: the kernels' linear for few rows, torch's on the dequantized weight for
prefill.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from models.common.cpu_kernels import skinny_kernels

BLOCK = 32  # weights per block, for every kind
# GGML type name -> (the kernels' kind, bytes per block). BF16 is no GGUF kind here: the shipped
# speculator heads' bfloat16 weights, read as stored (an exact widening to fp32).
KINDS = {"Q8_0": (0, 34), "Q4_1": (1, 20), "BF16": (2, 64)}
_KIND_OF_BYTES = {nbytes: kind for kind, nbytes in KINDS.values()}


def is_quantized(weight: torch.Tensor) -> bool:
    return weight.dtype == torch.uint8


def kind_of(weight: torch.Tensor) -> int:
    """The kernels' kind of a quantized weight."""
    if weight.dim() != 3 or weight.shape[-1] not in _KIND_OF_BYTES:
        raise ValueError(f"a quantized weight is [N, blocks, {' or '.join(map(str, _KIND_OF_BYTES))}], "
                         f"not {list(weight.shape)}")
    return _KIND_OF_BYTES[weight.shape[-1]]


def row_weights(weight: torch.Tensor) -> int:
    """K: the weights a row holds."""
    return weight.shape[-2] * BLOCK


def of_blocks(raw: torch.Tensor, kind: str) -> torch.Tensor:
    """A GGUF matrix's raw bytes [N, K / 32 x block bytes] of GGML type `kind` as a quantized weight."""
    return raw.reshape(raw.shape[0], -1, KINDS[kind][1])


def bf16_blocks(weight: torch.Tensor) -> torch.Tensor | None:
    """A 2-D fp32 weight as BF16 blocks when every value is a bfloat16 (a shipped head's weights
    widened on load), so the kernels read half the bytes for the same bits; else None."""
    if weight.dim() != 2 or weight.dtype != torch.float32 or weight.shape[1] % BLOCK:
        return None
    narrow = weight.detach().to(torch.bfloat16)
    if not torch.equal(narrow.float().view(torch.int32), weight.detach().view(torch.int32)):
        return None
    return narrow.contiguous().view(torch.uint8).reshape(weight.shape[0], -1, KINDS["BF16"][1])


def kernels():
    """The CPU kernels, which every quantized weight needs (its load refuses a machine without them)."""
    ext = skinny_kernels()
    if ext is None:
        raise RuntimeError("quantized weights need the CPU kernels, which are not available here")
    return ext


def kernel_isa(name: str = "") -> str:
    """The instruction set the quantized kernels use: AVX-512 where the CPU has it, else AVX2.
    Give "avx2" or "avx512" to choose (a test or benchmark comparing both in one process); the
    bits are the same either way."""
    return kernels().kernel_isa(name)


def dequantize(weight: torch.Tensor) -> torch.Tensor:
    """The fp32 weight [N, K] a quantized one stands for, bit for bit."""
    kind = kind_of(weight)
    return kernels().dequantize(weight.reshape(weight.shape[0], -1).contiguous(), kind, row_weights(weight))


def linear(x2: torch.Tensor, weight: torch.Tensor, few_rows: bool) -> torch.Tensor:
    """x2 [M, K] against a quantized weight: the kernels' linear for few rows, else torch's on the
    dequantized weight (prefill: the same bits as the fp32 path, which takes torch's there too)."""
    if x2.shape[-1] != row_weights(weight):
        raise ValueError(f"input of {x2.shape[-1]} features against a weight of rows of {row_weights(weight)}")
    if few_rows:
        return kernels().skinny_linear_q(x2, weight.reshape(weight.shape[0], -1), kind_of(weight))
    return F.linear(x2, dequantize(weight))


def rows(weight: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """weight[index] as fp32 rows: an embedding lookup in either format."""
    if not is_quantized(weight):
        return weight[index]
    return dequantize(weight[index.reshape(-1)]).reshape(*index.shape, row_weights(weight))
