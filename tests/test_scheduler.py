"""Scheduler tests on hand-built state: no model, exact plans, block ids and victims.

The engine's part of a step is simulated: through `update_from_output`, every item that
`samples` gets a fake output token, and a request that reached its max_tokens (or
max_model_len) is finished, as the engine does.
"""

from __future__ import annotations

from hypothesis import event, given, settings
from hypothesis import strategies as st
from sched_sim import FAKE_TOKEN, Sim, ids, make_sim, plan, tables

from kvscope.kv.kv_manager import blocks_needed
from kvscope.request import Request, RequestStatus
from kvscope.sched.scheduler import Schedule

# -- exact plans --------------------------------------------------------------------


def test_chunked_prefill_beside_a_decoding_request():
    sim = make_sim(num_blocks=32, block_size=4, budget=8)
    sim.add("a", 3, max_tokens=10)
    out = sim.step()
    assert plan(out) == [("a", 0, 3)]
    assert tables(out) == {"a": [0]}
    assert sim.samples == (True,)

    b = sim.add("b", 20, max_tokens=2)
    out = sim.step()
    assert plan(out) == [("a", 3, 1), ("b", 0, 7)]
    assert tables(out) == {"a": [0], "b": [1, 2]}
    assert sim.samples == (True, False)
    assert [s.is_decode for s in out.scheduled] == [True, False]

    out = sim.step()
    assert plan(out) == [("a", 4, 1), ("b", 7, 7)]
    assert tables(out) == {"a": [0, 3], "b": [1, 2, 4, 5]}
    assert b.num_output_tokens == 0

    out = sim.step()
    assert plan(out) == [("a", 5, 1), ("b", 14, 6)]
    assert tables(out) == {"a": [0, 3], "b": [1, 2, 4, 5, 6]}
    assert sim.samples == (True, True)
    assert b.num_output_tokens == 1

    out = sim.step()  # b's first decode, and its last token
    assert plan(out) == [("a", 6, 1), ("b", 20, 1)]
    assert b.status is RequestStatus.FINISHED_LENGTH
    assert not sim.kv.has_table("b")
    assert ids(sim.sched.running) == ["a"]

    out = sim.step()
    assert plan(out) == [("a", 7, 1)]
    assert tables(out) == {"a": [0, 3]}


def test_token_budget_is_never_exceeded_and_running_goes_first():
    sim = make_sim(num_blocks=32, block_size=4, budget=8)
    sim.add("a", 30, max_tokens=4)
    assert plan(sim.step()) == [("a", 0, 8)]
    sim.add("b", 2, max_tokens=4)
    # the running prefill takes the whole budget: b waits
    assert plan(sim.step()) == [("a", 8, 8)]
    assert ids(sim.sched.waiting) == ["b"]
    assert plan(sim.step()) == [("a", 16, 8)]
    # a's last chunk leaves 2 tokens of budget, enough for b's prompt
    assert plan(sim.step()) == [("a", 24, 6), ("b", 0, 2)]
    assert plan(sim.step()) == [("a", 30, 1), ("b", 2, 1)]


def test_long_prefill_threshold_caps_chunks():
    sim = make_sim(num_blocks=32, block_size=4, budget=16, threshold=5)
    sim.add("a", 12, max_tokens=2)
    sim.add("b", 3, max_tokens=2)
    assert plan(sim.step()) == [("a", 0, 5), ("b", 0, 3)]
    assert plan(sim.step()) == [("a", 5, 5), ("b", 3, 1)]
    assert plan(sim.step()) == [("a", 10, 2)]
    assert plan(sim.step()) == [("a", 12, 1)]
    assert not sim.sched.has_unfinished_requests()


def test_max_num_seqs_caps_the_batch():
    sim = make_sim(num_blocks=32, block_size=4, budget=64, max_num_seqs=2)
    sim.add("a", 4, max_tokens=1)
    sim.add("b", 4, max_tokens=3)
    sim.add("c", 4, max_tokens=3)
    sim.add("d", 4, max_tokens=3)
    out = sim.step()
    assert plan(out) == [("a", 0, 4), ("b", 0, 4)]
    assert ids(sim.sched.waiting) == ["c", "d"]
    # a finished in that step, so one seat is free for c
    assert ids(sim.sched.running) == ["b"]
    assert plan(sim.step()) == [("b", 4, 1), ("c", 0, 4)]
    assert ids(sim.sched.running) == ["b", "c"]
    assert ids(sim.sched.waiting) == ["d"]


