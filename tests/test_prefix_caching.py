"""Prefix caching: exact hits on the hash chain, LRU eviction behind free blocks, and
greedy output identical with the cache on and off on the real model."""

from __future__ import annotations

import pytest

from kvscope import LLM, SamplingParams
from kvscope.kv.block_pool import BlockPool
from kvscope.kv.hashing import extend_block_hashes, hash_block
from kvscope.kv.kv_manager import KVCacheManager
from kvscope.request import Request

GREEDY = SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True)
TEXT = ("The history of computing is a story of memory as much as of arithmetic. Early "
        "machines stored numbers in delay lines and rotating drums, and every program had "
        "to be arranged around the slow turn of the drum. Later, core memory made every "
        "word equally close, and programmers stopped counting revolutions. Caches then "
        "brought the old problem back in a new form: data that was used recently is fast, "
        "and everything else is slow, so the art became keeping the right things close. "
        "A serving engine for language models faces the same trade: the keys and values of "
        "every token it has read are worth keeping, because reading them again costs a "
        "full pass through the network.")


def request(request_id: str, tokens: list[int], salt: str | None = None) -> Request:
    return Request(request_id, tokens, SamplingParams(max_tokens=4), cache_salt=salt)


def computed(kv: KVCacheManager, req: Request) -> None:
    """Admit `req` with its cache hits, compute its whole prompt, cache its blocks."""
    hits = kv.find_cached_prefix(req)
    hit_tokens = len(hits) * kv.block_size
    assert kv.allocate_slots(req, req.num_tokens - hit_tokens, hits)
    kv.record_lookup(req, hits)
    kv.cache_full_blocks(req, req.num_tokens)
    req.num_computed_tokens = req.num_tokens


# -- the hash chain -------------------------------------------------------------------


def test_hash_chain_names_the_whole_prefix():
    a = extend_block_hashes([], list(range(40)), 16)
    b = extend_block_hashes([], [*range(16), 99, *range(17, 40)], 16)
    assert len(a) == 2  # full blocks only
    assert a[0] == b[0] and a[1] != b[1]
    assert a[1] == hash_block(a[0], list(range(16, 32)))
    salted = extend_block_hashes([], list(range(40)), 16, salt="tenant-1")
    assert salted[0] != a[0] and salted[1] != a[1]  # the salt flows down the chain


def test_100_token_shared_prefix_hits_96():
    kv = KVCacheManager(num_blocks=32, block_size=16)
    shared = list(range(1000, 1100))
    first = request("a", [*shared, 1, 2, 3])
    computed(kv, first)
    second = request("b", [*shared, 7, 8, 9, 10])
    hits = kv.find_cached_prefix(second)
    assert len(hits) * 16 == 96  # 6 full blocks; the partial 7th is never shared
    assert [b.block_id for b in hits] == kv.block_ids("a")[:6]
    computed(kv, second)
    assert (kv.num_queried_tokens, kv.num_hit_tokens) == (103 + 104, 96)
    assert kv.block_ids("b")[:6] == kv.block_ids("a")[:6]
    assert kv.block_ids("b")[6] != kv.block_ids("a")[6]
    assert [kv.pool.blocks[i].ref_cnt for i in kv.block_ids("a")] == [2] * 6 + [1]


def test_whole_prompt_cached_still_computes_its_last_token():
    kv = KVCacheManager(num_blocks=16, block_size=16)
    computed(kv, request("a", list(range(64))))
    again = request("b", list(range(64)))
    assert len(kv.find_cached_prefix(again)) == 3  # 48 tokens: the 64th must run


def test_a_hit_verifies_the_token_ids():
    kv = KVCacheManager(num_blocks=16, block_size=4)
    a = request("a", [1, 2, 3, 4, 5])
    computed(kv, a)
    block = kv.pool.blocks[kv.block_ids("a")[0]]
    assert block.token_ids == (1, 2, 3, 4)
    # forge a collision: another block's hash points at a's block
    b = request("b", [9, 9, 9, 9, 5])
    extend_block_hashes(b.block_hashes, b.all_token_ids, 4)
    kv.pool.cached[b.block_hashes[0]] = block
    assert kv.find_cached_prefix(b) == []


def test_salted_requests_do_not_share():
    kv = KVCacheManager(num_blocks=16, block_size=4)
    computed(kv, request("a", list(range(10)), salt="x"))
    assert kv.find_cached_prefix(request("b", list(range(10)), salt="y")) == []
    assert kv.find_cached_prefix(request("c", list(range(10)))) == []
    assert len(kv.find_cached_prefix(request("d", list(range(10)), salt="x"))) == 2


# -- eviction ------------------------------------------------------------------------


