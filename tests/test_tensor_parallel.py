"""Tensor parallelism for real: two worker processes in one gloo group, the bundled
SmolLM2-135M split unevenly by KV group (rank 0: KV heads 0-1 and query heads 0-5,
rank 1: KV head 2 and query heads 6-8). In fp32 its greedy output equals one process's
token for token, its logits agree within 1e-4, with chunked prefill, prefix caching,
parallel sampling, forced preemption (recompute and swap) and speculative decoding
(n-gram and the early-exit self-draft); every block comes back; a worker that dies
fails its requests at once and leaves no process behind.

Each tp=2 engine costs two processes (~4 s to start here), so a few engines serve all
the checks."""

from __future__ import annotations

import os
import signal
import time

import psutil
import pytest
import torch

from kvscope import LLM, SamplingParams
from kvscope.config import ConfigError
from kvscope.executor.base import ExecutorError

PROMPTS = [
    "The history of the printing press begins in the fifteenth century, when",
    "def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n",
    "List the numbers from 1 to 40 separated by commas:",
    "Copy this list exactly: apples, pears, plums, cherries, grapes, lemons, limes.",
    "Summarise in one sentence: The river flooded the valley every spring, so the "
    "villagers built their houses on stilts and planted rice in the wet fields. " * 3,
]
GREEDY = SamplingParams(temperature=0.0, max_tokens=48, ignore_eos=True)
MAIN = {"max_num_batched_tokens": 64}  # the long prompt's prefill comes in chunks
NGRAM = {"method": "ngram", "num_speculative_tokens": 4, "prompt_lookup_max": 3}
SELF_DRAFT = {"method": "self_draft", "num_speculative_tokens": 3, "draft_layers": 24}


def token_ids(outputs) -> list[list[int]]:
    return [c.token_ids for o in outputs for c in o.outputs]


def small_pool(loaded, blocks: int = 10) -> dict:
    """A pool too small for all the prompts at once: requests get preempted."""
    return {"block_size": 16, "max_model_len": 128,
            "kv_cache_memory": blocks * loaded.arch.kv_bytes_per_token(4) * 16}


def pair(make_llm, loaded_fp32, **options):
    """The same engine options at tp=1 (this process) and tp=2 (two workers)."""
    options.setdefault("kv_cache_memory", 64 << 20)
    options.setdefault("max_model_len", 1024)
    return (make_llm(**options),
            LLM(dtype="float32", loaded=loaded_fp32, tensor_parallel_size=2, **options))


def assert_every_block_free(llm) -> None:
    pool = llm.engine.kv.pool
    pool.check_invariants()
    assert llm.engine.kv.num_tables() == 0
    assert pool.num_used_blocks == 0
    assert llm.engine.kv.num_free_blocks == pool.num_blocks


def record_logits(llm) -> list[torch.Tensor]:
    seen: list[torch.Tensor] = []
    execute = llm.engine.executor.execute

    def recording(out):
        result = execute(out)
        seen.append(result.logits.clone())
        return result

    llm.engine.executor.execute = recording
    return seen


@pytest.fixture(scope="module")
def main_pair(make_llm, loaded_fp32):
    one, two = pair(make_llm, loaded_fp32, **MAIN)
    yield one, two
    two.shutdown()


def test_the_split_is_uneven_by_kv_group(main_pair):
    ranks = main_pair[1].engine.executor.ranks
    assert [(r["q_heads"], r["kv_heads"], r["split"]) for r in ranks] == [
        ([0, 6], [0, 2], "uneven"), ([6, 9], [2, 3], "uneven")]
    # each rank's KV pool holds only its KV heads, for every block of the driver's pool
    num_blocks = main_pair[1].engine.num_blocks
    assert [r["kv_pool_shape"][2:5] for r in ranks] == [[num_blocks, 16, 2],
                                                        [num_blocks, 16, 1]]


def test_greedy_output_and_logits_equal_one_process(main_pair):
    one, two = main_pair
    logits_one, logits_two = record_logits(one), record_logits(two)
    expected = token_ids(one.generate(PROMPTS, GREEDY))
    assert token_ids(two.generate(PROMPTS, GREEDY)) == expected
    assert len(logits_one) == len(logits_two) > 48
    # the ranks add each row-parallel product in two halves, so the float32 sums differ
    # in order from one process's: logits of magnitude ~15 agree to ~1e-5 relative
    for a, b in zip(logits_one, logits_two, strict=True):
        assert (a - b).abs().max().item() < 5e-4
    # the prefix cache: the same prompts again hit it, and change nothing
    hits = two.engine.kv.num_hit_tokens
    assert token_ids(two.generate(PROMPTS, GREEDY)) == expected
    assert two.engine.kv.num_hit_tokens > hits
    assert_every_block_free(two)


