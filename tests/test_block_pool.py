"""BlockPool, its free queue and KVCacheManager: exact ids, refcounts and invariants."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    initialize,
    invariant,
    rule,
)

from kvscope.kv.block_pool import BlockPool, BlockPoolError, FreeBlockQueue, KVBlock
from kvscope.kv.kv_manager import KVCacheManager, blocks_needed
from kvscope.request import Request
from kvscope.sampling_params import SamplingParams


def ids(blocks: list[KVBlock]) -> list[int]:
    return [b.block_id for b in blocks]


def refcounts(pool: BlockPool) -> list[int]:
    return [b.ref_cnt for b in pool.blocks]


# -- FreeBlockQueue -----------------------------------------------------------------


def test_free_queue_starts_in_id_order():
    blocks = [KVBlock(i) for i in range(5)]
    queue = FreeBlockQueue(blocks)
    assert queue.block_ids() == [0, 1, 2, 3, 4]
    assert queue.num_free == 5


def test_free_queue_removes_from_the_middle_in_place():
    blocks = [KVBlock(i) for i in range(5)]
    queue = FreeBlockQueue(blocks)
    queue.remove(blocks[2])
    assert queue.block_ids() == [0, 1, 3, 4]
    assert queue.num_free == 4
    # the neighbours are linked to each other directly: O(1) unlinking
    assert blocks[1].next_free is blocks[3]
    assert blocks[3].prev_free is blocks[1]
    assert blocks[2].prev_free is None and blocks[2].next_free is None
    queue.remove(blocks[0])  # the head
    queue.remove(blocks[4])  # the tail
    assert queue.block_ids() == [1, 3]
    assert queue.num_free == 2
    queue.append(blocks[2])
    assert queue.block_ids() == [1, 3, 2]
    assert queue.popleft() is blocks[1]
    assert queue.block_ids() == [3, 2]


def test_free_queue_rejects_removing_a_block_not_in_it():
    blocks = [KVBlock(i) for i in range(3)]
    queue = FreeBlockQueue(blocks)
    queue.remove(blocks[1])
    with pytest.raises(BlockPoolError, match="block 1 is not in the free queue"):
        queue.remove(blocks[1])
    assert queue.block_ids() == [0, 2]
    assert queue.num_free == 2


def test_free_queue_popleft_on_empty_raises():
    queue = FreeBlockQueue([])
    with pytest.raises(BlockPoolError, match="no free block left"):
        queue.popleft()


# -- BlockPool ----------------------------------------------------------------------


def test_pool_needs_a_block():
    with pytest.raises(BlockPoolError, match="at least one block"):
        BlockPool(0)


def test_allocate_takes_from_the_head_in_order():
    pool = BlockPool(6)
    first = pool.allocate(2)
    second = pool.allocate(3)
    assert ids(first) == [0, 1]
    assert ids(second) == [2, 3, 4]
    assert refcounts(pool) == [1, 1, 1, 1, 1, 0]
    assert pool.free.block_ids() == [5]
    assert (pool.num_free_blocks, pool.num_used_blocks) == (1, 5)
    assert pool.usage() == pytest.approx(5 / 6)
    assert pool.allocate(0) == []


def test_release_order_is_reuse_order():
    pool = BlockPool(6)
    blocks = pool.allocate(6)
    pool.release([blocks[4], blocks[1], blocks[3]])
    assert pool.free.block_ids() == [4, 1, 3]
    assert refcounts(pool) == [1, 0, 1, 0, 0, 1]
    assert ids(pool.allocate(2)) == [4, 1]
    pool.release([blocks[0]])
    assert pool.free.block_ids() == [3, 0]
    assert ids(pool.allocate(2)) == [3, 0]
    assert pool.num_free_blocks == 0


def test_share_and_release_refcounts():
    pool = BlockPool(4)
    a, b = pool.allocate(2)
    pool.share([a, b])
    pool.share([a])
    assert (a.ref_cnt, b.ref_cnt) == (3, 2)
    pool.release([a, b])
    assert (a.ref_cnt, b.ref_cnt) == (2, 1)
    assert pool.free.block_ids() == [2, 3]
    pool.release([b])
    assert b.ref_cnt == 0
    assert pool.free.block_ids() == [2, 3, 1]
    pool.release([a, a])
    assert a.ref_cnt == 0
    assert pool.free.block_ids() == [2, 3, 1, 0]
    assert pool.num_free_blocks == 4


def test_over_release_raises_and_changes_nothing():
    pool = BlockPool(3)
    (block,) = pool.allocate(1)
    pool.release([block])
    with pytest.raises(BlockPoolError, match="block 0 released more often than held"):
        pool.release([block])
    assert block.ref_cnt == 0
    assert pool.free.block_ids() == [1, 2, 0]
    assert pool.num_free_blocks == 3


def test_sharing_a_free_block_raises():
    pool = BlockPool(2)
    with pytest.raises(BlockPoolError, match="cannot share free block 1"):
        pool.share([pool.blocks[1]])
    assert refcounts(pool) == [0, 0]


def test_over_allocation_raises_and_takes_nothing():
    pool = BlockPool(4)
    pool.allocate(3)
    with pytest.raises(BlockPoolError, match="asked for 2 blocks, only 1 free"):
        pool.allocate(2)
    assert pool.free.block_ids() == [3]
    assert refcounts(pool) == [1, 1, 1, 0]


# -- KVCacheManager -----------------------------------------------------------------


def fake_request(request_id: str, num_prompt_tokens: int) -> Request:
    return Request(request_id, list(range(num_prompt_tokens)), SamplingParams(max_tokens=8))


def test_blocks_needed():
    assert [blocks_needed(n, 4) for n in (0, 1, 4, 5, 8, 9)] == [0, 1, 1, 2, 2, 3]


def test_manager_allocates_only_when_tokens_reach_a_block():
    kv = KVCacheManager(num_blocks=8, block_size=4)
    a = fake_request("a", 6)
    assert kv.allocate_slots(a, 3)
    assert kv.block_ids("a") == [0]
    a.num_computed_tokens = 3
    assert kv.num_new_blocks_needed(a, 1) == 0
    assert kv.allocate_slots(a, 1)  # token 3 still fits block 0
    assert kv.block_ids("a") == [0]
    a.num_computed_tokens = 4
    assert kv.num_new_blocks_needed(a, 5) == 2
    assert kv.allocate_slots(a, 5)
    assert kv.block_ids("a") == [0, 1, 2]
    b = fake_request("b", 2)
    assert kv.allocate_slots(b, 2)
    assert kv.block_ids("b") == [3]
    assert kv.num_free_blocks == 4
    assert kv.num_tables() == 2


def test_manager_refuses_without_changing_anything():
    kv = KVCacheManager(num_blocks=3, block_size=4)
    a = fake_request("a", 8)
    assert kv.allocate_slots(a, 8)
    b = fake_request("b", 5)
    assert not kv.allocate_slots(b, 5)  # needs 2, 1 free
    assert not kv.has_table("b")
    assert kv.block_ids("b") == []
    assert kv.num_free_blocks == 1
    assert kv.allocate_slots(b, 4)
    assert kv.block_ids("b") == [2]


def test_manager_free_returns_tail_first():
    kv = KVCacheManager(num_blocks=6, block_size=2)
    a = fake_request("a", 6)
    b = fake_request("b", 4)
    assert kv.allocate_slots(a, 6)
    assert kv.allocate_slots(b, 4)
    assert kv.block_ids("a") == [0, 1, 2]
    assert kv.block_ids("b") == [3, 4]
    assert kv.free(a) == [0, 1, 2]
    assert not kv.has_table("a")
    # the request's last block goes back first, so it is reused first
    assert kv.pool.free.block_ids() == [5, 2, 1, 0]
    c = fake_request("c", 5)
    assert kv.allocate_slots(c, 5)
    assert kv.block_ids("c") == [5, 2, 1]
    assert kv.free(b) == [3, 4]
    assert kv.pool.free.block_ids() == [0, 4, 3]
    assert kv.free(fake_request("never-seen", 3)) == []


# -- property: random allocate/append/free keeps the invariants ----------------------


class KVManagerMachine(RuleBasedStateMachine):
    """Requests grow by random amounts (prefill chunks, decode tokens) and leave."""

    live = Bundle("live")

    @initialize(num_blocks=st.integers(1, 24), block_size=st.sampled_from([1, 2, 4, 16]))
    def setup(self, num_blocks: int, block_size: int) -> None:
        self.kv = KVCacheManager(num_blocks, block_size)
        self.requests: dict[str, Request] = {}
        self.next_id = 0

    @rule(target=live, prompt_len=st.integers(1, 64))
    def add(self, prompt_len: int) -> str:
        request_id = f"r{self.next_id}"
        self.next_id += 1
        self.requests[request_id] = fake_request(request_id, prompt_len)
        return request_id

    @rule(request_id=live, grow=st.integers(1, 40))
    def allocate(self, request_id: str, grow: int) -> None:
        request = self.requests.get(request_id)
        if request is None:
            return
        before = self.kv.block_ids(request_id)
        needed = self.kv.num_new_blocks_needed(request, grow)
        free_before = list(self.kv.pool.free.block_ids())
        ok = self.kv.allocate_slots(request, grow)
        assert ok == (needed <= len(free_before))
        after = self.kv.block_ids(request_id)
        if ok:
            # the new blocks are the head of the free queue, in order
            assert after == before + free_before[:needed]
            request.num_computed_tokens += grow
            assert len(after) == blocks_needed(request.num_computed_tokens, self.kv.block_size)
        else:
            assert after == before
            assert self.kv.pool.free.block_ids() == free_before

    @rule(request_id=consumes(live))
    def free(self, request_id: str) -> None:
        request = self.requests.pop(request_id, None)
        if request is None:
            return
        table = self.kv.block_ids(request_id)
        free_before = self.kv.pool.free.block_ids()
        assert self.kv.free(request) == table
        assert self.kv.pool.free.block_ids() == free_before + table[::-1]
        assert not self.kv.has_table(request_id)

    @invariant()
    def pool_is_consistent(self) -> None:
        if not hasattr(self, "kv"):
            return
        check_pool_invariants(self.kv, self.requests.values())

    def teardown(self) -> None:
        if not hasattr(self, "kv"):
            return
        for request in list(self.requests.values()):
            self.kv.free(request)
        pool = self.kv.pool
        assert pool.num_free_blocks == pool.num_blocks
        assert sorted(pool.free.block_ids()) == list(range(pool.num_blocks))
        assert all(b.ref_cnt == 0 for b in pool.blocks)
        assert self.kv.num_tables() == 0


def check_pool_invariants(kv: KVCacheManager, requests) -> None:
    """DESIGN.md: refcount == number of block tables holding the block; never negative;
    a refcount-0 block is in the free queue exactly once; free + used == total."""
    pool = kv.pool
    holders = [0] * pool.num_blocks
    tables = 0
    for request in requests:
        if kv.has_table(request.request_id):
            tables += 1
            table = kv.block_ids(request.request_id)
            assert len(set(table)) == len(table)
            for block_id in table:
                holders[block_id] += 1
    assert kv.num_tables() == tables
    assert [b.ref_cnt for b in pool.blocks] == holders
    free_ids = pool.free.block_ids()
    assert len(free_ids) == len(set(free_ids)) == pool.num_free_blocks
    assert sorted(free_ids) == [i for i, n in enumerate(holders) if n == 0]
    assert all(b.ref_cnt >= 0 for b in pool.blocks)
    assert pool.num_free_blocks + pool.num_used_blocks == pool.num_blocks
    assert pool.num_used_blocks == sum(1 for n in holders if n > 0)


KVManagerMachine.TestCase.settings = settings(
    max_examples=60, stateful_step_count=40, deadline=None)
TestKVManagerProperty = KVManagerMachine.TestCase


# -- property: shared blocks (forked tables) on the bare pool -------------------------

pool_ops = st.lists(st.one_of(
    st.tuples(st.just("allocate"), st.integers(0, 6)),
    st.tuples(st.just("fork"), st.integers(0, 50)),
    st.tuples(st.just("release"), st.integers(0, 50)),
), max_size=60)


@settings(max_examples=150, deadline=None)
@given(num_blocks=st.integers(1, 16), ops=pool_ops)
def test_pool_refcounts_follow_shared_tables(num_blocks: int, ops):
    """Tables that share blocks (as forks will): a block's refcount is the number of
    tables holding it, and it is free exactly when no table does."""
    pool = BlockPool(num_blocks)
    tables: list[list[KVBlock]] = []
    for op, arg in ops:
        if op == "allocate":
            free_before = pool.free.block_ids()
            if arg > len(free_before):
                with pytest.raises(BlockPoolError):
                    pool.allocate(arg)
                assert pool.free.block_ids() == free_before
            else:
                table = pool.allocate(arg)
                assert ids(table) == free_before[:arg]
                tables.append(table)
        elif op == "fork" and tables:
            table = tables[arg % len(tables)]
            pool.share(table)
            tables.append(list(table))
        elif op == "release" and tables:
            table = tables.pop(arg % len(tables))
            free_before = pool.free.block_ids()
            pool.release(reversed(table))
            still_held = {b.block_id for t in tables for b in t}
            newly_free = [b.block_id for b in reversed(table) if b.block_id not in still_held]
            assert pool.free.block_ids() == free_before + newly_free
        holders = [0] * num_blocks
        for table in tables:
            for block in table:
                holders[block.block_id] += 1
        assert refcounts(pool) == holders
        free_ids = pool.free.block_ids()
        assert len(free_ids) == len(set(free_ids)) == pool.num_free_blocks
        assert sorted(free_ids) == [i for i, n in enumerate(holders) if n == 0]
        assert pool.num_free_blocks + pool.num_used_blocks == num_blocks
    for table in tables:
        pool.release(table)
    assert sorted(pool.free.block_ids()) == list(range(num_blocks))
    assert refcounts(pool) == [0] * num_blocks
