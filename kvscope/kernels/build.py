"""CPU kernels in C++ (decode and prefill attention, fused norms/activations/RoPE,
small bf16 GEMMs), compiled on first use with torch's extension builder and cached
under ~/.cache/kvscope.

They exist because on CPU the torch versions spend most of their time moving
memory: the decode attention gathers every sequence's blocks into a padded copy,
each prefill chunk gathers its context and runs its own SDPA call, and each
element-wise layer is several passes. Building needs a C++ compiler; without
one (or with KVSCOPE_NO_KERNELS=1) the pure-torch paths run, with the same results
to rounding.

One source, one module per instruction set: the kernels are written on the vector
type of `vec.h`, and each build's compiler flags choose its width (AVX-512, AVX2 +
FMA, or plain arrays that the compiler vectorises, NEON on aarch64). At run time
the best set this CPU has is chosen from its feature flags; KVSCOPE_KERNEL_ISA names
a lower one (for comparison, or to test it on a bigger machine).

Each source includes only the torch headers it uses (`ATen/core/Tensor.h` and the
`ATen/ops/` headers of the functions it calls; `torch/csrc/utils/pybind.h` where it
binds to Python), not `ATen/ATen.h` or `torch/extension.h`: parsing those was half
of each build (one instruction set on 2 cores: 116 s with them, 60 s without).
"""

from __future__ import annotations

import hashlib
import logging
import os
import platform
from functools import cache
from pathlib import Path
from types import ModuleType

logger = logging.getLogger(__name__)

SOURCES = ["bindings.cpp", "paged_decode.cpp", "paged_prefill.cpp", "fused_ops.cpp",
           "small_gemm.cpp", "quant_gemm.cpp", "int8_gemm.cpp", "kv_write.cpp",
           "decode_stack.cpp"]
_AVX512 = ["avx512f", "avx512bw", "avx512vl", "avx512dq", "avx2", "fma", "f16c"]
# best first: each set's compiler flags and the CPU flags (/proc/cpuinfo) it needs
ISAS: dict[str, list[str]] = {
    "avx512_bf16": [*_AVX512, "avx512vnni", "avx512bf16"],  # every such CPU has VNNI too
    "avx512_vnni": [*_AVX512, "avx512vnni"],  # int8 dot products (kernels/int8_gemm.cpp)
    "avx512": _AVX512,
    "avx2": ["avx2", "fma", "f16c"],
    "generic": [],
}
# where /proc/cpuinfo spells a flag otherwise
_CPUINFO_NAMES = {"avx512bf16": "avx512_bf16", "avx512vnni": "avx512_vnni"}
_modules: dict[str, ModuleType | None] = {}


@cache
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags as Linux lists them (x86 `flags`, Arm `Features`); on
    other systems, what torch's own dispatch detected."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() in ("flags", "Features"):
                return frozenset(value.split())
    except OSError:
        pass
    import torch

    capability = torch.backends.cpu.get_cpu_capability()
    if capability.startswith("AVX512"):
        flags = {_CPUINFO_NAMES.get(f, f) for f in ISAS["avx512"]}
        if torch._C._cpu._is_avx512_bf16_supported():
            flags.add("avx512_bf16")
        return frozenset(flags)
    return frozenset(ISAS["avx2"] if capability == "AVX2" else [])


def runs_here(isa: str) -> bool:
    """True when this CPU has every instruction `isa`'s build uses."""
    if platform.machine().lower() not in ("x86_64", "amd64") and isa != "generic":
        return False
    return all(_CPUINFO_NAMES.get(f, f) in cpu_flags() for f in ISAS[isa])


def best_isa() -> str:
    return next(isa for isa in ISAS if runs_here(isa))


def selected_isa() -> str:
    """The instruction set the engine's kernels are built for: the best this CPU
    runs, or KVSCOPE_KERNEL_ISA if that names one it runs."""
    wanted = os.environ.get("KVSCOPE_KERNEL_ISA")
    if wanted:
        if wanted in ISAS and runs_here(wanted):
            return wanted
        logger.warning("KVSCOPE_KERNEL_ISA=%s is not one this CPU runs (%s); using %s",
                       wanted, ", ".join(i for i in ISAS if runs_here(i)), best_isa())
    return best_isa()


@cache
def cpu_kernels() -> ModuleType | None:
    """The compiled module for the selected instruction set, or None where it cannot
    be built (or KVSCOPE_NO_KERNELS=1). Called for every kernel call, so chosen once
    per process."""
    if os.environ.get("KVSCOPE_NO_KERNELS") == "1":
        return None
    return kernels_for(selected_isa())


def kernel_isa() -> str:
    """What the engine's kernels run on, for logs: the build's instruction set, or why
    there are none."""
    if os.environ.get("KVSCOPE_NO_KERNELS") == "1":
        return "none (KVSCOPE_NO_KERNELS=1: torch paths)"
    kernels = cpu_kernels()
    return kernels.isa() if kernels is not None else "none (build failed: torch paths)"


def kernels_for(isa: str) -> ModuleType | None:
    """The module built for `isa` (which this CPU must run), or None where it cannot be
    built; built once per process."""
    if isa not in _modules:
        if not runs_here(isa):
            raise ValueError(f"this CPU cannot run kernels built for {isa}")
        try:
            _modules[isa] = _build(isa)
        except Exception as exc:  # a missing compiler must not stop the engine
            logger.warning("C++ kernels unavailable (%s); using the torch paths", exc)
            _modules[isa] = None
    return _modules[isa]


def _build(isa: str) -> ModuleType:
    from torch.utils.cpp_extension import load

    from kvscope.paths import cache_dir

    here = Path(__file__).parent
    # the headers' text joins the build flags, so editing a header rebuilds too
    digest = hashlib.sha256(b"".join(p.read_bytes() for p in sorted(here.glob("*.h"))))
    # one build directory per checkout and instruction set: torch rebuilds whenever the
    # source paths differ, so two checkouts sharing a directory would recompile at every
    # switch
    checkout = hashlib.sha256(str(here.resolve()).encode()).hexdigest()[:12]
    build_dir = cache_dir() / "kernels" / checkout / isa
    build_dir.mkdir(parents=True, exist_ok=True)
    return load(
        name=f"kvscope_cpu_kernels_{isa}",
        sources=[str(here / name) for name in SOURCES],
        extra_include_paths=[str(here)],
        extra_cflags=["-O3", "-fopenmp", *(f"-m{flag}" for flag in ISAS[isa]),
                      f"-DKVSCOPE_HEADERS={digest.hexdigest()[:12]}"],
        extra_ldflags=["-fopenmp"],
        build_directory=str(build_dir),
        verbose=False,
    )