def test_finished_request_frees_its_blocks_on_the_same_step():
    sim = make_sim(num_blocks=4, block_size=4, budget=64, max_model_len=16)
    a = sim.add("a", 12, max_tokens=2)
    sim.add("b", 8, max_tokens=1)
    assert plan(sim.step()) == [("a", 0, 12)]  # b's 2 blocks do not fit beside a's 3
    assert sim.kv.block_ids("a") == [0, 1, 2]
    out = sim.step()
    assert plan(out) == [("a", 12, 1)]
    assert tables(out) == {"a": [0, 1, 2, 3]}
    # a hit max_tokens: its blocks are free before the next schedule
    assert a.status is RequestStatus.FINISHED_LENGTH
    assert a.finished_time is not None
    assert sim.kv.num_free_blocks == 4
    assert not sim.kv.has_table("a")
    assert sim.kv.pool.free.block_ids() == [3, 2, 1, 0]
    out = sim.step()
    assert plan(out) == [("b", 0, 8)]
    assert tables(out) == {"b": [3, 2]}


def test_preemption_frees_the_latest_arrival_and_admits_nobody():
    sim = make_sim(num_blocks=7, block_size=4, budget=32)
    a = sim.add("a", 8, max_tokens=3)
    b = sim.add("b", 7, max_tokens=3)
    c = sim.add("c", 12, max_tokens=3)
    out = sim.step()
    assert plan(out) == [("a", 0, 8), ("b", 0, 7), ("c", 0, 12)]
    assert tables(out) == {"a": [0, 1], "b": [2, 3], "c": [4, 5, 6]}
    assert sim.kv.num_free_blocks == 0
    d = sim.add("d", 1, max_tokens=1)

    # a's 9th token needs a third block: c, the latest arrival, is preempted
    out = sim.step()
    assert out.preempted == ["c"]
    assert plan(out) == [("a", 8, 1), ("b", 7, 1)]
    assert tables(out) == {"a": [0, 1, 6], "b": [2, 3]}
    assert c.status is RequestStatus.PREEMPTED
    assert c.num_computed_tokens == 0
    assert c.num_preemptions == 1
    assert c.output_token_ids == [FAKE_TOKEN]  # kept: recomputed, not resampled
    assert not sim.kv.has_table("c")
    assert sim.sched.num_preemptions == 1
    assert ids(sim.sched.waiting) == ["c", "d"]
    assert ids(sim.sched.running) == ["a", "b"]
    # d (one block) would fit in the two freed blocks, but nothing is admitted
    # in a step that preempted
    assert sim.kv.pool.free.block_ids() == [5, 4]
    assert d.status is RequestStatus.WAITING

    out = sim.step()  # a and b finish; c still does not fit, so d waits behind it
    assert out.preempted == []
    assert plan(out) == [("a", 9, 1), ("b", 8, 1)]
    assert tables(out) == {"a": [0, 1, 6], "b": [2, 3, 5]}
    assert a.is_finished and b.is_finished
    assert sim.kv.pool.free.block_ids() == [4, 6, 1, 0, 5, 3, 2]

    out = sim.step()  # c recomputes its prompt and its one output token
    assert plan(out) == [("c", 0, 13), ("d", 0, 1)]
    assert tables(out) == {"c": [4, 6, 1, 0], "d": [5]}
    assert c.status is RequestStatus.RUNNING
    assert c.num_output_tokens == 2


def test_request_that_cannot_grow_preempts_itself_when_it_is_the_latest():
    sim = make_sim(num_blocks=4, block_size=4, budget=32)
    sim.add("a", 6, max_tokens=4)
    b = sim.add("b", 8, max_tokens=4)
    assert plan(sim.step()) == [("a", 0, 6), ("b", 0, 8)]
    out = sim.step()  # a fits its 7th token; b's 9th needs a fifth block
    assert out.preempted == ["b"]
    assert plan(out) == [("a", 6, 1)]
    assert b.num_computed_tokens == 0
    assert ids(sim.sched.waiting) == ["b"]
    assert sim.kv.pool.free.block_ids() == [3, 2]


