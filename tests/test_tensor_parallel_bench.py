"""Smoke test of benchmarks/tensor_parallel.py: tiny sizes at tp=1 and tp=2, without the
old-commit comparison; the table prints both rows and tp=2 counts its collectives."""

from __future__ import annotations

import importlib.util
import sys
import types
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "tensor_parallel.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("kvscope_bench_tensor_parallel", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_quick_run_prints_both_rows(bench, loaded_fp32, capsys, tmp_path):
    save = tmp_path / "tp.json"
    results = bench.main(["--quick", "--skip-baseline", "--num-requests", "3",
                          "--output-len", "4", "--batch1-tokens", "3", "--save", str(save)],
                         loaded=loaded_fp32)
    out = capsys.readouterr().out
    rows = [line.split() for line in out.splitlines() if line.startswith("engine-core")]
    assert [row[2] for row in rows] == ["1", "2"]  # the tp column
    assert sum(line.startswith("batch-1 decode") for line in out.splitlines()) == 2
    assert "PROJECTION (computed, not measured)" in out
    tp1, tp2 = results["tp"]
    assert tp1["step_figures"]["collectives_per_step"] == 0
    assert tp2["step_figures"]["collectives_per_step"] > 0
    assert tp2["batch1"]["step_figures"]["collectives_per_step"] > 0
    assert tp2["same_as_tp1"] == 1.0  # fp32: tp=2 generates what tp=1 does
    assert results["refactor"] is None and save.exists()


def test_projection_arithmetic(bench):
    arch = types.SimpleNamespace(num_layers=2, hidden_size=4, vocab_size=10)
    steps = {"tokens_per_step": 3, "sampled_per_step": 2, "collectives_per_step": 6,
             "collective_ms_per_step": 6.0, "collective_us_each": 1000.0}
    p = bench.project(steps, arch, itemsize=4, tp=2, latency_us=10, bus_gbs=1)
    # 5 all-reduces of 3x4 floats (48 B each, moved once at n=2) and one all-gather of
    # 2x10 floats (half of its 80 B moved): 6 x 10 us + 280 B / 1 GB/s
    assert p["bytes_per_step"] == 5 * 48 + 80
    assert p["nccl_ms_per_step"] == pytest.approx(6 * 10e-3 + 280e-9 * 1e3)
