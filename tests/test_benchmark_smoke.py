"""Smoke test of benchmarks/throughput.py: tiny sizes, kvscope only, the table prints."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "throughput.py"


@pytest.fixture(scope="module")
def throughput():
    spec = importlib.util.spec_from_file_location("kvscope_bench_throughput", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


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