def test_preemption_takes_several_victims_latest_first():
    sim = make_sim(num_blocks=5, block_size=2, budget=64, max_model_len=12)
    a = sim.add("a", 1, max_tokens=10)
    sim.add("b", 4, max_tokens=8)
    sim.add("c", 4, max_tokens=8)
    assert plan(sim.step()) == [("a", 0, 1), ("b", 0, 4), ("c", 0, 4)]
    assert sim.kv.num_free_blocks == 0
    # give a a long chunk to compute, as if it had been preempted after 7 outputs
    for _ in range(6):
        a.append_output_token(FAKE_TOKEN)
    out = sim.step()  # a needs 8 tokens = 4 blocks, holds 1: c's 2 are not enough, b goes too
    assert out.preempted == ["c", "b"]
    assert plan(out) == [("a", 1, 7)]
    assert tables(out) == {"a": [0, 4, 3, 2]}
    assert ids(sim.sched.waiting) == ["b", "c"]
    assert ids(sim.sched.running) == ["a"]
    assert sim.kv.pool.free.block_ids() == [1]


def test_abort_of_a_waiting_and_a_running_request_frees_everything():
    sim = make_sim(num_blocks=8, block_size=4, budget=8, max_num_seqs=1)
    a = sim.add("a", 10, max_tokens=4)
    b = sim.add("b", 3, max_tokens=4)
    assert plan(sim.step()) == [("a", 0, 8)]
    sim.sched.finish(b, RequestStatus.FINISHED_ABORTED)
    sim.sched.finish(a, RequestStatus.FINISHED_ABORTED)
    assert not sim.sched.has_unfinished_requests()
    assert sim.kv.num_free_blocks == 8
    assert a.finish_reason == "abort"
    assert sim.sched.schedule().is_empty


# -- property: random mixes, aborts and pool sizes ----------------------------------


@st.composite
def workloads(draw):
    block_size = draw(st.sampled_from([1, 2, 4, 8]))
    max_model_len = draw(st.integers(4, 48))
    num_blocks = blocks_needed(max_model_len, block_size) + draw(st.integers(0, 10))
    budget = draw(st.integers(1, 48))
    max_num_seqs = draw(st.integers(1, 6))
    threshold = draw(st.sampled_from([0, 0, 1, 3, 8]))
    requests = draw(st.lists(
        st.tuples(st.integers(0, 12),  # arrival step
                  st.integers(1, max_model_len - 1),  # prompt length
                  st.integers(1, 24)),  # max_tokens
        min_size=1, max_size=8))
    aborts = draw(st.lists(st.tuples(st.integers(0, 40), st.integers(0, 7)), max_size=3))
    return block_size, max_model_len, num_blocks, budget, max_num_seqs, threshold, \
        requests, aborts


def check_state(sim: Sim, everyone: list[Request]) -> None:
    kv, sched = sim.kv, sim.sched
    pool = kv.pool
    holders = [0] * pool.num_blocks
    for request in everyone:
        for block_id in kv.block_ids(request.request_id):
            holders[block_id] += 1
    assert [b.ref_cnt for b in pool.blocks] == holders
    assert max(holders, default=0) <= 1  # no sharing yet: one owner per block
    free_ids = pool.free.block_ids()
    assert len(free_ids) == len(set(free_ids)) == pool.num_free_blocks
    assert sorted(free_ids) == [i for i, n in enumerate(holders) if n == 0]
    assert pool.num_free_blocks + pool.num_used_blocks == pool.num_blocks

    running, waiting = set(ids(sched.running)), set(ids(sched.waiting))
    assert not running & waiting
    assert len(sched.running) <= sched.config.max_num_seqs
    assert kv.num_tables() == len(sched.running)
    for request in sched.running:
        assert request.status is RequestStatus.RUNNING
        table = kv.block_ids(request.request_id)
        assert len(table) == blocks_needed(request.num_computed_tokens, kv.block_size)
        assert request.num_tokens <= sim.max_model_len
    for request in sched.waiting:
        assert request.status in (RequestStatus.WAITING, RequestStatus.PREEMPTED)
        assert request.num_computed_tokens == 0
        assert not kv.has_table(request.request_id)
    for request in everyone:
        if request.is_finished:
            assert request.request_id not in running | waiting
            assert not kv.has_table(request.request_id)


