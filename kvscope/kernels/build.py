"""CPU kernels in C++ (decode and prefill attention, fused norms/activations/RoPE,
small bf16 GEMMs), compiled once on first use with torch's extension builder and
cached under ~/.cache/kvscope.

They exist because on CPU the torch versions spend most of their time moving
memory: the decode attention gathers every sequence's blocks into a padded copy,
each prefill chunk gathers its context and runs its own SDPA call, and each
element-wise layer is several passes. Building needs a C++ compiler; without
one (or with KVSCOPE_NO_KERNELS=1) the pure-torch paths run, with the same results
to rounding.
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path
from types import ModuleType

logger = logging.getLogger(__name__)

_SOURCES = ["bindings.cpp", "paged_decode.cpp", "paged_prefill.cpp", "fused_ops.cpp",
            "small_gemm.cpp"]
_module: ModuleType | None = None
_tried = False


def cpu_kernels() -> ModuleType | None:
    """The compiled module, or None where it cannot be built."""
    global _module, _tried
    if not _tried:
        _tried = True
        if os.environ.get("KVSCOPE_NO_KERNELS") != "1":
            try:
                _module = _build()
            except Exception as exc:  # a missing compiler must not stop the engine
                logger.warning("C++ kernels unavailable (%s); using the torch paths", exc)
    return _module


def _build() -> ModuleType:
    from torch.utils.cpp_extension import load

    from kvscope.paths import cache_dir

    here = Path(__file__).parent
    # the headers' text joins the build flags, so editing simd.h rebuilds too
    digest = hashlib.sha256(b"".join(p.read_bytes() for p in sorted(here.glob("*.h"))))
    # one build directory per checkout: torch rebuilds whenever the source paths differ,
    # so two checkouts sharing a directory would recompile at every switch
    checkout = hashlib.sha256(str(here.resolve()).encode()).hexdigest()[:12]
    build_dir = cache_dir() / "kernels" / checkout
    build_dir.mkdir(parents=True, exist_ok=True)
    return load(
        name="kvscope_cpu_kernels",
        sources=[str(here / name) for name in _SOURCES],
        extra_include_paths=[str(here)],
        extra_cflags=["-O3", "-march=native", "-fopenmp",
                      f"-DKVSCOPE_HEADERS={digest.hexdigest()[:12]}"],
        extra_ldflags=["-fopenmp"],
        build_directory=str(build_dir),
        verbose=False,
    )
