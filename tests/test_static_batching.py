"""batching="static": the engine as a static batcher, for the scheduling lessons'
comparison. The first max_num_seqs requests form a batch; no other request starts
before every one of them finished; the seats a padded batch would have computed for
nothing are counted; greedy output equals continuous batching's token for token."""

from __future__ import annotations

import pytest

from kvscope import SamplingParams
from kvscope.config import ConfigError, EngineConfig
from kvscope.events import ListSink

PROMPTS = ["The capital of France is", "List three fruits:", "def add(a, b):",
           "Once upon a time", "The sea is", "Water boils at"]
LENGTHS = [4, 12, 8, 6, 10, 3]  # each request's max_tokens


def run(make_llm, batching: str) -> tuple[list[list[int]], list, dict]:
    sink = ListSink()
    llm = make_llm(max_num_seqs=3, batching=batching, sink=sink)
    params = [SamplingParams(temperature=0.0, max_tokens=n, ignore_eos=True) for n in LENGTHS]
    outputs = llm.generate(PROMPTS, params)
    return [list(o.outputs[0].token_ids) for o in outputs], sink.events, llm.engine.get_stats()


def test_a_static_batch_runs_to_its_end_before_the_next_one_starts(make_llm):
    continuous, _, plain = run(make_llm, "continuous")
    static, events, stats = run(make_llm, "static")
    assert static == continuous
    order = [(e.kind, e.request_id) for e in events
             if e.kind in ("request_scheduled", "request_finished")]
    first_of_second = order.index(("request_scheduled", "3"))
    finished_before = {rid for kind, rid in order[:first_of_second] if kind == "request_finished"}
    assert finished_before == {"0", "1", "2"}
    # batch one runs 12 steps (its longest request), batch two 10: 3 seats each step
    steps = [e for e in events if e.kind == "step_end"]
    assert len(steps) == 12 + 10
    sizes = [len(e.batch) for e in steps]
    assert stats["num_slot_steps"] == 3 * len(steps)
    assert stats["num_idle_slot_steps"] == sum(3 - n for n in sizes) > 0
    # continuous batching fills a freed seat at once, so it needs fewer steps
    assert plain["num_steps"] < stats["num_steps"]
    assert plain["num_slot_steps"] == plain["num_idle_slot_steps"] == 0


def test_an_unknown_batching_mode_is_refused():
    with pytest.raises(ConfigError, match="batching must be one of"):
        EngineConfig.from_kwargs(batching="dynamic")
