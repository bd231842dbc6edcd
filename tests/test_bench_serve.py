"""`kvscope bench serve`: statistics on hand-made timings, the Poisson arrivals, the
corpus workload, and one end-to-end run against a real kvscope server."""

from __future__ import annotations

import asyncio
import itertools
import json
import math
import socket
import statistics

import pytest

from kvscope.bench.client import chunk_text, request_body
from kvscope.bench.serve_stats import (
    Distribution,
    RequestRecord,
    format_summary,
    meets_slos,
    parse_slos,
    summarize,
)
from kvscope.bench.workload import (
    BenchRequest,
    arrival_times,
    corpus_workload,
    dataset_workload,
    load_corpus,
)
from kvscope.cli import main
from kvscope.model.loader import LoadedModel
from tests.server_harness import MODEL_NAME, running_server

# -- statistics ---------------------------------------------------------------------------


def record(index: int, ttft: float, e2e: float, tokens: int, itl: list[float],
           prompt_tokens: int = 10) -> RequestRecord:
    return RequestRecord(index, tokens, success=True, ttft_s=ttft, e2e_s=e2e, itl_s=itl,
                         output_tokens=tokens, prompt_tokens=prompt_tokens)


def test_distribution_mean_median_p99():
    dist = Distribution.of([float(v) for v in range(1, 101)])
    assert dist.mean == pytest.approx(50.5)
    assert dist.median == pytest.approx(50.5)
    assert dist.p99 == pytest.approx(99.01)  # linear interpolation: 1 + 0.99 * 99
    odd = Distribution.of([5.0, 1.0, 3.0])
    assert (odd.mean, odd.median) == (pytest.approx(3.0), 3.0)
    assert odd.p99 == pytest.approx(3.0 + 0.98 * 2.0)
    assert all(math.isnan(v) for v in (Distribution.of([]).mean, Distribution.of([]).p99))


def test_tpot_formula():
    assert record(0, 0.1, 1.0, 10, []).tpot_s == pytest.approx(0.9 / 9)
    assert record(0, 0.2, 0.5, 2, [0.3]).tpot_s == pytest.approx(0.3)
    assert record(0, 0.2, 0.2, 1, []).tpot_s is None  # one token: no decode time
    assert RequestRecord(0, 8, error="boom").tpot_s is None


def test_summary_on_hand_made_timings():
    records = [
        record(0, ttft=0.100, e2e=0.400, tokens=4, itl=[0.1, 0.1, 0.1]),
        record(1, ttft=0.200, e2e=0.800, tokens=4, itl=[0.2, 0.2, 0.2], prompt_tokens=20),
        record(2, ttft=0.300, e2e=0.300, tokens=1, itl=[]),
        RequestRecord(3, 4, error="HTTP 503: overloaded"),
    ]
    summary = summarize(records, duration_s=2.0)
    assert (summary.completed, summary.failed) == (3, 1)
    assert (summary.prompt_tokens, summary.output_tokens) == (40, 9)
    assert summary.request_throughput == pytest.approx(1.5)
    assert summary.output_throughput == pytest.approx(4.5)
    assert summary.total_token_throughput == pytest.approx(24.5)
    assert summary.goodput is None
    assert summary.ttft_ms.mean == pytest.approx(200.0)
    assert summary.ttft_ms.median == pytest.approx(200.0)
    # TPOT only for requests with > 1 token: 300/3 = 100 ms and 600/3 = 200 ms
    assert summary.tpot_ms.mean == pytest.approx(150.0)
    # ITL pools every gap: three of 100 ms and three of 200 ms
    assert summary.itl_ms.mean == pytest.approx(150.0)
    assert summary.itl_ms.median == pytest.approx(150.0)
    assert summary.itl_ms.p99 == pytest.approx(200.0)
    assert summary.e2e_ms.mean == pytest.approx(500.0)
    assert summary.e2e_ms.p99 == pytest.approx(400 + 0.98 * 400)
    text = format_summary(summary, "t")
    assert "Successful requests" in text and "TPOT" in text and "Goodput" not in text