def check_plan(out: Schedule, sim: Sim, running_before: list[Request],
               waiting_before: list[Request], computed_before: dict[str, int]) -> None:
    config = sim.sched.config
    scheduled = [s.request for s in out.scheduled]
    assert len(set(ids(scheduled))) == len(scheduled)
    assert out.num_tokens <= config.max_num_batched_tokens
    for item in out.scheduled:
        request_id = item.request.request_id
        assert item.num_tokens >= 1
        assert item.start == computed_before[request_id]
        assert item.start + item.num_tokens <= item.request.num_tokens
        assert len(item.block_ids) == blocks_needed(item.start + item.num_tokens,
                                                    sim.kv.block_size)
        if config.long_prefill_token_threshold and item.num_tokens > 1:
            assert item.num_tokens <= config.long_prefill_token_threshold

    # running requests first, in order; newly admitted ones after, in queue order
    was_running = [r for r in scheduled if r in running_before]
    admitted = [r for r in scheduled if r not in running_before]
    assert scheduled == was_running + admitted
    assert was_running == [r for r in running_before if r in was_running]
    assert admitted == waiting_before[:len(admitted)]

    # victims are the latest running requests, taken from the back
    victims = [r for r in running_before if r.request_id in out.preempted]
    assert ids(victims[::-1]) == out.preempted
    assert victims == running_before[len(running_before) - len(victims):]
    assert ids(sim.sched.waiting)[:len(victims)] == ids(victims)
    for victim in victims:
        assert victim not in scheduled
        assert victim.num_computed_tokens == 0
        assert not sim.kv.has_table(victim.request_id)
    if out.preempted:
        assert not admitted
    # a running request is skipped only once the budget is spent
    skipped = [r for r in running_before if r not in scheduled and r not in victims]
    if skipped:
        assert out.num_tokens == config.max_num_batched_tokens
    if admitted:
        assert not skipped


@settings(max_examples=300, deadline=None)
@given(workloads())
def test_random_workloads_keep_invariants_and_finish(workload):
    (block_size, max_model_len, num_blocks, budget, max_num_seqs, threshold,
     specs, aborts) = workload
    sim = make_sim(num_blocks, block_size, budget, max_num_seqs, max_model_len, threshold)
    everyone: list[Request] = []
    pending = sorted(enumerate(specs), key=lambda item: item[1][0])
    aborted: set[str] = set()
    step = 0
    while pending or sim.sched.has_unfinished_requests():
        assert step < 5000, "the scheduler stopped making progress"
        while pending and pending[0][1][0] <= step:
            index, (_, prompt_len, max_tokens) = pending.pop(0)
            everyone.append(sim.add(f"r{index}", prompt_len, max_tokens))
        for abort_step, which in aborts:
            if abort_step == step and which < len(everyone):
                victim = everyone[which]
                if not victim.is_finished:
                    sim.sched.finish(victim, RequestStatus.FINISHED_ABORTED)
                    aborted.add(victim.request_id)
        check_state(sim, everyone)
        running_before = list(sim.sched.running)
        waiting_before = list(sim.sched.waiting)
        computed_before = {r.request_id: r.num_computed_tokens for r in everyone}
        had_work = sim.sched.has_unfinished_requests()
        out = sim.step()
        if had_work:
            assert out.scheduled, "nothing scheduled while requests wait"
        check_plan(out, sim, running_before, waiting_before, computed_before)
        check_state(sim, everyone)
        step += 1
    event(f"preempted: {sim.sched.num_preemptions > 0}")
    event(f"aborted: {len(aborted)}")

    for request in everyone:
        assert request.is_finished
        if request.request_id in aborted:
            assert request.status is RequestStatus.FINISHED_ABORTED
        else:
            limit = min(request.sampling_params.max_tokens,
                        max_model_len - request.num_prompt_tokens)
            assert request.num_output_tokens == limit
    pool = sim.kv.pool
    assert pool.num_free_blocks == pool.num_blocks
    assert sorted(pool.free.block_ids()) == list(range(pool.num_blocks))
    assert sim.kv.num_tables() == 0
