"""Parallel sampling on shared blocks: one prefill, n sequences forked from it, the
shared last block copied exactly when the sequences first write into it, and each
sequence equal to a lone request with seed + i."""

from __future__ import annotations

from pathlib import Path

import pytest

import kvscope.bench
from kvscope import SamplingParams
from kvscope.sampling_params import SamplingParamsError

BLOCK = 16


def prompt_of(llm, length: int) -> list[int]:
    text = (Path(kvscope.bench.__file__).parent / "data" / "computing_history.txt").read_text()
    ids = llm.tokenizer.encode(text)
    assert len(ids) >= length
    return ids[:length]


def table(llm, request_id: str) -> list[int]:
    return llm.engine.kv.block_ids(request_id)


def refcount(llm, block_id: int) -> int:
    return llm.engine.kv.pool.blocks[block_id].ref_cnt


def test_n8_shares_the_prompt_and_copies_the_partial_block_once_per_writer(make_llm):
    llm = make_llm(enable_prefix_caching=False)
    engine = llm.engine
    prompt = prompt_of(llm, 200)  # 12 full blocks and 8 tokens in a 13th
    params = SamplingParams(n=8, temperature=0.9, seed=11, max_tokens=40, ignore_eos=True)
    engine.add_request("p", prompt, params)
    engine.step()  # the prefill: one request, then the fork
    ids = ["p"] + [f"p#{i}" for i in range(1, 8)]
    prompt_blocks = table(llm, "p")
    assert len(prompt_blocks) == 13
    assert all(table(llm, i) == prompt_blocks for i in ids)
    assert all(refcount(llm, b) == 8 for b in prompt_blocks)
    assert engine.kv.num_copies_on_write == 0
    free_before = engine.kv.num_free_blocks

    engine.step()  # every sequence writes its first token's K/V into the shared block 12
    assert engine.kv.num_copies_on_write == 7  # the last writer finds it no longer shared
    last_blocks = {table(llm, i)[12] for i in ids}
    assert len(last_blocks) == 8 and prompt_blocks[12] in last_blocks
    assert all(table(llm, i)[:12] == prompt_blocks[:12] for i in ids)
    assert all(refcount(llm, b) == 8 for b in prompt_blocks[:12])
    assert all(refcount(llm, b) == 1 for b in last_blocks)
    assert engine.kv.num_free_blocks == free_before - 7

    peak = 0
    outputs = []
    while engine.has_unfinished_requests():
        outputs = engine.step() or outputs
        peak = max(peak, engine.kv.pool.num_used_blocks)
    # prompt blocks once, plus each sequence's own: positions 192..239 = 3 blocks each
    assert peak == 12 + 8 * 3
    assert engine.kv.num_copies_on_write == 7
    out = outputs[0]
    assert out.finished and [c.index for c in out.outputs] == list(range(8))
    alone = llm.generate([prompt] * 8, [SamplingParams(temperature=0.9, seed=11 + i,
                                                       max_tokens=40, ignore_eos=True)
                                        for i in range(8)])
    assert [c.token_ids for c in out.outputs] == [a.outputs[0].token_ids for a in alone]
    assert len({tuple(c.token_ids) for c in out.outputs}) > 1
    assert engine.kv.num_free_blocks == engine.num_blocks


def test_a_prompt_of_whole_blocks_needs_no_copy(make_llm):
    llm = make_llm(enable_prefix_caching=False)
    prompt = prompt_of(llm, 13 * BLOCK)
    out = llm.generate(prompt, SamplingParams(n=4, temperature=1.0, seed=3, max_tokens=8))
    assert len(out[0].outputs) == 4
    assert llm.engine.kv.num_copies_on_write == 0
    assert llm.engine.kv.num_free_blocks == llm.engine.num_blocks


def test_best_of_returns_the_n_most_likely(make_llm):
    llm = make_llm()
    prompt = prompt_of(llm, 40)
    out = llm.generate(prompt, SamplingParams(n=2, best_of=6, temperature=1.0, seed=5,
                                              max_tokens=12))[0]
    assert len(out.outputs) == 2
    everyone = llm.generate([prompt] * 6, [SamplingParams(temperature=1.0, seed=5 + i,
                                                          max_tokens=12, logprobs=0)
                                           for i in range(6)])
    ranked = sorted(everyone, key=lambda o: o.outputs[0].cumulative_logprob, reverse=True)
    assert [c.token_ids for c in out.outputs] == [o.outputs[0].token_ids for o in ranked[:2]]
    assert out.outputs[0].cumulative_logprob == pytest.approx(
        ranked[0].outputs[0].cumulative_logprob, abs=1e-4)


def test_greedy_n_with_prefix_caching_and_preemption_frees_everything(make_llm):
    probe = make_llm(enable_prefix_caching=False)
    block_bytes = probe.engine.loaded.arch.kv_bytes_per_token(4) * BLOCK
    llm = make_llm(kv_cache_memory=block_bytes * 14, max_model_len=128)
    prompts = [prompt_of(llm, 40), prompt_of(llm, 40)[::-1]]
    outs = llm.generate(prompts, SamplingParams(n=3, temperature=0.7, seed=1, max_tokens=30,
                                                ignore_eos=True))
    assert llm.engine.get_stats()["num_preemptions"] > 0
    roomy = make_llm(enable_prefix_caching=False)
    again = roomy.generate(prompts, SamplingParams(n=3, temperature=0.7, seed=1, max_tokens=30,
                                                   ignore_eos=True))
    assert [[c.token_ids for c in o.outputs] for o in outs] == \
        [[c.token_ids for c in o.outputs] for o in again]
    assert llm.engine.kv.num_free_blocks == llm.engine.num_blocks
    llm.engine.kv.pool.check_invariants()


def test_abort_a_group_frees_every_sequence(make_llm):
    llm = make_llm()
    engine = llm.engine
    engine.add_request("g", prompt_of(llm, 50), SamplingParams(n=4, max_tokens=30, seed=2))
    for _ in range(3):
        engine.step()
    assert engine.kv.num_tables() == 4
    engine.abort_request("g")
    assert not engine.has_unfinished_requests()
    assert engine.kv.num_free_blocks == engine.num_blocks


@pytest.mark.parametrize("fields, param", [({"n": 0}, "n"), ({"n": 2, "best_of": 1}, "best_of"),
                                           ({"n": True}, "n")])
def test_bad_n_and_best_of(fields, param):
    with pytest.raises(SamplingParamsError) as info:
        SamplingParams(**fields)
    assert info.value.param == param
