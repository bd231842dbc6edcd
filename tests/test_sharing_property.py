"""Property test: any mix of parallel samples, beam searches, plain requests and aborts,
through a pool small enough to preempt (by recompute or swap), keeps the block pool's
invariants after every step (each block's refcount equals the number of tables holding
it) and ends with every block free or evictable."""

from __future__ import annotations

from collections import Counter

from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

from kvscope import SamplingParams
from kvscope.sampling_params import BeamSearchParams

BLOCK = 4
WORDS = ["the", "a", "block", "cache", "token", "beam", "share", "fork", "copy", "write",
         "free", "pool", "step", "model"]


@st.composite
def workloads(draw):
    requests = []
    for i in range(draw(st.integers(2, 5))):
        kind = draw(st.sampled_from(["plain", "parallel", "beam"]))
        words = draw(st.lists(st.sampled_from(WORDS), min_size=2, max_size=24))
        requests.append({
            "id": f"r{i}", "kind": kind, "prompt": " ".join(words),
            "width": draw(st.integers(1, 3)), "max_tokens": draw(st.integers(1, 12)),
            "arrive": draw(st.integers(0, 4)),
            "abort_at": draw(st.one_of(st.none(), st.integers(1, 10)))})
    return {"requests": requests, "blocks": draw(st.integers(16, 22)),
            "mode": draw(st.sampled_from(["recompute", "swap"])),
            "caching": draw(st.booleans())}


# Found by this test: three beams wait (nothing to compute) for a fourth that was
# swapped out and needs more blocks than are free; they must give way to it.
SWAPPED_BEAM_BEHIND_IDLE_SIBLINGS = {
    "requests": [
        {"id": "r0", "kind": "beam", "prompt": "cache beam the beam write cache the share "
         "write the fork free fork cache the write model pool block cache a a share cache",
         "width": 3, "max_tokens": 11, "arrive": 0, "abort_at": None},
        {"id": "r1", "kind": "plain", "prompt": "the step step the the", "width": 3,
         "max_tokens": 12, "arrive": 0, "abort_at": None},
        {"id": "r2", "kind": "plain", "prompt": "the the pool a fork", "width": 2,
         "max_tokens": 1, "arrive": 4, "abort_at": 2},
        {"id": "r3", "kind": "parallel", "prompt": "block token the", "width": 2,
         "max_tokens": 3, "arrive": 0, "abort_at": 8},
        {"id": "r4", "kind": "parallel", "prompt": "block beam copy step model free model "
         "step block share write", "width": 3, "max_tokens": 2, "arrive": 4, "abort_at": None}],
    "blocks": 16, "mode": "swap", "caching": True}


def check_refcounts(engine) -> None:
    kv = engine.kv
    kv.pool.check_invariants()
    held = Counter(b for table in kv.all_block_ids().values() for b in table)
    for block in kv.pool.blocks:
        assert block.ref_cnt == held[block.block_id], block


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                  HealthCheck.function_scoped_fixture])
@given(workload=workloads())
@example(workload=SWAPPED_BEAM_BEHIND_IDLE_SIBLINGS)
def test_sharing_never_leaks_a_block(make_llm, workload):
    probe_bytes = 2 * 30 * 3 * 64 * 4 * BLOCK  # fp32 bytes per block of the bundled model
    llm = make_llm(kv_cache_memory=probe_bytes * workload["blocks"], max_model_len=64,
                   block_size=BLOCK, enable_prefix_caching=workload["caching"],
                   preemption_mode=workload["mode"], swap_space=probe_bytes * 16)
    engine = llm.engine
    pending = sorted(workload["requests"], key=lambda r: r["arrive"])
    step = 0
    while pending or engine.has_unfinished_requests():
        while pending and pending[0]["arrive"] <= step:
            add(engine, pending.pop(0))
        for r in workload["requests"]:
            if r["abort_at"] == step:
                engine.abort_request(r["id"])
        engine.step()
        check_refcounts(engine)
        step += 1
        assert step < 400
    assert engine.kv.num_free_blocks == engine.num_blocks
    assert engine.kv.num_tables() == 0
    stats = engine.get_stats()
    event(f"preempted: {stats['num_preemptions'] > 0}")
    event(f"copies on write: {engine.kv.num_copies_on_write > 0}")


def add(engine, r) -> None:
    if r["kind"] == "beam":
        engine.add_beam_request(r["id"], r["prompt"], BeamSearchParams(
            beam_width=r["width"] + 1, max_tokens=r["max_tokens"]))
    else:
        n = r["width"] + 1 if r["kind"] == "parallel" else 1
        engine.add_request(r["id"], r["prompt"], SamplingParams(
            n=n, temperature=1.0, seed=1, max_tokens=r["max_tokens"]))
