"""The C++ decode-attention kernel, compiled once on first use and cached.

It reads K/V in place through the block tables instead of gathering them into a
padded copy, which on CPU is most of the cost of decode attention. Building needs a
C++ compiler; without one (or with KVSCOPE_NO_KERNELS=1) the pure-torch path runs.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from types import ModuleType

logger = logging.getLogger(__name__)

_SOURCE = Path(__file__).with_name("paged_decode.cpp")
_module: ModuleType | None = None
_failed = False


def decode_kernel() -> ModuleType | None:
    """The compiled module, or None where it cannot be built."""
    global _module, _failed
    if _module is not None or _failed:
        return _module
    if os.environ.get("KVSCOPE_NO_KERNELS") == "1":
        _failed = True
        return None
    try:
        _module = _build()
    except Exception as exc:  # a missing compiler must not stop the engine
        logger.warning("C++ decode kernel unavailable (%s); using the torch path", exc)
        _failed = True
    return _module


def _build() -> ModuleType:
    from torch.utils.cpp_extension import load

    from kvscope.model.tokenizer import cache_dir

    build_dir = cache_dir() / "kernels"
    build_dir.mkdir(parents=True, exist_ok=True)
    return load(
        name="kvscope_paged_decode",
        sources=[str(_SOURCE)],
        extra_cflags=["-O3", "-march=native", "-fopenmp", "-ffast-math"],
        extra_ldflags=["-fopenmp"],
        build_directory=str(build_dir),
        verbose=False,
    )
