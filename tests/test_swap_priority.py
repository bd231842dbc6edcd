"""Preemption by swap (no recompute, identical output, fallback when swap is full) and
the priority policy, on the real model with a pool too small for the workload."""

from __future__ import annotations

import pytest

from kvscope import LLM, SamplingParams
from kvscope.config import ConfigError

BLOCK = 16
MAX_LEN = 128
PROMPTS = [f"Story {i}: once upon a time in a town by the river there lived a baker who"
           for i in range(6)]
GREEDY = SamplingParams(temperature=0.0, max_tokens=40, ignore_eos=True)


def block_bytes(llm: LLM) -> int:
    return llm.engine.loaded.arch.kv_bytes_per_token(4) * BLOCK


@pytest.fixture(scope="module")
def reference(make_llm) -> list[list[int]]:
    """Each prompt's greedy tokens with plenty of memory (never preempted)."""
    llm = make_llm(enable_prefix_caching=False)
    outs = llm.generate(PROMPTS, GREEDY)
    assert llm.engine.get_stats()["num_preemptions"] == 0
    return [o.outputs[0].token_ids for o in outs]


def tight(make_llm, blocks: int, **options) -> LLM:
    probe = make_llm(enable_prefix_caching=False)
    return make_llm(kv_cache_memory=block_bytes(probe) * blocks, max_model_len=MAX_LEN,
                    enable_prefix_caching=False, **options)


def tokens_processed_once(outs) -> int:
    """Every prompt token and every output token but the last, each computed once."""
    return sum(len(o.prompt_token_ids) + len(o.outputs[0].token_ids) - 1 for o in outs)


def test_swap_preempts_without_recompute(make_llm, reference):
    llm = tight(make_llm, blocks=12, preemption_mode="swap", swap_space=64 << 20)
    outs = llm.generate(PROMPTS, GREEDY)
    stats = llm.engine.get_stats()
    assert stats["num_swap_outs"] > 0
    assert stats["num_swap_ins"] == stats["num_swap_outs"]
    assert stats["num_preemptions"] == stats["num_swap_outs"]
    assert stats["num_swap_fallbacks"] == 0
    assert [o.outputs[0].token_ids for o in outs] == reference
    assert sum(o.metrics.num_preemptions for o in outs) == stats["num_swap_outs"]
    assert stats["num_computed_tokens"] == tokens_processed_once(outs)
    assert stats["num_used_blocks"] == 0
    assert stats["num_free_swap_slots"] == (64 << 20) // block_bytes(llm)


def test_recompute_costs_extra_tokens(make_llm, reference):
    llm = tight(make_llm, blocks=12)
    outs = llm.generate(PROMPTS, GREEDY)
    stats = llm.engine.get_stats()
    assert stats["num_preemptions"] > 0 and stats["num_swap_outs"] == 0
    assert [o.outputs[0].token_ids for o in outs] == reference
    assert stats["num_computed_tokens"] > tokens_processed_once(outs)


def test_full_swap_space_falls_back_to_recompute(make_llm, reference):
    probe = make_llm(enable_prefix_caching=False)
    llm = tight(make_llm, blocks=12, preemption_mode="swap", swap_space=block_bytes(probe) * 2)
    outs = llm.generate(PROMPTS, GREEDY)
    stats = llm.engine.get_stats()
    assert stats["num_swap_fallbacks"] > 0
    assert stats["num_preemptions"] == stats["num_swap_outs"] + stats["num_swap_fallbacks"]
    assert [o.outputs[0].token_ids for o in outs] == reference
    assert stats["num_used_blocks"] == 0 and stats["num_free_swap_slots"] == 2


def test_abort_while_swapped_frees_the_slots(make_llm):
    llm = tight(make_llm, blocks=12, preemption_mode="swap", swap_space=64 << 20)
    engine = llm.engine
    ids = [engine.add_request(None, p, GREEDY) for p in PROMPTS]
    while not engine.scheduler.swapped:
        engine.step()
    slots_before = engine.get_stats()["num_free_swap_slots"]
    victim = engine.scheduler.swapped[0].request_id
    engine.abort_request(victim)
    assert engine.get_stats()["num_free_swap_slots"] > slots_before
    engine.abort_request(ids)
    stats = engine.get_stats()
    assert stats["num_used_blocks"] == 0 and stats["num_swapped"] == 0
    assert stats["num_free_swap_slots"] == (64 << 20) // block_bytes(llm)


LOW = SamplingParams(temperature=0.0, max_tokens=60, ignore_eos=True)


@pytest.mark.parametrize("mode", ["recompute", "swap"])
def test_high_priority_late_request_preempts_and_finishes_first(make_llm, reference, mode):
    """Three long low-priority requests fill the pool; a late high-priority one gets in
    at once by preempting the worst of them, and finishes before all three."""
    low_prompts = [p + " " + p for p in PROMPTS[:3]]
    expected_low = [o.outputs[0].token_ids for o in
                    make_llm(enable_prefix_caching=False).generate(low_prompts, LOW)]
    llm = tight(make_llm, blocks=10, policy="priority", preemption_mode=mode)
    engine = llm.engine
    low = [engine.add_request(f"low{i}", p, LOW, priority=5) for i, p in enumerate(low_prompts)]
    for _ in range(3):
        engine.step()
    assert engine.get_stats()["num_preemptions"] == 0
    assert engine.kv.num_free_blocks < 2  # the pool is short when the high one arrives
    engine.add_request("high", PROMPTS[3], GREEDY, priority=0)
    engine.step()
    assert engine.get_stats()["num_preemptions"] == 1
    assert engine.scheduler.running[0].request_id == "high"
    finished: list[str] = []
    outputs = {}
    while engine.has_unfinished_requests():
        for out in engine.step():
            if out.finished:
                finished.append(out.request_id)
                outputs[out.request_id] = out.outputs[0].token_ids
    assert finished[0] == "high"
    assert outputs["high"] == reference[3]
    assert [outputs[i] for i in low] == expected_low
    assert engine.get_stats()["num_used_blocks"] == 0


def test_fcfs_late_request_waits(make_llm):
    llm = tight(make_llm, blocks=10)
    engine = llm.engine
    for i in range(3):
        engine.add_request(f"low{i}", PROMPTS[i], GREEDY, priority=5)
    engine.step()
    engine.add_request("late", PROMPTS[3], GREEDY, priority=0)  # ignored under fcfs
    finished = []
    while engine.has_unfinished_requests():
        finished += [o.request_id for o in engine.step() if o.finished]
    assert finished[-1] == "late"


def test_bad_policy_and_mode_fail_clearly(make_llm):
    with pytest.raises(ConfigError, match="preemption_mode must be one of"):
        make_llm(preemption_mode="teleport")
    with pytest.raises(ConfigError, match="policy must be one of"):
        make_llm(policy="lifo")
