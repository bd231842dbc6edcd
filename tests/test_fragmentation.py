"""Fragmentation accounting from the real allocations: exact slot counts on built
cases (with and without shared blocks), and a real run where paging wastes far less
than contiguous reservation."""

from __future__ import annotations

import pytest

from kvscope import SamplingParams
from kvscope.kv.fragmentation import measure
from kvscope.kv.kv_manager import KVCacheManager
from kvscope.request import Request


def admit(kv: KVCacheManager, request_id: str, tokens: list[int], max_tokens: int) -> Request:
    request = Request(request_id, tokens, SamplingParams(max_tokens=max_tokens))
    hits = kv.find_cached_prefix(request)
    assert kv.allocate_slots(request, len(tokens) - len(hits) * kv.block_size, hits)
    kv.cache_full_blocks(request, len(tokens))
    request.num_computed_tokens = len(tokens)
    return request


def test_one_request_wastes_only_its_last_block_tail():
    kv = KVCacheManager(num_blocks=8, block_size=4)
    a = admit(kv, "a", list(range(6)), max_tokens=4)
    frag = measure(kv, [a], max_model_len=16)
    assert (frag.allocated_slots, frag.filled_slots) == (8, 6)
    assert (frag.reserved_max_model_len, frag.reserved_own_length) == (16, 10)
    assert frag.paged_waste == pytest.approx(0.25)
    assert frag.contiguous_waste == pytest.approx(10 / 16)
    assert frag.contiguous_own_waste == pytest.approx(0.4)


def test_shared_blocks_count_once():
    kv = KVCacheManager(num_blocks=8, block_size=4)
    a = admit(kv, "a", list(range(10)), max_tokens=2)
    b = admit(kv, "b", [*range(8), 50, 51, 52], max_tokens=2)
    assert kv.block_ids("a")[:2] == kv.block_ids("b")[:2]
    frag = measure(kv, [a, b], max_model_len=32)
    assert frag.shared_blocks == 2
    assert frag.cached_blocks == 2
    assert frag.allocated_slots == 4 * 4  # 2 shared + one partial block each
    assert frag.filled_slots == 8 + 2 + 3
    assert frag.tokens_held == 21
    assert frag.reserved_max_model_len == 64
    assert frag.reserved_own_length == 12 + 13


def test_real_run_pages_waste_little(make_llm):
    llm = make_llm(enable_prefix_caching=False)
    prompts = [f"Item {i}: a short note about paged memory and caches." for i in range(8)]
    llm.generate(prompts, SamplingParams(temperature=0.0, max_tokens=30, ignore_eos=True))
    stats = llm.engine.get_stats()
    total = llm.engine.run_fragmentation
    assert total.allocated_slots >= total.filled_slots > 0
    assert stats["paged_waste"] < stats["contiguous_own_waste"]
    assert stats["contiguous_own_waste"] < stats["contiguous_waste"]
    assert llm.engine.last_fragmentation.allocated_slots == 0  # all finished and freed
