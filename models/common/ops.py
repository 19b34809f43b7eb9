"""The math the lean model, the trained heads and their training share: a linear map and an RMS
norm that take the batch-invariant CPU kernels where they apply, torch's elsewhere."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from models.common import quantized
from models.common.cpu_kernels import skinny_kernels

SKINNY_MAX_ROWS = 64  # a token tree of up to 63 drafts + its root is verified in one pass


def cpu_kernels_for(x: torch.Tensor, rows: int | None):
    """The batch-invariant CPU kernels when they apply (fp32 on the CPU, few rows), else None.
    rows None: any number of rows (a batch of sequences, whose rows must each compute as alone).

    Decode, verify and draft steps all run through them, so a token's logits are bit-identical
    whether it was decoded alone or verified among k drafts: fp32 speculative output equals
    target-only output by construction, not by luck. Prefill (many rows) uses torch's kernels;
    both generators share it.
    """
    if x.device.type == "cpu" and x.dtype == torch.float32 and (rows is None or rows <= SKINNY_MAX_ROWS):
        if not (x.requires_grad and torch.is_grad_enabled()):  # no autograd through the kernels
            return skinny_kernels()
    return None


def linear(x: torch.Tensor, weight: torch.Tensor, any_rows: bool = False) -> torch.Tensor:
    """x [..., K] @ weight[N, K]^T. any_rows: the batch-invariant kernel whatever the row count.
    weight may be quantized (models/common/quantized.py): the same bits, fewer bytes."""
    shape = x.shape
    x2 = x.reshape(-1, shape[-1])
    kernels = cpu_kernels_for(x2, None if any_rows else x2.shape[0])
    if quantized.is_quantized(weight):
        return quantized.linear(x2, weight, few_rows=kernels is not None).reshape(*shape[:-1], weight.shape[0])
    if kernels is not None:
        return kernels.skinny_linear(x2, weight).reshape(*shape[:-1], weight.shape[0])
    return F.linear(x, weight)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    if x.dtype == torch.float32:  # one fused op; the reference's upcast is a no-op in fp32
        return F.rms_norm(x, weight.shape, weight, eps)
    xf = x.float()
    xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return weight * xf.to(x.dtype)