def test_parallel_sampling_with_seeds_equals_one_process(main_pair):
    one, two = main_pair
    params = SamplingParams(n=4, temperature=0.8, seed=7, max_tokens=24)
    expected = token_ids(one.generate(PROMPTS[:2], params))
    assert len(expected) == 8 and len({tuple(t) for t in expected}) > 1
    assert token_ids(two.generate(PROMPTS[:2], params)) == expected
    assert_every_block_free(two)


@pytest.mark.parametrize(("mode", "speculative"), [("recompute", NGRAM), ("swap", SELF_DRAFT)],
                         ids=["recompute-ngram", "swap-self_draft"])
def test_forced_preemption_and_speculation_equal_one_process(make_llm, loaded_fp32, mode,
                                                             speculative):
    one, two = pair(make_llm, loaded_fp32, preemption_mode=mode,
                    speculative_config=speculative, **small_pool(loaded_fp32))
    try:
        params = SamplingParams(temperature=0.0, max_tokens=40, ignore_eos=True)
        expected = token_ids(one.generate(PROMPTS[:4], params))
        assert token_ids(two.generate(PROMPTS[:4], params)) == expected
        stats = two.engine.get_stats()
        assert stats["num_preemptions"] > 0
        assert stats["spec_num_draft_tokens"] > 0
        if mode == "swap":
            assert stats["num_swap_outs"] > 0
        two.reset_prefix_cache()
        assert_every_block_free(two)
    finally:
        two.shutdown()
    assert all(w.poll() is not None for w in two.engine.executor.workers)


def test_a_worker_that_dies_fails_the_run_and_leaves_no_process(loaded_fp32):
    llm = LLM(dtype="float32", loaded=loaded_fp32, tensor_parallel_size=2,
              kv_cache_memory=64 << 20, max_model_len=512)
    children = {p.pid for p in psutil.Process().children(recursive=True)}
    assert {w.pid for w in llm.engine.executor.workers} <= children
    kill_rank_and_expect_failure(llm)
    with pytest.raises(ExecutorError, match="not running"):
        llm.engine.executor.execute(None)


def kill_rank_and_expect_failure(llm) -> None:
    """Kill rank 1 mid-run: the next steps fail at once (naming the rank), every other
    worker is ended, closing the failed engine works, and no process is left."""
    workers = llm.engine.executor.workers
    engine = llm.engine
    engine.add_request("long", PROMPTS[0], SamplingParams(max_tokens=400, ignore_eos=True))
    engine.step()
    os.kill(workers[1].pid, signal.SIGKILL)
    started = time.monotonic()
    with pytest.raises(ExecutorError, match="rank 1 exited with code -9"):
        for _ in range(400):
            engine.step()
    assert time.monotonic() - started < 30
    assert all(w.poll() is not None for w in workers)  # rank 0 was ended too
    llm.shutdown()  # closing a failed engine works
    alive = [p for p in psutil.Process().children(recursive=True) if p.pid in
             {w.pid for w in workers} and p.status() != psutil.STATUS_ZOMBIE]
    assert alive == []


def test_a_split_that_cannot_be_made_fails_before_starting_anything(loaded_fp32):
    before = len(psutil.Process().children(recursive=True))
    with pytest.raises(ConfigError, match="9 query heads and 3 KV heads"):
        LLM(dtype="float32", loaded=loaded_fp32, tensor_parallel_size=4,
            kv_cache_memory=64 << 20, max_model_len=512)
    with pytest.raises(ConfigError, match="tensor_parallel_size must be an integer >= 1"):
        LLM(dtype="float32", loaded=loaded_fp32, tensor_parallel_size=0)
    assert len(psutil.Process().children(recursive=True)) == before


def test_qwen_even_split_equals_one_process():
    """Qwen2.5-Coder-0.5B (14 query, 2 KV heads: the even rule, one KV head a rank), tp=2
    against tp=1 in fp32 (skipped without its packages)."""
    from kvscope.model.loader import load_model
    from kvscope.model.packaged import missing_packages

    missing = missing_packages("qwen2.5-coder-0.5b")
    if missing:
        pytest.skip(f"Qwen2.5-Coder-0.5B needs {len(missing)} packages, e.g. {missing[0]}")
    loaded = load_model("qwen2.5-coder-0.5b", torch.float32)
    options = {"kv_cache_memory": 128 << 20, "max_model_len": 512}
    one = LLM(dtype="float32", loaded=loaded, **options)
    with LLM(dtype="float32", loaded=loaded, tensor_parallel_size=2, **options) as two:
        assert [r["split"] for r in two.engine.executor.ranks] == ["even", "even"]
        assert [r["kv_heads"] for r in two.engine.executor.ranks] == [[0, 1], [1, 2]]
        params = SamplingParams(temperature=0.0, max_tokens=32, ignore_eos=True)
        assert token_ids(two.generate(PROMPTS[:3], params)) == \
            token_ids(one.generate(PROMPTS[:3], params))
