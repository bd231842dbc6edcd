"""Where kvscope keeps what it builds once and reuses: converted tokenizers, compiled
kernels, packaged models assembled from their parts. `$KVSCOPE_CACHE`, else
~/.cache/kvscope."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    root = os.environ.get("KVSCOPE_CACHE") or Path.home() / ".cache" / "kvscope"
    return Path(root)
