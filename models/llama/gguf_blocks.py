"""A loaded model's linear weights swapped for the GGUF's own Q8_0 / Q4_1 blocks (--weights gguf).

The fp32 model was built from the GGUF by transformers' reader, which renames, permutes rows (a
Llama GGUF's q and k rows are interleaved per head) and concatenates (our fused qkv and gate/up)
on the way. Instead of restating those rules per architecture, each fp32 weight row is found
among the GGUF's dequantized rows by its bits: a weight whose every row is found in blocks of one
kind gets those blocks, in its own row order, and is then checked to dequantize to exactly its
fp32 self. So the swap changes no output by construction, and a weight the GGUF stores another
way (F32, K-quants) simply stays fp32.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import numpy as np
import torch
from loguru import logger
from torch import nn

from models.common import quantized
from models.common.cpu_kernels import skinny_kernels
from models.common.errors import UserError

_HASH_SEED = 0x5EED
CACHE_FILE = "gguf-blocks.safetensors"  # in the GGUF's converted checkpoint folder
FINGERPRINT_COLUMNS = 64


@dataclasses.dataclass
class SwapReport:
    swapped: int  # weights now held as blocks
    kept: int  # 2-D weights left fp32 (no blocks of a supported kind hold them)
    bytes_before: int
    bytes_after: int

    def describe(self) -> str:
        return (f"{self.swapped} weights read as GGUF blocks, {self.kept} kept fp32: "
                f"{self.bytes_before / 2**20:.0f} MiB -> {self.bytes_after / 2**20:.0f} MiB")


def _row_hashes(rows: torch.Tensor, mix: torch.Tensor) -> torch.Tensor:
    """A 64-bit fingerprint per fp32 row: the bits of FINGERPRINT_COLUMNS spread columns times
    fixed odd numbers, summed with wrap-around (a row is then checked whole, see _blocks_for)."""
    cols = torch.linspace(0, rows.shape[1] - 1, min(FINGERPRINT_COLUMNS, rows.shape[1])).long()
    return (rows[:, cols].contiguous().view(torch.int32).to(torch.int64) * mix[: len(cols)]).sum(dim=1)


Spots = dict[tuple[int, int], list[tuple[int, int]]]  # (row length, fingerprint) -> [(matrix, row)]


def _gguf_blocks(gguf: Path, mix: torch.Tensor, lengths: set[int]) -> tuple[list[torch.Tensor], Spots]:
    """Every Q8_0 / Q4_1 matrix in the file whose rows are as long as some weight's (lengths), as a
    quantized weight (models/common/quantized.py), and where each fingerprint's rows are."""
    from gguf import GGUFReader

    found: list[torch.Tensor] = []
    where: Spots = {}
    for tensor in GGUFReader(gguf).tensors:
        kind = quantized.KINDS.get(tensor.tensor_type.name)
        if kind is None or len(tensor.shape) != 2:
            continue
        k = int(tensor.shape[0])
        if k not in lengths:
            continue
        raw = torch.from_numpy(np.array(tensor.data, copy=True)).reshape(int(tensor.shape[1]), -1)
        blocks = quantized.of_blocks(raw, tensor.tensor_type.name)
        hashes = _row_hashes(quantized.dequantize(blocks), mix).tolist()
        index = len(found)
        found.append(blocks)
        for row, h in enumerate(hashes):
            where.setdefault((k, h), []).append((index, row))
    return found, where


def _pick(row: torch.Tensor, candidates: list[tuple[int, int]], found: list[torch.Tensor]) -> tuple[int, int] | None:
    """The candidate GGUF row that dequantizes to exactly this row (rows that share a fingerprint)."""
    if len(candidates) == 1:
        return candidates[0]
    for m, r in candidates:
        if torch.equal(quantized.dequantize(found[m][r : r + 1])[0], row):
            return m, r
    return None


def _blocks_for(weight: torch.Tensor, found: list[torch.Tensor], where: Spots,
                mix: torch.Tensor) -> torch.Tensor | None:
    """The blocks that dequantize to exactly this fp32 weight, or None."""
    k, weight = weight.shape[1], weight.detach()
    spots = []
    for i, h in enumerate(_row_hashes(weight, mix).tolist()):
        candidates = where.get((k, h))
        spots.append(_pick(weight[i], candidates, found) if candidates else None)
    if not spots or None in spots or len({found[m].shape[1:] for m, _ in spots}) != 1:
        return None
    by_matrix: dict[int, list[int]] = {}
    for m, r in spots:
        by_matrix.setdefault(m, []).append(r)
    if len(by_matrix) == 1:  # the common case: one GGUF matrix, maybe with its rows permuted
        (m, picked), = by_matrix.items()
        blocks = found[m][torch.tensor(picked)]
    else:
        blocks = torch.stack([found[m][r] for m, r in spots])
    if not torch.equal(quantized.dequantize(blocks), weight):
        return None  # a fingerprint collision: keep the fp32 weight
    return blocks


