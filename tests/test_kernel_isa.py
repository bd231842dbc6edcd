"""The kernels the engine runs are built for the best instruction set this CPU has:
a build that silently fell back to a narrower one fails here."""

from __future__ import annotations

from pathlib import Path

import pytest

from kvscope.kernels import build

AVX512 = {"avx512f", "avx512bw", "avx512vl", "avx512dq", "avx2", "fma", "f16c"}


def expected_isa() -> str:
    """Read from /proc/cpuinfo here, independently of build.py's own detection."""
    flags: set[str] = set()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith(("flags", "Features")):
                flags = set(line.partition(":")[2].split())
                break
    if flags >= AVX512 | {"avx512_vnni", "avx512_bf16"}:
        return "avx512_bf16"
    if flags >= AVX512:
        return "avx512_vnni" if "avx512_vnni" in flags else "avx512"
    if {"avx2", "fma", "f16c"} <= flags:
        return "avx2"
    return "generic"


def test_the_engine_kernels_are_built_for_this_cpus_best_instruction_set(monkeypatch):
    monkeypatch.delenv("KVSCOPE_KERNEL_ISA", raising=False)
    kernels = build.cpu_kernels()
    if kernels is None:
        pytest.skip("C++ kernels could not be built here")
    assert build.best_isa() == expected_isa()
    assert kernels.isa() == expected_isa()
    lanes = {"avx512_bf16": 16, "avx512_vnni": 16, "avx512": 16, "avx2": 8, "generic": 8}
    assert kernels.vector_lanes() == lanes[expected_isa()]
    # only the AVX512-BF16 build multiplies bf16 pairs natively
    assert kernels.small_gemm_bf16_dot() == (expected_isa() == "avx512_bf16")


def test_a_lower_instruction_set_can_be_asked_for(monkeypatch):
    lower = [isa for isa in build.ISAS if build.runs_here(isa)][1:]
    if not lower:
        pytest.skip("this CPU runs only the generic build")
    monkeypatch.setenv("KVSCOPE_KERNEL_ISA", lower[0])
    assert build.selected_isa() == lower[0]  # what a new process's cpu_kernels() builds
    kernels = build.kernels_for(build.selected_isa())
    if kernels is None:
        pytest.skip("C++ kernels could not be built here")
    assert kernels.isa() == lower[0]


def test_an_instruction_set_the_cpu_lacks_is_refused(monkeypatch, caplog):
    missing = [isa for isa in build.ISAS if not build.runs_here(isa)]
    if not missing:
        pytest.skip("this CPU runs every build")
    monkeypatch.setenv("KVSCOPE_KERNEL_ISA", missing[0])
    assert build.selected_isa() == build.best_isa()
    assert f"KVSCOPE_KERNEL_ISA={missing[0]} is not one this CPU runs" in caplog.text
    with pytest.raises(ValueError, match=f"cannot run kernels built for {missing[0]}"):
        build.kernels_for(missing[0])


AARCH64_CXX = "aarch64-linux-gnu-g++"


def test_the_kernels_compile_for_aarch64():
    """Every kernel source compiles for 64-bit Arm (the build an Arm machine takes: plain
    arrays that the compiler turns into NEON code), with a cross compiler and torch's
    own headers; object code only, since nothing here can run it."""
    import shutil
    import subprocess
    import sysconfig
    import tempfile
    from concurrent.futures import ThreadPoolExecutor

    from torch.utils.cpp_extension import include_paths

    if shutil.which(AARCH64_CXX) is None:
        pytest.skip(f"no {AARCH64_CXX} (scripts/setup-env installs g++-aarch64-linux-gnu)")
    here = Path(build.__file__).parent
    includes = [f"-I{p}" for p in [*include_paths(), sysconfig.get_paths()["include"], here]]
    with tempfile.TemporaryDirectory() as out:
        def compile_one(source: str) -> subprocess.CompletedProcess:
            return subprocess.run(
                [AARCH64_CXX, "-std=c++20", "-O0", "-fopenmp", "-fPIC", *includes,
                 "-DTORCH_EXTENSION_NAME=kvscope_aarch64_check", "-c", str(here / source),
                 "-o", str(Path(out) / f"{source}.o")],
                capture_output=True, text=True, check=False)

        with ThreadPoolExecutor(max_workers=2) as pool:
            results = dict(zip(build.SOURCES, pool.map(compile_one, build.SOURCES), strict=True))
    failed = {name: r.stderr[-2000:] for name, r in results.items() if r.returncode != 0}
    assert not failed, failed