def test_goodput_counts_requests_meeting_every_slo():
    fast = record(0, ttft=0.1, e2e=0.5, tokens=5, itl=[0.1] * 4)   # tpot 100 ms
    slow_start = record(1, ttft=0.6, e2e=1.0, tokens=5, itl=[0.1] * 4)
    slow_decode = record(2, ttft=0.1, e2e=2.1, tokens=5, itl=[0.5] * 4)  # tpot 500 ms
    one_token = record(3, ttft=0.2, e2e=0.2, tokens=1, itl=[])
    failed = RequestRecord(4, 5, error="boom")
    slos = parse_slos(["ttft:500", "tpot:100"])
    assert slos == {"ttft": 500.0, "tpot": 100.0}
    assert [meets_slos(r, slos) for r in (fast, slow_start, slow_decode, one_token, failed)] \
        == [True, False, False, True, False]
    summary = summarize([fast, slow_start, slow_decode, one_token, failed], 4.0, slos)
    assert summary.goodput == pytest.approx(2 / 4.0)
    assert summarize([fast, slow_decode], 1.0, parse_slos(["e2e:1000"])).goodput == 1.0
    assert summarize([fast], 1.0, parse_slos(["tpot:99"])).goodput == 0.0


@pytest.mark.parametrize("spec", ["ttft", "ttft:", "itl:5", "ttft:-1", "ttft:fast"])
def test_bad_slo_is_rejected(spec):
    with pytest.raises(ValueError, match="goodput SLO"):
        parse_slos([spec])


# -- arrivals -----------------------------------------------------------------------------


def test_poisson_arrivals_are_seeded_with_mean_gap_one_over_rate():
    times = arrival_times(20_000, 4.0, seed=7)
    assert times == arrival_times(20_000, 4.0, seed=7)
    assert times != arrival_times(20_000, 4.0, seed=8)
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert times[0] == 0.0 and min(gaps) >= 0
    assert statistics.fmean(gaps) == pytest.approx(0.25, rel=0.03)
    # exponential gaps: the standard deviation equals the mean (fixed gaps would give 0)
    assert statistics.pstdev(gaps) == pytest.approx(0.25, rel=0.05)


def test_infinite_rate_sends_everything_at_once():
    assert arrival_times(5, math.inf, seed=0) == [0.0] * 5
    with pytest.raises(ValueError):
        arrival_times(5, 0.0, seed=0)


# -- workload -----------------------------------------------------------------------------


class LocalTokenizer:
    """The tokenizer object kvscope's /tokenize and /detokenize use, without HTTP."""

    def __init__(self, tokenizer) -> None:
        self.tokenizer = tokenizer

    async def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return list(self.tokenizer.encode(text, add_special_tokens=add_special_tokens))

    async def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids)


class CharTokenizerWithBos:
    """One token per character, plus a BOS token when special tokens are added."""

    async def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return ([0] if add_special_tokens else []) + [ord(c) for c in text]

    async def decode(self, ids: list[int]) -> str:
        return "".join(chr(i) for i in ids)


def build(tokenizer, num: int, input_len: int, seed: int, corpus: str | None = None):
    return asyncio.run(corpus_workload(corpus or load_corpus(), tokenizer, num, input_len,
                                       8, seed))


def test_workload_prompts_have_the_exact_server_token_count(loaded_fp32: LoadedModel):
    tokenizer = LocalTokenizer(loaded_fp32.tokenizer)
    for input_len in (1, 32, 128, 1000):
        requests = build(tokenizer, 64, input_len, seed=3)
        counts = [len(loaded_fp32.tokenizer.encode(r.prompt)) for r in requests]
        assert counts == [input_len] * 64
        assert all(r.prompt_len == input_len and r.output_len == 8 for r in requests)
        if input_len >= 32:
            assert len({r.prompt for r in requests}) > 60  # different windows


def test_workload_widens_windows_to_fit_special_tokens():
    requests = build(CharTokenizerWithBos(), 10, 50, seed=0, corpus="abcdefghij" * 3)
    assert all(len(r.prompt) == 49 and r.prompt_len == 50 for r in requests)
    assert all(r.prompt in "abcdefghij" * 8 for r in requests)  # wraps around the corpus


def test_workload_is_deterministic_by_seed(loaded_fp32: LoadedModel):
    tokenizer = LocalTokenizer(loaded_fp32.tokenizer)
    first = [r.prompt for r in build(tokenizer, 8, 64, seed=0)]
    assert first == [r.prompt for r in build(tokenizer, 8, 64, seed=0)]
    assert first != [r.prompt for r in build(tokenizer, 8, 64, seed=1)]
    chars = [r.prompt for r in build(None, 8, 64, seed=0)]
    assert chars == [r.prompt for r in build(None, 8, 64, seed=0)]
    assert all(len(p) == 64 * 4 for p in chars)
    assert all(r.prompt_len is None for r in build(None, 2, 16, seed=0))


