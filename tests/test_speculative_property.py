"""Property test: speculative decoding with drafts that are mostly wrong (a one-layer
self-draft) or mostly right (n-gram on repetitive prompts), greedy and sampled
requests, aborts and a pool small enough to preempt (by recompute or swap), never leaks
a block. After every step each block's refcount equals the tables holding it, a
running request's table holds exactly the blocks of its computed tokens (the slots
of rejected drafts went back), and at the end every block is free or evictable."""

from __future__ import annotations

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from kvscope import SamplingParams
from kvscope.kv.kv_manager import blocks_needed
from tests.test_sharing_property import check_refcounts

BLOCK = 4
WORDS = ["one", "two", "three", "draft", "verify", "accept", "reject", "token", "block"]


@st.composite
def workloads(draw):
    requests = []
    for i in range(draw(st.integers(1, 4))):
        words = draw(st.lists(st.sampled_from(WORDS), min_size=2, max_size=16))
        requests.append({
            "id": f"r{i}", "prompt": " ".join(words * draw(st.integers(1, 2))),
            "temperature": draw(st.sampled_from([0.0, 0.0, 0.9])),
            "max_tokens": draw(st.integers(1, 20)), "arrive": draw(st.integers(0, 3)),
            "abort_at": draw(st.one_of(st.none(), st.integers(1, 10)))})
    return {"requests": requests, "blocks": draw(st.integers(20, 28)),
            "method": draw(st.sampled_from(["self_draft", "self_draft", "ngram"])),
            "k": draw(st.integers(1, 6)),
            "mode": draw(st.sampled_from(["recompute", "swap"])),
            "caching": draw(st.booleans())}


def check_tables(engine) -> None:
    check_refcounts(engine)
    for request in engine.scheduler.running:
        table = engine.kv.block_ids(request.request_id)
        assert len(table) == blocks_needed(request.num_computed_tokens, BLOCK), request


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                  HealthCheck.function_scoped_fixture])
@given(workload=workloads())
def test_speculation_never_leaks_a_block(make_llm, workload):
    probe_bytes = 2 * 30 * 3 * 64 * 4 * BLOCK  # fp32 bytes per block of the bundled model
    spec = {"method": workload["method"], "num_speculative_tokens": workload["k"],
            "draft_layers": 1}
    llm = make_llm(kv_cache_memory=probe_bytes * workload["blocks"], max_model_len=80,
                   block_size=BLOCK, enable_prefix_caching=workload["caching"],
                   preemption_mode=workload["mode"], swap_space=probe_bytes * 16,
                   speculative_config=spec)
    engine = llm.engine
    pending = sorted(workload["requests"], key=lambda r: r["arrive"])
    step = 0
    while pending or engine.has_unfinished_requests():
        while pending and pending[0]["arrive"] <= step:
            r = pending.pop(0)
            engine.add_request(r["id"], r["prompt"], SamplingParams(
                temperature=r["temperature"], max_tokens=r["max_tokens"], seed=1))
        for r in workload["requests"]:
            if r["abort_at"] == step:
                engine.abort_request(r["id"])
        engine.step()
        check_tables(engine)
        step += 1
        assert step < 400
    stats = engine.get_stats()
    rejected = stats["spec_num_draft_tokens"] - stats["spec_num_accepted_tokens"]
    event("many rejected drafts" if rejected > 10 else "few rejected drafts")
    if stats["num_preemptions"]:
        event("preempted")
    assert engine.kv.num_tables() == 0
    assert engine.kv.pool.num_used_blocks == 0
    assert engine.kv.swap_slots.num_free == engine.kv.swap_slots.num_slots
