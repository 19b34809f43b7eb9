"""How much memory a run's KV caches need, checked before they are allocated.

A cache is preallocated for --max_seq_len tokens, so a length the machine cannot hold would
otherwise end in an allocator traceback halfway through building the engine.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from models.common.errors import UserError

HEADROOM = 0.9  # of the memory available now: activations, logits and the allocator need the rest
GIB = 2**30


def available_bytes(device: torch.device) -> int | None:
    """Memory a new allocation can take on `device` now (None when it cannot be told)."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def check_kv_caches_fit(bytes_per_token: int, max_seq_len: int, batch_size: int, device: torch.device,
                        what: str) -> None:
    """One line naming the estimate and the longest --max_seq_len that fits, when the caches
    (bytes_per_token summed over every cache the run allocates) cannot fit in memory."""
    available = available_bytes(device)
    need = bytes_per_token * max_seq_len * batch_size
    if available is None or need <= HEADROOM * available:
        return
    fits = int(HEADROOM * available // (bytes_per_token * batch_size))
    raise UserError(
        f"--max_seq_len {max_seq_len} x --batch_size {batch_size} needs {need / GIB:.1f} GiB of KV cache ({what}), "
        f"but {device.type} has {available / GIB:.1f} GiB available; at most --max_seq_len {fits} fits"
    )