def test_dataset_workload(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"prompt": "one", "output_len": 3}\n\n{"prompt": "two"}\n')
    assert dataset_workload(path, 9) == [BenchRequest("one", 3), BenchRequest("two", 9)]
    path.write_text('{"text": "no prompt field"}\n')
    with pytest.raises(ValueError, match=r"d\.jsonl:1"):
        dataset_workload(path, 9)


def test_request_body_and_chunk_text():
    request = BenchRequest("hi", 8)
    body = request_body("/v1/completions", "m", request, 0.0, ignore_eos=True)
    assert body["prompt"] == "hi" and body["max_tokens"] == 8 and body["ignore_eos"] is True
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}
    chat = request_body("/v1/chat/completions", "m", request, 0.0, ignore_eos=False)
    assert chat["messages"] == [{"role": "user", "content": "hi"}]
    assert "ignore_eos" not in chat and "prompt" not in chat
    assert chunk_text({"choices": [{"text": "a"}]}) == "a"
    assert chunk_text({"choices": [{"delta": {"role": "assistant", "content": ""}}]}) == ""
    assert chunk_text({"choices": [{"delta": {"content": "b"}}]}) == "b"
    assert chunk_text({"choices": [], "usage": {"completion_tokens": 3}}) == ""


# -- end to end ---------------------------------------------------------------------------


def max_in_flight(requests: list[dict]) -> int:
    """The most requests that were in flight at any send time."""
    return max(sum(1 for o in requests if o["send_s"] <= r["send_s"] < o["send_s"] + o["e2e_s"])
               for r in requests)


def test_bench_against_a_real_server(loaded_fp32: LoadedModel, tmp_path, capsys):
    path = tmp_path / "result.json"
    with running_server(loaded_fp32, api_key="k3y") as server:
        code = main(["bench", "serve", "--base-url", server.url, "--api-key", "k3y",
                     "--num-prompts", "6", "--input-len", "32", "--output-len", "8",
                     "--max-concurrency", "3", "--goodput", "e2e:600000", "--label", "e2e",
                     "--disable-tqdm", "--save-result", str(path)])
        assert code == 0
        out = capsys.readouterr().out
        assert "Serving benchmark: e2e" in out and "Goodput" in out
        result = json.loads(path.read_text())
        # without the key every request fails, and the run still completes
        failed = main(["bench", "serve", "--base-url", server.url, "--model", MODEL_NAME,
                       "--num-prompts", "2", "--input-len", "8", "--output-len", "2",
                       "--disable-tqdm"])
        assert failed == 1
        assert "Failed requests                                  2" in capsys.readouterr().out
    summary = result["summary"]
    assert (summary["completed"], summary["failed"]) == (6, 0)
    assert summary["output_tokens"] == 48 and summary["prompt_tokens"] == 6 * 32
    assert summary["goodput"] == pytest.approx(summary["request_throughput"])
    assert result["label"] == "e2e" and result["model"] == MODEL_NAME
    assert result["prompts_measured_by"] == "server tokenizer"
    assert result["config"]["max_concurrency"] == 3 and "api_key" not in result["config"]
    requests = result["requests"]
    assert [r["index"] for r in requests] == list(range(6))
    for r in requests:
        assert r["success"] and r["error"] is None
        assert r["output_tokens"] == 8
        assert r["prompt_tokens"] == 32 == r["prompt_len"]
        assert 0 < r["ttft_s"] <= r["e2e_s"]
        assert 1 <= len(r["itl_s"]) <= 7
        assert r["tpot_s"] == pytest.approx((r["e2e_s"] - r["ttft_s"]) / 7)
    assert max_in_flight(requests) <= 3
    assert len({r["send_s"] for r in requests}) == 6


def test_unreachable_server_is_a_clean_error(capsys):
    with socket.socket() as sock:  # a port nobody listens on once this closes
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    code = main(["bench", "serve", "--base-url", f"http://127.0.0.1:{port}", "--disable-tqdm"])
    assert code == 2
    assert "ConnectError" in capsys.readouterr().err
