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


def test_disaggregation_workload_is_deterministic_and_the_table_renders():
    """benchmarks/disaggregation.py starts 5 server processes (minutes on 2 cores), so
    this checks its parts without them: the seeded schedule and the table."""
    bench = load_script("disaggregation.py")
    mix, corpus = bench.FULL, list(range(20_000))
    items = bench.make_workload(corpus, mix, seed=0)
    assert items == bench.make_workload(corpus, mix, seed=0)
    assert items != bench.make_workload(corpus, mix, seed=1)
    assert [i.index for i in items] == list(range(len(items)))
    assert [i.send_s for i in items] == sorted(i.send_s for i in items)
    assert all(0 <= i.send_s < mix.duration_s for i in items)
    shorts = [i for i in items if i.kind == "short"]
    longs = [i for i in items if i.kind == "long"]
    assert len(longs) == mix.long_count and len(shorts) > mix.short_rate * mix.duration_s / 2
    for group, (lo, hi), out in ((shorts, mix.short_prompt, mix.short_output),
                                 (longs, mix.long_prompt, mix.long_output)):
        assert all(lo <= len(i.prompt_ids) <= hi and i.output_len == out for i in group)
    # windows of the corpus: consecutive ids
    assert all(list(i.prompt_ids) == list(range(i.prompt_ids[0], i.prompt_ids[-1] + 1))
               for i in items)
    assert bench.sse_text(b'data: {"choices": [{"text": "Hel"}]}\n\n'
                          b'data: {"choices": [{"text": "lo"}]}\n\ndata: [DONE]\n\n') == "Hello"

    def fake_run(setup: str, scale: float) -> dict:
        records = [bench.RequestRecord(i.index, i.output_len, len(i.prompt_ids), success=True,
                                       send_s=i.send_s, ttft_s=0.2 * scale,
                                       e2e_s=0.2 * scale + 0.05 * (i.output_len - 1),
                                       itl_s=[0.05] * (i.output_len - 1),
                                       output_tokens=i.output_len) for i in items]
        return {"setup": setup, **bench.summarize_run(records, items),
                "server_stats": {"prefill": {"num_computed_prompt_tokens": 9000},
                                 "decode": {"num_computed_prompt_tokens": 0,
                                            "kv_transfer_num_loaded": len(items)}},
                "pd_proxy": {"requests": len(items), "prefilled": len(items)},
                "router": {"requests_per_replica": [40, 41]}}

    results = {"workload": "fake", "machine": "x86_64, 2 cores", "cpu_flags": ["avx2"],
               "pinning": "none", "load_before": 0.0,
               "runs": [fake_run("colocated", 1), fake_run("pd", 2), fake_run("dp", 1)],
               "same_text": {"pd": 1.0, "dp": 0.5}}
    table = bench.render(results)
    assert "colocated" in table and "P/D split" in table and "2x DP least_load" in table
    assert "CPU flags: avx2" in table and "not GPU figures" in table
    ttft_row = next(line for line in table.splitlines() if line.startswith("short TTFT mean"))
    assert ttft_row.split()[4:] == ["200.0", "400.0", "2.00x", "200.0", "1.00x"]
    assert "100%" in table and "50%" in table and "sent 40 and 41 requests" in table
