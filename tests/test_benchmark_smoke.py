"""Smoke tests of benchmarks/throughput.py and cpu_matrix.py: tiny sizes, kvscope only,
the table prints."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(f"kvscope_bench_{name}", BENCHMARKS / name)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def throughput():
    return load_script("throughput.py")


def test_quick_run_prints_the_table(throughput, loaded_bf16, capsys, tmp_path):
    save = tmp_path / "result.json"
    results = throughput.main(
        ["--quick", "--skip-hf", "--num-requests", "3", "--output-len", "4",
         "--batch1-tokens", "3", "--kv-cache-memory", str(64 << 20), "--save", str(save)],
        loaded=loaded_bf16)
    out = capsys.readouterr().out
    assert "kvscope (continuous)" in out
    assert "batch-1 decode" in out and "matmul peak" in out and "KV cache" in out
    assert [r["engine"] for r in results["throughput"]] == ["kvscope (continuous)"]
    assert results["workload"]["output_tokens"] == 3 * 4
    assert results["kv"]["peak_blocks"] > 0
    assert save.exists()


def test_workload_is_deterministic(throughput):
    sizes = throughput.QUICK
    corpus = list(range(10_000))
    a = throughput.make_prompts(corpus, sizes, seed=0)
    assert a == throughput.make_prompts(corpus, sizes, seed=0)
    assert all(sizes.min_prompt <= len(p) <= sizes.max_prompt for p in a)
    assert "assert" in throughput.corpus_text()  # the Language Reference is there


def test_cpu_matrix_quick_run_prints_the_table(capsys):
    cpu_matrix = load_script("cpu_matrix.py")
    results = cpu_matrix.main(["--quick", "--skip-hf", "--formats", "q4,int8"])
    out = capsys.readouterr().out
    assert "float32 matmul peak" in out and "memory copy" in out and "kernels built for" in out
    engines = [r["engine"] for r in results["rows"]]
    assert engines == ["kvscope Q4_1 GGUF", "kvscope int8"]
    q4, int8 = results["rows"]
    assert q4["weights"] == "q4 (120), q8 (1); int8 activations"
    assert int8["weights"] == "q8 (121)"
    # bytes per weight: q4 4 bits + a float32 scale and offset per 32, q8 8 bits + a scale
    assert q4["bytes_per_token"] < int8["bytes_per_token"] < 2 * q4["bytes_per_token"]
    assert q4["output_tok_s"] > 0 and q4["batch1_tok_s"] > 0
