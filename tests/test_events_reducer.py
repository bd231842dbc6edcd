"""The scope's reducer (kvscope/scope/static/js/state.js, run under node) folded over a
real engine's events gives, after every single event, the engine's own KV bookkeeping:
every request's block table, every block's refcount and cached flag, the free count
and the swap slots."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from kvscope import SamplingParams
from kvscope.engine.llm_engine import LLMEngine
from kvscope.events import Event, EventSink, JsonlRecorder, read_jsonl

ROOT = Path(__file__).resolve().parent.parent
STATE_JS = ROOT / "kvscope/scope/static/js/state.js"
FOLD_JS = ROOT / "tests/js/fold.mjs"
BLOCK = 16

pytestmark = pytest.mark.skipif(shutil.which("node") is None,
                                reason="node runs the scope's reducer")


class EngineWatcher(EventSink):
    """Records each event and, right after it, the engine's KV state."""

    def __init__(self) -> None:
        self.engine: LLMEngine | None = None
        self.events: list[dict[str, Any]] = []
        self.states: list[dict[str, Any] | None] = []

    def emit(self, event: Event) -> None:
        self.events.append(json.loads(json.dumps(event.to_dict())))
        self.states.append(None if self.engine is None else engine_state(self.engine))


def engine_state(engine: LLMEngine) -> dict[str, Any]:
    kv = engine.kv
    return {"tables": kv.all_block_ids(),
            "refcounts": [b.ref_cnt for b in kv.pool.blocks],
            "cached": [b.block_hash is not None for b in kv.pool.blocks],
            "free": kv.num_free_blocks,
            "swapped": kv.swapped_slots(),
            "computed": {r.request_id: r.num_computed_tokens for r in engine.scheduler.running}}


def fold_with_node(events: list[dict[str, Any]], tmp_path: Path) -> list[dict[str, Any]]:
    path = tmp_path / "events.jsonl"
    path.write_text("".join(json.dumps(e) + "\n" for e in events))
    proc = subprocess.run(["node", str(FOLD_JS), str(STATE_JS), str(path)], check=True,
                          capture_output=True, text=True, timeout=120)
    return [json.loads(line) for line in proc.stdout.splitlines()]


def watched_llm(make_llm, **options):
    watcher = EngineWatcher()
    llm = make_llm(sink=watcher, **options)
    watcher.engine = llm.engine
    return llm, watcher


def assert_fold_matches(watcher: EngineWatcher, tmp_path: Path) -> list[dict[str, Any]]:
    folded = fold_with_node(watcher.events, tmp_path)
    assert len(folded) == len(watcher.events)
    checked = 0
    for index, (event, state, mine) in enumerate(zip(watcher.events, watcher.states, folded,
                                                       strict=True)):
        if state is None:
            continue
        for key in ("tables", "refcounts", "cached", "free", "swapped"):
            assert mine[key] == state[key], (index, event["kind"], key)
        checked += 1
    assert checked > 50
    return folded


PROMPTS = [f"Story {i}: once upon a time in a town by the river there lived a baker who"
           for i in range(6)]
SHARED = "The history of computing is long and winding, full of people and machines. " * 3


def block_bytes(make_llm) -> int:
    probe = make_llm(enable_prefix_caching=False)
    return probe.engine.loaded.arch.kv_bytes_per_token(4) * BLOCK


def test_fold_matches_engine_with_prefix_caching_and_recompute(make_llm, tmp_path):
    llm, watcher = watched_llm(make_llm, kv_cache_memory=block_bytes(make_llm) * 14,
                               max_model_len=128, enable_prefix_caching=True)
    prompts = [SHARED + f"Question {i}: who built the first one?" for i in range(5)]
    llm.generate(prompts + PROMPTS[:2], SamplingParams(temperature=0, max_tokens=24,
                                                      ignore_eos=True))
    llm.generate(prompts[:2], SamplingParams(temperature=0, max_tokens=4))  # cache hits
    folded = assert_fold_matches(watcher, tmp_path)
    kinds = {e["kind"] for e in watcher.events}
    assert {"blocks_shared", "blocks_cached", "prefix_cache_lookup", "preempted",
            "step_end", "token_emitted", "request_finished"} <= kinds
    assert folded[-1]["free"] == llm.engine.num_blocks
    assert all(status == "finished" for status in folded[-1]["statuses"].values())


def test_fold_matches_engine_with_swap_and_abort(make_llm, tmp_path):
    llm, watcher = watched_llm(make_llm, kv_cache_memory=block_bytes(make_llm) * 12,
                               max_model_len=128, enable_prefix_caching=False,
                               preemption_mode="swap", swap_space=64 << 20)
    engine = llm.engine
    params = SamplingParams(temperature=0, max_tokens=40, ignore_eos=True)
    for i, prompt in enumerate(PROMPTS):
        engine.add_request(str(i), prompt, params)
    for _ in range(30):
        engine.step()
    engine.abort_request(["1", "4"])
    while engine.has_unfinished_requests():
        engine.step()
    folded = assert_fold_matches(watcher, tmp_path)
    kinds = [e["kind"] for e in watcher.events]
    assert "swapped_out" in kinds and "swapped_in" in kinds and "request_aborted" in kinds
    assert folded[-1]["free"] == engine.num_blocks
    assert folded[-1]["statuses"]["1"] == "aborted"


