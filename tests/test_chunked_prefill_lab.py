"""The chunked-prefill lesson's default workload (read from its page) through the lesson's
own code path, `run_lab`, on the bundled model in fp32: once unchunked (a budget of 1024,
the pool's whole capacity) and once at the page's default budget. Chunking must lower
the longest wait between two tokens of the short requests, leave the prefill token total
as it was, split the long prompt exactly as the scheduler's budget says (the running
requests' tokens first, the prompt gets the rest), and change no greedy token.

The stall is a timing on a shared 2-core machine, so the test also asserts its robust
form: in the unchunked run the longest wait is the one around the step that carried the
whole prompt (a step of 200+ prompt tokens, against decode steps of a few tokens); and
where one pair of runs says otherwise, the best of up to three pairs decides."""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path
from types import ModuleType

import pytest

from kvscope.scope.lab import MAX_PROMPT_TOKENS

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "chunked_prefill.py"


def load_bench() -> ModuleType:
    """benchmarks/chunked_prefill.py, which reads the lesson's workload from its page."""
    name = "kvscope_bench_chunked_prefill"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, SCRIPT)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    return load_bench()


@pytest.fixture(scope="module")
def runs(bench, loaded_fp32):
    """(workload, (response, figures) unchunked, (response, figures) chunked)."""
    w = bench.lesson_workload()
    bench.warm_up(loaded_fp32)  # the kernels built, the first calls made
    unchunked = bench.run(loaded_fp32, w, bench.UNCHUNKED_BUDGET)
    chunked = bench.run(loaded_fp32, w, w.budget)
    return w, unchunked, chunked


def test_the_page_workload_needs_chunking(runs):
    w, (_, u), (_, c) = runs
    assert len(w.shorts) >= 2 and w.arrive_at >= 1
    assert u.prompt_tokens == c.prompt_tokens
    # long enough that its one-step prefill stands far above a decode step, within the
    # lab's limit, and several times the chunked budget
    assert 200 <= u.prompt_tokens <= MAX_PROMPT_TOKENS
    assert u.prompt_tokens >= 4 * w.budget
    assert (u.budget, c.budget) == (1024, w.budget)


def test_unchunked_the_prompt_is_one_step_and_that_step_is_the_stall(runs):
    _, (data, u), _ = runs
    assert u.chunks == [u.prompt_tokens]
    long_step = u.chunk_steps[0]
    assert u.stall is not None and u.stall.to_step == long_step
    assert u.stall.from_step == long_step - 1
    # the short requests decoded in that very step: they waited for the whole prompt
    step = next(e for e in data["events"] if e["kind"] == "step_end" and e["step"] == long_step)
    assert sorted(c["request_id"] for c in step["batch"] if c["phase"] == "decode") == \
        [str(i) for i in range(len(data["outputs"]) - 1)]


def test_chunked_the_prompt_is_split_by_the_budget(runs):
    w, _, (data, c) = runs
    ends = {e["step"]: e for e in data["events"] if e["kind"] == "step_end"}
    remaining = c.prompt_tokens
    for step, chunk in zip(c.chunk_steps, c.chunks, strict=True):
        others = sum(x["num_tokens"] for x in ends[step]["batch"] if x["request_id"] != c.long_id)
        assert others >= 1, "the short requests decode beside every chunk"
        assert chunk == min(remaining, w.budget - others)
        assert ends[step]["num_tokens"] <= w.budget
        remaining -= chunk
    assert remaining == 0
    assert len(c.chunks) >= math.ceil(c.prompt_tokens / w.budget)
    assert c.chunk_steps == list(range(c.chunk_steps[0], c.chunk_steps[0] + len(c.chunks)))
    # the chunks are consecutive token ranges of the prompt
    starts = [next(x["start"] for x in ends[s]["batch"] if x["request_id"] == c.long_id)
              for s in c.chunk_steps]
    assert starts == [sum(c.chunks[:i]) for i in range(len(c.chunks))]


def test_chunking_lowers_the_stall_and_computes_the_same_prefill(runs, bench, loaded_fp32):
    w, (_, u), (_, c) = runs
    # a timing: another process on the 2 cores can only add time, so where one pair of
    # runs disagrees the best of up to three pairs decides (as the benchmark reports)
    best_u, best_c = [u.stall.ms], [c.stall.ms]
    while min(best_c) >= min(best_u) and len(best_u) < 3:
        best_u.append(bench.run(loaded_fp32, w, bench.UNCHUNKED_BUDGET)[1].stall.ms)
        best_c.append(bench.run(loaded_fp32, w, w.budget)[1].stall.ms)
    assert min(best_c) < min(best_u), (best_c, best_u)
    assert c.prefill_tokens == u.prefill_tokens
    assert c.prefill_tokens == u.prompt_tokens + sum(
        len(p) for p in [o["prompt_token_ids"] for o in runs[1][0]["outputs"][:-1]])
    assert len(c.steps) > len(u.steps)


def test_greedy_tokens_are_equal(runs):
    w, (u, _), (c, _) = runs
    assert [o["token_ids"] for o in u["outputs"]] == [o["token_ids"] for o in c["outputs"]]
    assert all(len(o["token_ids"]) == w.max_tokens for o in u["outputs"])
    assert u["final"]["num_free_blocks"] == c["final"]["num_free_blocks"] == 64