def test_eviction_is_lru_and_waits_for_free_blocks():
    pool = BlockPool(6)
    blocks = pool.allocate(6)
    for i in (0, 1, 2, 3):
        pool.cache(blocks[i], bytes([i]), [i])
    # released in this order: 2, 0 (cached), 4 (plain), 3, 1 (cached), 5 (plain)
    pool.release([blocks[2], blocks[0], blocks[4], blocks[3], blocks[1], blocks[5]])
    assert pool.free.block_ids() == [4, 5]
    assert pool.evictable.block_ids() == [2, 0, 3, 1]
    assert pool.num_free_blocks == 6 and pool.num_cached_blocks == 4
    # a hit revives block 3 from the middle of the LRU
    pool.share([blocks[3]])
    assert pool.evictable.block_ids() == [2, 0, 1]
    order = [pool.allocate(1)[0].block_id for _ in range(5)]
    assert order == [4, 5, 2, 0, 1]  # plain free blocks first, then least recently used
    assert pool.num_evictions == 3
    assert pool.num_cached_blocks == 1 and pool.lookup(bytes([3]), [3]) is blocks[3]
    assert pool.lookup(bytes([2]), [2]) is None
    pool.check_invariants()


def test_freed_chain_is_evicted_tail_first():
    kv = KVCacheManager(num_blocks=4, block_size=2)
    a = request("a", [1, 2, 3, 4, 5, 6, 7, 8])
    computed(kv, a)
    kv.free(a)
    table = [0, 1, 2, 3]
    assert kv.pool.evictable.block_ids() == table[::-1]  # the tail goes first
    assert kv.reset_prefix_cache() == 4
    assert kv.pool.evictable.block_ids() == []
    assert sorted(kv.pool.free.block_ids()) == table
    kv.pool.check_invariants()


# -- the real model ------------------------------------------------------------------


@pytest.fixture(scope="module")
def engines(make_llm) -> tuple[LLM, LLM]:
    return make_llm(enable_prefix_caching=True), make_llm(enable_prefix_caching=False)


def prompts_sharing(llm: LLM, shared_tokens: int) -> tuple[list[int], list[int]]:
    base = llm.tokenizer.encode(TEXT)
    assert len(base) >= 110
    first = base[:110]
    second = [*base[:shared_tokens], *reversed(base[shared_tokens:110])]
    if shared_tokens < 110:
        assert second[shared_tokens] != first[shared_tokens]
    return first, second


@pytest.mark.parametrize(("shared", "hit"), [(0, 0), (20, 16), (100, 96), (110, 96)])
def test_greedy_output_same_with_cache_on_and_off(engines, shared, hit):
    on, off = engines
    on.reset_prefix_cache()
    first, second = prompts_sharing(on, shared)
    expected = [off.generate(p, GREEDY)[0].outputs[0].token_ids for p in (first, second)]
    before = on.engine.get_stats()
    got = [on.generate(p, GREEDY)[0].outputs[0].token_ids for p in (first, second)]
    after = on.engine.get_stats()
    assert got == expected
    assert after["prefix_cache_hits"] - before["prefix_cache_hits"] == hit
    assert after["num_used_blocks"] == 0


def test_same_prompt_in_one_batch_and_different_salts(engines):
    on, off = engines
    on.reset_prefix_cache()
    first, _ = prompts_sharing(on, 110)
    expected = off.generate(first, GREEDY)[0].outputs[0].token_ids
    on.generate(first, GREEDY, cache_salt="tenant-a")
    before = on.engine.get_stats()["prefix_cache_hits"]
    outs = on.generate([first, first], GREEDY, cache_salt=["tenant-b", "tenant-a"])
    assert [o.outputs[0].token_ids for o in outs] == [expected, expected]
    # only tenant-a's request hits what tenant-a cached: 6 full blocks of 110 tokens
    assert on.engine.get_stats()["prefix_cache_hits"] - before == 96


def test_requests_admitted_in_one_step_share_the_prefix(engines):
    """Blocks are cached when their step is scheduled (every layer writes the step's
    K/V before attending), so later requests of the same step already hit them."""
    on, off = engines
    on.reset_prefix_cache()
    base = on.tokenizer.encode(TEXT)[:100]
    prompts = [[*base, 500 + i, 600 + i, 700 + i] for i in range(4)]
    expected = [o.outputs[0].token_ids for o in off.generate(prompts, GREEDY)]
    before = on.engine.get_stats()
    outs = on.generate(prompts, GREEDY)
    after = on.engine.get_stats()
    assert [o.outputs[0].token_ids for o in outs] == expected
    assert after["prefix_cache_hits"] - before["prefix_cache_hits"] == 3 * 96
    assert after["num_steps"] - before["num_steps"] == GREEDY.max_tokens  # one prefill step
