"""Property test of the whole memory side (hypothesis): random mixes of requests with
shared prefixes, aborts, cache hits, evictions, swaps and priorities. After every
step the invariants of DESIGN.md hold; at the end every block is free or evictable
with refcount 0, and every swap slot is free."""

from __future__ import annotations

from hypothesis import event, given, settings
from hypothesis import strategies as st
from sched_sim import Sim, make_sim

from kvscope.kv.kv_manager import blocks_needed
from kvscope.request import Request, RequestStatus


@st.composite
def workloads(draw):
    block_size = draw(st.sampled_from([1, 2, 4]))
    max_model_len = draw(st.integers(6, 40))
    num_blocks = blocks_needed(max_model_len, block_size) + draw(st.integers(0, 8))
    config = {
        "num_blocks": num_blocks, "block_size": block_size, "max_model_len": max_model_len,
        "budget": draw(st.integers(1, 40)), "max_num_seqs": draw(st.integers(1, 5)),
        "threshold": draw(st.sampled_from([0, 0, 2, 5])),
        "caching": draw(st.booleans()),
        "mode": draw(st.sampled_from(["recompute", "swap"])),
        "swap_slots": draw(st.integers(0, 12)),
        "policy": draw(st.sampled_from(["fcfs", "priority"])),
    }
    prefixes = [[1] * 12, [2, 3] * 6, [4, 5, 6] * 4]  # shared starts → cache hits
    requests = draw(st.lists(st.tuples(
        st.integers(0, 10),  # arrival step
        st.integers(0, 2),  # which shared prefix
        st.integers(0, 12),  # how much of it
        st.integers(1, max_model_len - 1),  # prompt length
        st.integers(1, 16),  # max_tokens
        st.integers(0, 3),  # priority
        st.sampled_from([None, None, "s"]),  # cache salt
    ), min_size=1, max_size=7))
    aborts = draw(st.lists(st.tuples(st.integers(0, 40), st.integers(0, 6)), max_size=3))
    return config, [(r[0], prefixes[r[1]][:r[2]], *r[3:]) for r in requests], aborts


def prompt_tokens(prefix: list[int], length: int, index: int) -> list[int]:
    tokens = (prefix + [100 + index] * length)[:length]
    return tokens


def check_state(sim: Sim, everyone: list[Request]) -> None:
    kv, sched = sim.kv, sim.sched
    pool = kv.pool
    pool.check_invariants()
    holders = [0] * pool.num_blocks
    for request in everyone:
        for block_id in kv.block_ids(request.request_id):
            holders[block_id] += 1
    assert [b.ref_cnt for b in pool.blocks] == holders
    assert pool.num_free_blocks == holders.count(0)
    queues = [sched.running, sched.waiting, sched.swapped]
    seen = [r.request_id for q in queues for r in q]
    assert len(seen) == len(set(seen))
    for queue in queues:
        assert queue == sorted(queue, key=sched.order_key)
    assert len(sched.running) <= sched.config.max_num_seqs
    for request in sched.running:
        assert request.status is RequestStatus.RUNNING
        table = kv.block_ids(request.request_id)
        assert len(table) == blocks_needed(request.num_computed_tokens, kv.block_size)
    for request in sched.waiting:
        assert request.status in (RequestStatus.WAITING, RequestStatus.PREEMPTED)
        assert request.num_computed_tokens == 0 and not kv.has_table(request.request_id)
    for request in sched.swapped:
        assert request.status is RequestStatus.SWAPPED
        assert kv.is_swapped(request.request_id) and not kv.has_table(request.request_id)
    swapped_slots = sum(len(kv._swapped[r.request_id]) for r in sched.swapped)
    assert kv.swap_slots.num_free + swapped_slots == kv.swap_slots.num_slots
    for request in everyone:
        if request.is_finished:
            assert not kv.has_table(request.request_id)
            assert not kv.is_swapped(request.request_id)


@settings(max_examples=500, deadline=None)
@given(workloads())
def test_random_memory_workloads_keep_invariants(workload):
    config, specs, aborts = workload
    sim = make_sim(**config)
    pending = sorted(enumerate(specs), key=lambda item: item[1][0])
    everyone: list[Request] = []
    aborted: set[str] = set()
    step = 0
    while pending or sim.sched.has_unfinished_requests():
        assert step < 5000, "the scheduler stopped making progress"
        while pending and pending[0][1][0] <= step:
            index, (_, prefix, length, max_tokens, priority, salt) = pending.pop(0)
            tokens = prompt_tokens(prefix, length, index)
            everyone.append(sim.add(f"r{index}", length, max_tokens, prompt=tokens,
                                    priority=priority, cache_salt=salt))
        for abort_step, which in aborts:
            if abort_step == step and which < len(everyone) and not everyone[which].is_finished:
                sim.sched.finish(everyone[which], RequestStatus.FINISHED_ABORTED)
                aborted.add(everyone[which].request_id)
        check_state(sim, everyone)
        had_work = sim.sched.has_unfinished_requests()
        out = sim.step()
        assert not (out.swap_in and out.swap_out), "a slot may not be written and read at once"
        if had_work:
            assert out.scheduled or out.preempted, "nothing happened while requests wait"
        check_state(sim, everyone)
        step += 1
    stats = sim.kv
    event(f"cache hits: {stats.num_hit_tokens > 0}")
    event(f"evictions: {stats.pool.num_evictions > 0}")
    event(f"swaps: {sim.sched.num_swap_outs > 0}")
    event(f"preempted: {sim.sched.num_preemptions > 0}")

    for request in everyone:
        assert request.is_finished
        if request.request_id not in aborted:
            limit = min(request.sampling_params.max_tokens,
                        sim.max_model_len - request.num_prompt_tokens)
            assert request.num_output_tokens == limit
    pool = sim.kv.pool
    assert all(block.ref_cnt == 0 for block in pool.blocks)
    assert sorted(pool.free.block_ids() + pool.evictable.block_ids()) == \
        list(range(pool.num_blocks))
    assert sim.kv.swap_slots.num_free == sim.kv.swap_slots.num_slots
    assert sim.kv.num_tables() == 0
