"""This machine's roofline, measured: the matmul peak (GFLOP/s) in the model's dtype
and the memory bandwidth (GB/s) of a large copy, each the best of a few runs with
the threads the engine uses. Measured the first time a lesson asks, then kept for
the life of the process (`measure_again` replaces it). Beside it, an H100's roofline
computed from its published spec sheet, which nothing here measured."""

from __future__ import annotations

import platform
import threading
import time
from pathlib import Path
from typing import Any

import torch

from kvscope.scope.inside.common import rounded

MATMUL_SIZE = 2048
COPY_BYTES = 256 << 20
REPEATS = 5
H100 = {"name": "NVIDIA H100 SXM", "peak_gflops": 989_000.0, "bandwidth_gbs": 3350.0,
        "source": "computed from NVIDIA's published H100 SXM spec: 989 TFLOP/s dense BF16 "
                  "tensor-core math, 3.35 TB/s HBM3; not measured", "measured": False}

_lock = threading.Lock()
_measured: dict[torch.dtype, dict[str, Any]] = {}


def machine_roofline(dtype: torch.dtype, measure_again: bool = False) -> dict[str, Any]:
    with _lock:
        if measure_again or dtype not in _measured:
            _measured[dtype] = _measure(dtype)
        return dict(_measured[dtype])


def gpu_roofline() -> dict[str, Any]:
    return {**H100, "ridge": rounded(H100["peak_gflops"] / H100["bandwidth_gbs"])}


def _measure(dtype: torch.dtype) -> dict[str, Any]:
    peak = _matmul_gflops(dtype)
    bandwidth = _copy_gbs()
    name = str(dtype).removeprefix("torch.")
    return {"peak_gflops": rounded(peak), "bandwidth_gbs": rounded(bandwidth),
            "ridge": rounded(peak / bandwidth),
            "method": f"peak: torch.mm of two {MATMUL_SIZE}x{MATMUL_SIZE} {name} matrices; "
                      f"bandwidth: a copy of {COPY_BYTES >> 20} MiB (bytes read + written); "
                      f"best of {REPEATS}, {torch.get_num_threads()} threads",
            "cpu": cpu_description(), "measured": True}


def _best_seconds(fn: Any) -> float:
    fn()  # warm up
    best = float("inf")
    for _ in range(REPEATS):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def _matmul_gflops(dtype: torch.dtype) -> float:
    a = torch.randn(MATMUL_SIZE, MATMUL_SIZE).to(dtype)
    b = torch.randn(MATMUL_SIZE, MATMUL_SIZE).to(dtype)
    out = torch.empty(MATMUL_SIZE, MATMUL_SIZE, dtype=dtype)
    seconds = _best_seconds(lambda: torch.mm(a, b, out=out))
    return 2 * MATMUL_SIZE ** 3 / seconds / 1e9


def _copy_gbs() -> float:
    src = torch.ones(COPY_BYTES // 4)
    dst = torch.empty_like(src)
    seconds = _best_seconds(lambda: dst.copy_(src))
    return 2 * COPY_BYTES / seconds / 1e9


def cpu_description() -> str:
    """The CPU's model name and the vector features that decide kvscope's kernels."""
    name, flags = platform.processor() or platform.machine(), set()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                name = value.strip()
            elif key.strip() in ("flags", "Features"):
                flags = set(value.split())
                break
    wanted = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "asimd", "sve")
    present = [f for f in wanted if f in flags]
    return f"{name}, {torch.get_num_threads()} threads" + (
        f" ({' '.join(present)})" if present else "")
