"""Pipeline parallelism for real: the bundled SmolLM2-135M's 30 layers in two stages
(worker processes, layers 0-14 and 15-29), activations sent stage to stage over gloo,
and the engine's batch queue keeping two batches in flight. In fp32 the greedy output
equals one process's token for token with preemption forced, and with tp=2 × pp=2 (four
ranks); every block comes back; a stage that dies fails the run at once and leaves no
process behind.

Each engine here starts processes (~4 s a pair on 2 cores), so a few serve all checks."""

from __future__ import annotations

import itertools

import psutil
import pytest
import torch

from kvscope import LLM, SamplingParams
from kvscope.config import ConfigError
from kvscope.distributed.pipeline import stage_layers
from kvscope.events import ListSink
from kvscope.model.loader import load_model
from tests.test_tensor_parallel import (
    PROMPTS,
    assert_every_block_free,
    kill_rank_and_expect_failure,
    token_ids,
)

GREEDY = SamplingParams(temperature=0.0, max_tokens=48, ignore_eos=True)
# 14 blocks of 16 tokens: the five prompts and their 48 tokens (~27 blocks) do not fit
SMALL_POOL = {"block_size": 16, "max_model_len": 160, "max_num_batched_tokens": 64}


def pool_of(loaded, blocks: int) -> dict:
    return {**SMALL_POOL, "kv_cache_memory": blocks * loaded.arch.kv_bytes_per_token(4) * 16}


@pytest.fixture(scope="module")
def expected(make_llm, loaded_fp32) -> list[list[int]]:
    """One process's greedy tokens, with the same pool (it preempts too)."""
    one = make_llm(**pool_of(loaded_fp32, 14))
    outputs = token_ids(one.generate(PROMPTS, GREEDY))
    assert one.engine.get_stats()["num_preemptions"] > 0
    return outputs


def test_stage_layers_split_evenly_with_the_rest_up_front():
    assert stage_layers(30, 2) == [range(0, 15), range(15, 30)]
    assert stage_layers(30, 4) == [range(0, 8), range(8, 16), range(16, 23), range(23, 30)]
    with pytest.raises(ValueError, match=r"pipeline_parallel_size must be in \[1, 30\]"):
        stage_layers(30, 31)


@pytest.mark.parametrize("mode", ["recompute", "swap"])
def test_two_stages_equal_one_process_with_preemption(loaded_fp32, expected, mode):
    sink = ListSink()
    with LLM(dtype="float32", loaded=loaded_fp32, pipeline_parallel_size=2, sink=sink,
             preemption_mode=mode, **pool_of(loaded_fp32, 14)) as two:
        ranks = two.engine.executor.ranks
        assert [(r["stage"], r["layers"]) for r in ranks] == [(0, [0, 15]), (1, [15, 30])]
        # each stage's pool holds its 15 layers, for every block of the engine's pool
        assert [r["kv_pool_shape"][:3] for r in ranks] == [[15, 2, 14], [15, 2, 14]]
        assert "embed_tokens" in ranks[0]["weights"] and "lm_head" not in ranks[0]["weights"]
        assert "lm_head" in ranks[1]["weights"] and "embed_tokens" not in ranks[1]["weights"]
        assert token_ids(two.generate(PROMPTS, GREEDY)) == expected
        stats = two.engine.get_stats()
        assert stats["num_preemptions"] > 0
        if mode == "swap":
            assert stats["num_swap_outs"] > 0
        two.reset_prefix_cache()
        assert_every_block_free(two)
    ends = [e for e in sink.events if e.kind == "step_end"]
    assert max(e.batches_in_flight for e in ends) == 2
    for end in ends:  # every batch went through both stages, the first one first
        assert [s.stage for s in end.stages] == [0, 1]
        assert end.stages[0].start < end.stages[0].end <= end.stages[1].start
    # two batches overlapped: one's first stage ran while the other's second did
    spans = [(e.stages[0], e.stages[1]) for e in ends]
    assert any(later[0].start < earlier[1].end
               for earlier, later in itertools.pairwise(spans))
    # a request is never in two batches in flight at once: a batch that has it begins
    # only after the one before that had it has ended
    begun = {e.step: i for i, e in enumerate(sink.events) if e.kind == "step_begin"}
    ended = {e.step: i for i, e in enumerate(sink.events) if e.kind == "step_end"}
    last_batch: dict[str, int] = {}
    for end in sorted(ends, key=lambda e: e.step):
        for chunk in end.batch:
            before = last_batch.get(chunk.request_id)
            assert before is None or ended[before] < begun[end.step]
            last_batch[chunk.request_id] = end.step


def test_tp2_by_pp2_equals_one_process(loaded_fp32, expected):
    with LLM(dtype="float32", loaded=loaded_fp32, pipeline_parallel_size=2,
             tensor_parallel_size=2, **pool_of(loaded_fp32, 14)) as four:
        ranks = four.engine.executor.ranks
        assert [(r["stage"], r["tp_rank"], r["kv_heads"]) for r in ranks] == [
            (0, 0, [0, 2]), (0, 1, [2, 3]), (1, 0, [0, 2]), (1, 1, [2, 3])]
        assert token_ids(four.generate(PROMPTS, GREEDY)) == expected
        assert four.engine.get_stats()["num_preemptions"] > 0
        assert_every_block_free(four)


def test_a_quantized_engine_lends_dense_stages_and_a_stage_that_dies_fails_the_run(
        make_llm):
    """A served GGUF keeps its quantized weights; the stages it starts for a lesson read
    the checkpoint again, dense, and compute what a dense engine computes. Then one of
    them dies mid-run: the run fails at once and no process is left behind."""
    quantized = load_model(None, torch.float32, quantization="auto")
    assert quantized.weights.startswith("q4")
    params = SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True)
    dense = token_ids(make_llm(max_model_len=512).generate(PROMPTS[:2], params))
    llm = LLM(dtype="float32", loaded=quantized, pipeline_parallel_size=2,
              kv_cache_memory=64 << 20, max_model_len=512)
    assert token_ids(llm.generate(PROMPTS[:2], params)) == dense
    kill_rank_and_expect_failure(llm)


def test_bad_pipeline_options_fail_before_starting_anything(loaded_fp32):
    before = len(psutil.Process().children(recursive=True))
    with pytest.raises(ConfigError, match=r"pipeline_parallel_size must be in \[1, 30\]"):
        LLM(dtype="float32", loaded=loaded_fp32, pipeline_parallel_size=31,
            kv_cache_memory=64 << 20, max_model_len=512)
    with pytest.raises(ConfigError, match="pipeline_parallel_size must be an integer >= 1"):
        LLM(dtype="float32", loaded=loaded_fp32, pipeline_parallel_size=0)
    with pytest.raises(ConfigError, match="speculative decoding does not combine"):
        LLM(dtype="float32", loaded=loaded_fp32, pipeline_parallel_size=2,
            speculative_config={"method": "ngram", "num_speculative_tokens": 2})
    assert len(psutil.Process().children(recursive=True)) == before