def test_recorder_writes_what_the_sink_saw(make_llm, tmp_path):
    path = tmp_path / "run.jsonl"
    recorder = JsonlRecorder(path)
    llm = make_llm(sink=recorder)
    llm.generate(PROMPTS[:3], SamplingParams(temperature=0, max_tokens=8))
    recorder.close()
    events = read_jsonl(path)
    assert events[0]["kind"] == "engine_started"
    assert events[0]["num_blocks"] == llm.engine.num_blocks
    tokens = [e for e in events if e["kind"] == "token_emitted"]
    assert len(tokens) == 24
    steps = [e for e in events if e["kind"] == "step_end"]
    assert [s["step"] for s in steps] == list(range(len(steps)))


def test_a_snapshot_mid_run_plus_later_events_folds_to_the_engine_state(make_llm, tmp_path):
    """A live listener joins mid-run: it gets a snapshot, then the events after it."""
    llm, watcher = watched_llm(make_llm, kv_cache_memory=block_bytes(make_llm) * 14,
                               max_model_len=128, enable_prefix_caching=True)
    engine = llm.engine
    params = SamplingParams(temperature=0, max_tokens=20, ignore_eos=True)
    prompts = [SHARED + f"Question {i}: who built the first one?" for i in range(4)]
    for i, prompt in enumerate(prompts):
        engine.add_request(str(i), prompt, params)
    for _ in range(8):
        engine.step()
    joined_at = len(watcher.events)
    snapshot = json.loads(json.dumps(engine.snapshot().to_dict()))
    sched = engine.scheduler
    statuses = {r.request_id: r.status.value
                for queue in (sched.running, sched.waiting, sched.swapped) for r in queue}
    while engine.has_unfinished_requests():
        engine.step()
    late = EngineWatcher()
    late.events = [snapshot, *watcher.events[joined_at:]]
    late.states = [engine_state_at(watcher, joined_at - 1), *watcher.states[joined_at:]]
    folded = fold_with_node(late.events, tmp_path)
    for mine, state in zip(folded, late.states, strict=True):
        for key in ("tables", "refcounts", "cached", "free", "swapped"):
            assert mine[key] == state[key], key
    assert folded[0]["statuses"] == statuses
    assert folded[-1]["statuses"] == {str(i): "finished" for i in range(4)}


def engine_state_at(watcher: EngineWatcher, index: int) -> dict[str, Any]:
    state = watcher.states[index]
    assert state is not None
    return state


def test_fold_matches_engine_with_parallel_sampling_and_beam_search(make_llm, tmp_path):
    """Forks, copy-on-write and pruned beams."""
    from kvscope.sampling_params import BeamSearchParams

    llm, watcher = watched_llm(make_llm, kv_cache_memory=block_bytes(make_llm) * 24,
                               max_model_len=128, enable_prefix_caching=True)
    engine = llm.engine
    engine.add_request("n", SHARED, SamplingParams(n=4, temperature=1.0, seed=3, max_tokens=20,
                                                   ignore_eos=True))
    engine.add_beam_request("b", PROMPTS[0], BeamSearchParams(beam_width=3, max_tokens=16))
    while engine.has_unfinished_requests():
        engine.step()
    folded = assert_fold_matches(watcher, tmp_path)
    kinds = {e["kind"] for e in watcher.events}
    assert {"sequence_forked", "copy_on_write", "beam_step"} <= kinds
    assert any(e["kind"] == "request_finished" and e["reason"] == "pruned"
               for e in watcher.events)
    assert folded[-1]["free"] == engine.num_blocks


def test_fold_matches_engine_with_speculative_decoding(make_llm, tmp_path):
    """Draft slots reserved, rejected ones trimmed, accepted drafts counted as computed."""
    llm, watcher = watched_llm(make_llm, kv_cache_memory=block_bytes(make_llm) * 10,
                               max_model_len=128, enable_prefix_caching=True,
                               speculative_config={"method": "self_draft",
                                                   "num_speculative_tokens": 4,
                                                   "draft_layers": 4})
    prompts = [SHARED + f"Question {i}: who built the first one?" for i in range(3)]
    llm.generate(prompts + PROMPTS[:1], SamplingParams(temperature=0, max_tokens=20,
                                                      ignore_eos=True))
    folded = assert_fold_matches(watcher, tmp_path)
    kinds = {e["kind"] for e in watcher.events}
    assert {"drafts_verified", "blocks_trimmed", "preempted"} <= kinds
    step_ends = [i for i, e in enumerate(watcher.events) if e["kind"] == "step_end"]
    for index in step_ends:
        for request_id, computed in watcher.states[index]["computed"].items():
            assert folded[index]["computed"][request_id] == computed, (index, request_id)
    verified = [e for e in watcher.events if e["kind"] == "drafts_verified"]
    assert sum(e["num_accepted"] for e in verified) == \
        llm.engine.get_stats()["spec_num_accepted_tokens"]
    assert folded[-1]["free"] == llm.engine.num_blocks