def _check_runs_here(params: list[nn.Parameter]) -> None:
    if skinny_kernels() is None:
        raise UserError("--weights gguf needs the CPU kernels (AVX2, FMA, F16C and a C++ compiler), which are "
                        "not available here; use --weights fp32")
    if any(p.device.type != "cpu" or (p.is_floating_point() and p.dtype != torch.float32) for p in params):
        raise UserError("--weights gguf runs fp32 on the CPU (--device cpu --dtype float32); use --weights fp32")


def _match(params: dict[str, nn.Parameter], gguf: Path) -> dict[str, torch.Tensor]:
    """name -> blocks for every 2-D weight the GGUF holds as Q8_0 / Q4_1 blocks."""
    mix = torch.randint(1, 2**62, (FINGERPRINT_COLUMNS,), generator=torch.Generator().manual_seed(_HASH_SEED),
                        dtype=torch.int64) | 1
    logger.info(f"matching the model's weights to {gguf.name}'s blocks (once; cached beside the checkpoint)")
    found, where = _gguf_blocks(gguf, mix, {p.shape[1] for p in params.values() if p.dim() == 2})
    matched = {}
    for name, p in params.items():
        blocks = _blocks_for(p, found, where, mix) if p.dim() == 2 else None
        if blocks is not None:
            matched[name] = blocks
    return matched


def _cached(path: Path | None, params: dict[str, nn.Parameter]) -> dict[str, torch.Tensor] | None:
    """The matched blocks a earlier load saved, if it checked every weight this model has."""
    if path is None or not path.is_file():
        return None
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        checked = set(json.loads((f.metadata() or {}).get("checked", "[]")))
        if not {n for n, p in params.items() if p.dim() == 2} <= checked:
            return None
        blocks = {n: f.get_tensor(n) for n in f.keys() if n in params}
    fits = all(quantized.is_quantized(b) and b.dim() == 3 and (b.shape[0], quantized.row_weights(b)) ==
               tuple(params[n].shape) for n, b in blocks.items())
    return blocks if fits else None


def _save(path: Path, matched: dict[str, torch.Tensor], params: dict[str, nn.Parameter]) -> None:
    """Atomically: a later load reads this instead of matching again."""
    from safetensors.torch import save_file

    checked = json.dumps(sorted(n for n, p in params.items() if p.dim() == 2))
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    try:
        save_file({n: b.contiguous() for n, b in matched.items()}, str(tmp), metadata={"checked": checked})
        tmp.replace(path)
    except OSError as exc:  # a read-only cache: the next load matches again
        logger.warning(f"could not cache the GGUF block match in {path.parent} ({exc}); matching again next time")
        tmp.unlink(missing_ok=True)


def swap_parameters(model: nn.Module, new: dict[int, torch.Tensor]) -> None:
    """Replace, in place, each parameter whose id is a key by its frozen new tensor (a parameter
    shared by several modules stays shared)."""
    swapped = {key: nn.Parameter(t, requires_grad=False) for key, t in new.items()}
    for module in model.modules():
        for name, p in list(module._parameters.items()):
            if p is not None and id(p) in swapped:
                module._parameters[name] = swapped[id(p)]


def use_bf16_blocks(model: nn.Module) -> None:
    """Swap, in place, every 2-D fp32 weight of model whose values are all bfloat16 (a shipped
    speculator head's, widened on load) for BF16 blocks: half the bytes, the same bits."""
    params = [p for p in model.parameters() if not quantized.is_quantized(p)]  # each shared one once
    _check_runs_here(params)
    swap_parameters(model, {id(p): b for p in params if (b := quantized.bf16_blocks(p)) is not None})


def use_gguf_blocks(model: nn.Module, gguf: Path, cache_folder: Path | None = None) -> SwapReport:
    """Swap, in place, every 2-D fp32 weight of model that the GGUF holds as Q8_0 / Q4_1 blocks
    (tied weights stay tied). The match is cached in cache_folder (the GGUF's converted
    checkpoint). Needs the CPU kernels and an fp32 model on the CPU."""
    params = dict(model.named_parameters())
    _check_runs_here(list(params.values()))
    path = cache_folder / CACHE_FILE if cache_folder is not None else None
    matched = _cached(path, params)
    if matched is None:
        matched = _match(params, gguf)
        if not matched:
            raise UserError(f"--weights gguf: {gguf.name} holds none of this model's weights as Q8_0 or Q4_1 blocks, "
                            f"the kinds the CPU kernels read; use --weights fp32")
        if path is not None:
            _save(path, matched, params)
    swap_parameters(model, {id(params[n]): b for n, b in matched.items()})
    report = SwapReport(len(matched), sum(p.dim() == 2 for p in params.values()) - len(matched),
                        sum(p.numel() * p.element_size() for p in params.values()),
                        sum(p.numel() * p.element_size() for p in model.parameters()))
    logger.info(report.describe())
    return report
