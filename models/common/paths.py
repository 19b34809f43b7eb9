"""Where the suite keeps what it makes once and reuses: converted checkpoints, joined GGUFs,
measured verify costs."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    return Path(os.environ.get("SPECDEC_CACHE_DIR", Path.home() / ".cache" / "speculative_decoding"))
