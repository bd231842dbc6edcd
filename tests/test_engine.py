"""The engine on the real model (fp32 SmolLM2-135M): batch invariance, preemption,
block accounting, seeded sampling, stop conditions, logprobs and metrics."""

from __future__ import annotations

import math

import pytest

from kvscope import LLM, SamplingParams
from kvscope.events import ListSink
from kvscope.outputs import RequestOutput

PROMPTS = [
    "The capital of France is",
    "Water boils at a temperature of",
    "Once upon a time, in a small village by the sea, there lived an old fisherman who",
    'def fibonacci(n):\n    """Return the n-th Fibonacci number."""\n',
    "The three primary colors are",
    "Photosynthesis is the process by which green plants use sunlight to make food from "
    "carbon dioxide and water. During this process, the plant releases oxygen into the air. "
    "The green pigment that captures the light is called",
    "List of the planets in order from the Sun: Mercury, Venus,",
    "A recipe for pancakes: mix two cups of flour, two eggs, a cup and a half of milk, a "
    "spoon of sugar and a pinch of salt. Heat a pan with a little butter, pour in a ladle of "
    "batter, and cook until bubbles form on the surface. Then flip the pancake and cook the "
    "other side for another minute. Serve warm with maple syrup, fresh berries or a spoon of "
    "yoghurt. Leftover batter keeps in the fridge for a day. To make the pancakes fluffier, "
    "you can",
    "Q: What is the largest ocean on Earth?\nA:",
    "The history of the bicycle begins in the early nineteenth century, when inventors in "
    "Europe built wooden machines that riders pushed along with their feet. Later designs "
    "added pedals on the front wheel, which made that wheel grow very large, and the "
    "high-wheeled bicycle became popular in the 1870s despite being dangerous to ride. The "
    "safety bicycle, with two wheels of equal size and a chain driving the rear wheel, "
    "appeared in the 1880s and quickly replaced it. Pneumatic tyres followed soon after, "
    "and the bicycle became a cheap and practical way for ordinary people to travel. Today "
    "the bicycle is",
    "In computer science, a hash table is a data structure that",
    "Dear hiring manager, I am writing to apply for the position of",
    "The mitochondria is often called the powerhouse of the cell because",
    "Rain forests cover only a small part of the planet's land surface, yet they are home to "
    "more than half of all known species of plants and animals. The trees grow so close "
    "together that their crowns form a continuous roof, called the canopy, which blocks "
    "most of the sunlight from reaching the ground. Many animals spend their whole lives in "
    "the canopy and never touch the forest floor. Monkeys, sloths, frogs and countless "
    "insects live there, feeding on leaves, fruit and flowers. Below the canopy, the air is "
    "warm, still and humid, and the ground is covered with a thin layer of fallen leaves "
    "that rot quickly. Scientists believe that many rain forest species",
    "Translate to French: The cat is sleeping on the sofa.\nFrench:",
    "Step 1: Preheat the oven to 180 degrees. Step 2:",
]
CHAT = [{"role": "user", "content": "What is 2+2? Answer with one number."}]
NEW_TOKENS = 16
GREEDY = SamplingParams(temperature=0.0, max_tokens=NEW_TOKENS, ignore_eos=True)
SEEDED = {
    "plain": SamplingParams(temperature=0.9, seed=11, max_tokens=12, ignore_eos=True),
    "top_k": SamplingParams(temperature=1.0, top_k=20, seed=12, max_tokens=12, ignore_eos=True),
    "top_p": SamplingParams(temperature=1.2, top_p=0.8, seed=13, max_tokens=12, ignore_eos=True),
    "min_p": SamplingParams(temperature=1.0, top_k=50, min_p=0.05, seed=14, max_tokens=12,
                            ignore_eos=True),
}
SEEDED_PROMPT = {"plain": 0, "top_k": 2, "top_p": 6, "min_p": 11}


def token_ids(outputs: list[RequestOutput]) -> list[list[int]]:
    return [o.outputs[0].token_ids for o in outputs]


def assert_no_blocks_held(llm: LLM) -> None:
    engine = llm.engine
    stats = engine.get_stats()
    pool = engine.kv.pool
    assert stats["num_used_blocks"] == 0
    assert stats["num_free_blocks"] == stats["num_blocks"] == pool.num_blocks
    unused = pool.free.block_ids() + pool.evictable.block_ids()  # evictable: cached prefixes
    assert sorted(unused) == list(range(pool.num_blocks))
    assert all(block.ref_cnt == 0 for block in pool.blocks)
    pool.check_invariants()
    assert all(block.ref_cnt == 0 for block in pool.blocks)
    assert engine.kv.num_tables() == 0
    assert (stats["num_running"], stats["num_waiting"]) == (0, 0)
    assert not engine.has_unfinished_requests()


@pytest.fixture(scope="module")
def llm(make_llm) -> LLM:
    return make_llm()


@pytest.fixture(scope="module")
def alone(llm: LLM) -> list[list[int]]:
    """Each prompt's greedy tokens, run by itself."""
    result = []
    for prompt in PROMPTS:
        result += token_ids(llm.generate(prompt, GREEDY))
    assert_no_blocks_held(llm)
    return result


@pytest.fixture(scope="module")
def seeded_alone(llm: LLM) -> dict[str, list[int]]:
    return {name: llm.generate(PROMPTS[SEEDED_PROMPT[name]], params)[0].outputs[0].token_ids
            for name, params in SEEDED.items()}


def test_prompts_have_mixed_lengths(llm: LLM):
    lengths = [len(llm.tokenizer.encode(p)) for p in PROMPTS]
    assert len(PROMPTS) == 16
    assert min(lengths) <= 8
    assert sum(n > 100 for n in lengths) >= 3


# -- batch invariance ---------------------------------------------------------------


def test_batch_of_16_matches_alone(llm: LLM, alone: list[list[int]]):
    prompts: list = list(PROMPTS)
    prompts[3] = llm.tokenizer.encode(PROMPTS[3])  # one prompt as token ids
    outputs = llm.generate(prompts, GREEDY)
    assert token_ids(outputs) == alone
    for output, prompt in zip(outputs, PROMPTS, strict=True):
        assert output.prompt_token_ids == llm.tokenizer.encode(prompt)
        completion = output.outputs[0]
        assert completion.finish_reason == "length"
        assert len(completion.token_ids) == NEW_TOKENS
        # the incremental detokenizer agrees with decoding the whole output at once
        assert completion.text == llm.tokenizer.decode(completion.token_ids,
                                                       skip_special_tokens=True)
        metrics = output.metrics
        assert metrics.arrival_time <= metrics.first_scheduled_time
        assert metrics.first_scheduled_time <= metrics.first_token_time
        assert metrics.first_token_time <= metrics.finished_time
    assert_no_blocks_held(llm)


def test_chunked_prefill_matches_alone(make_llm, alone: list[list[int]]):
    sink = ListSink()
    chunked = make_llm(max_num_batched_tokens=32, sink=sink)
    outputs = chunked.generate(PROMPTS, GREEDY)
    assert token_ids(outputs) == alone
    steps = sink.of_kind("step_end")
    assert all(sum(s.num_tokens for s in step.batch) <= 32 for step in steps)
    # a long prompt was prefilled in several chunks while others were decoding
    assert any(
        any(s.start > 0 and s.num_tokens > 1 for s in step.batch)
        and any(s.phase == "decode" for s in step.batch)
        for step in steps)
    assert_no_blocks_held(chunked)


def test_preemption_keeps_outputs(make_llm, loaded_fp32, alone, seeded_alone):
    block_size = 16
    bytes_per_block = loaded_fp32.arch.kv_bytes_per_token(4) * block_size
    small = make_llm(block_size=block_size, max_model_len=128,
                     kv_cache_memory=12 * bytes_per_block)
    assert small.engine.num_blocks == 12
    # 8 short prompts and 2 seeded requests: about twice what 12 blocks hold at the end
    picks = [i for i, p in enumerate(PROMPTS) if len(small.tokenizer.encode(p)) <= 45][:8]
    assert len(picks) == 8
    prompts = [PROMPTS[i] for i in picks] + [PROMPTS[SEEDED_PROMPT[n]] for n in SEEDED]
    params = [GREEDY] * len(picks) + list(SEEDED.values())
    outputs = small.generate(prompts, params)
    num_preemptions = small.engine.get_stats()["num_preemptions"]
    assert num_preemptions > 0
    assert sum(o.metrics.num_preemptions for o in outputs) == num_preemptions
    assert token_ids(outputs[:len(picks)]) == [alone[i] for i in picks]
    assert token_ids(outputs[len(picks):]) == list(seeded_alone.values())
    assert_no_blocks_held(small)
    # recompute preemption shows in the work done: more tokens than prompt + output - 1
    # each (the last sampled token of a request is never fed back)
    once = sum(len(o.prompt_token_ids) + len(o.outputs[0].token_ids) - 1 for o in outputs)
    assert small.engine.get_stats()["num_computed_tokens"] > once


def test_computed_tokens_without_preemption(make_llm):
    llm = make_llm()
    out = llm.generate(PROMPTS[0], GREEDY)[0]
    expected = len(out.prompt_token_ids) + len(out.outputs[0].token_ids) - 1
    assert llm.engine.get_stats()["num_computed_tokens"] == expected


# -- block accounting ---------------------------------------------------------------


def test_abort_mid_run_frees_blocks(make_llm, alone: list[list[int]]):
    llm = make_llm(max_num_seqs=2)
    engine = llm.engine
    for i in range(4):
        engine.add_request(f"r{i}", PROMPTS[i], GREEDY)
    finished: dict[str, RequestOutput] = {}
    for _ in range(3):
        finished |= {o.request_id: o for o in engine.step() if o.finished}
    stats = engine.get_stats()
    assert (stats["num_running"], stats["num_waiting"]) == (2, 2)
    used = engine.kv.pool.num_used_blocks
    r1_blocks = engine.kv.block_ids("r1")
    assert r1_blocks
    engine.abort_request(["r1", "r3"])  # one running, one waiting
    assert engine.kv.pool.num_used_blocks == used - len(r1_blocks)
    assert not engine.kv.has_table("r1")
    engine.abort_request("r1")  # twice: nothing happens
    engine.abort_request("no-such-request")
    stats = engine.get_stats()
    assert (stats["num_running"], stats["num_waiting"]) == (1, 1)
    while engine.has_unfinished_requests():
        finished |= {o.request_id: o for o in engine.step() if o.finished}
    assert sorted(finished) == ["r0", "r2"]
    assert finished["r0"].outputs[0].token_ids == alone[0]
    assert finished["r2"].outputs[0].token_ids == alone[2]
    assert_no_blocks_held(llm)


# -- seeded sampling ----------------------------------------------------------------


def test_seeded_sampling_is_batch_invariant(llm: LLM, alone, seeded_alone):
    names = list(SEEDED)
    prompts = [PROMPTS[SEEDED_PROMPT[n]] for n in names]
    params = [SEEDED[n] for n in names]
    # mixed in: an unseeded random request, a greedy one, a seeded one on another prompt
    prompts += [PROMPTS[4], PROMPTS[1], PROMPTS[5]]
    params += [SamplingParams(temperature=1.0, max_tokens=12, ignore_eos=True), GREEDY,
               SamplingParams(temperature=0.7, top_p=0.9, seed=99, max_tokens=12)]
    outputs = llm.generate(prompts, params)
    got = token_ids(outputs)
    assert got[:len(names)] == [seeded_alone[n] for n in names]
    assert got[len(names) + 1] == alone[1]
    # the same seed again, alone, still gives the same tokens
    again = llm.generate(PROMPTS[SEEDED_PROMPT["top_p"]], SEEDED["top_p"])
    assert token_ids(again) == [seeded_alone["top_p"]]
    assert_no_blocks_held(llm)


def test_different_seeds_differ(llm: LLM, seeded_alone):
    prompt = PROMPTS[SEEDED_PROMPT["plain"]]
    others = [SamplingParams(temperature=0.9, seed=seed, max_tokens=12, ignore_eos=True)
              for seed in (1, 2)]
    got = token_ids(llm.generate([prompt, prompt], others))
    assert len({tuple(seeded_alone["plain"]), *map(tuple, got)}) == 3


# -- stop conditions ----------------------------------------------------------------


def text_offsets(llm: LLM, ids: list[int]) -> list[int]:
    return [len(llm.tokenizer.decode(ids[:i], skip_special_tokens=True))
            for i in range(len(ids) + 1)]


def boundary_stop(llm: LLM, ids: list[int]) -> tuple[str, int, int] | None:
    """A 4-character stop string made of the last 2 characters of one token and the
    first 2 of the next; returns (stop, index of the completing token, offset)."""
    text = llm.tokenizer.decode(ids, skip_special_tokens=True)
    offsets = text_offsets(llm, ids)
    for k in range(2, len(ids) - 1):
        at = offsets[k]
        if at - offsets[k - 1] >= 2 and offsets[k + 1] - at >= 2:
            stop = text[at - 2:at + 2]
            if text.find(stop) == at - 2:
                return stop, k, at - 2
    return None


def test_stop_string_across_token_boundary(llm: LLM, alone):
    found = [(i, boundary_stop(llm, ids)) for i, ids in enumerate(alone)]
    index, (stop, k, at) = next((i, f) for i, f in found if f is not None)
    ids = alone[index]
    full = llm.tokenizer.decode(ids, skip_special_tokens=True)
    params = [SamplingParams(temperature=0.0, max_tokens=NEW_TOKENS, stop=["@@never@@", stop]),
              SamplingParams(temperature=0.0, max_tokens=NEW_TOKENS, stop=stop,
                             include_stop_str_in_output=True)]
    excluded, included = (o.outputs[0] for o in llm.generate([PROMPTS[index]] * 2, params))
    for completion in (excluded, included):
        assert completion.token_ids == ids[:k + 1]
        assert completion.finish_reason == "stop"
        assert completion.stop_reason == stop
    assert excluded.text == full[:at]
    assert included.text == full[:at + len(stop)]
    assert_no_blocks_held(llm)


def test_stop_token_ids(llm: LLM, alone):
    ids = alone[0]
    k = next(k for k in range(3, len(ids)) if ids[k] not in ids[:k])
    params = SamplingParams(temperature=0.0, max_tokens=NEW_TOKENS, stop_token_ids=[ids[k]])
    completion = llm.generate(PROMPTS[0], params)[0].outputs[0]
    assert completion.token_ids == ids[:k + 1]
    assert completion.finish_reason == "stop"
    assert completion.stop_reason == ids[k]


def test_stop_token_text_is_not_in_output(llm: LLM, alone):
    """As in vLLM: the text of a stop token id is left out unless
    include_stop_str_in_output is set."""
    ids = alone[0]
    k = next(k for k in range(3, len(ids)) if ids[k] not in ids[:k])
    params = [SamplingParams(temperature=0.0, max_tokens=NEW_TOKENS, stop_token_ids=[ids[k]]),
              SamplingParams(temperature=0.0, max_tokens=NEW_TOKENS, stop_token_ids=[ids[k]],
                             include_stop_str_in_output=True)]
    excluded, included = (o.outputs[0] for o in llm.generate([PROMPTS[0]] * 2, params))
    decode = llm.tokenizer.decode
    assert included.text == decode(ids[:k + 1], skip_special_tokens=True)
    assert excluded.text == decode(ids[:k], skip_special_tokens=True)


def test_max_tokens(llm: LLM, alone):
    completion = llm.generate(PROMPTS[2], SamplingParams(temperature=0.0, max_tokens=5,
                                                         ignore_eos=True))[0].outputs[0]
    assert completion.token_ids == alone[2][:5]
    assert completion.finish_reason == "length"
    assert completion.stop_reason is None


def test_output_is_capped_by_max_model_len(make_llm, alone):
    short = make_llm(max_model_len=24)
    prompt_len = len(short.tokenizer.encode(PROMPTS[2]))
    params = SamplingParams(temperature=0.0, max_tokens=None, ignore_eos=True)
    completion = short.generate(PROMPTS[2], params)[0].outputs[0]
    assert len(completion.token_ids) == 24 - prompt_len
    assert completion.token_ids == alone[2][:24 - prompt_len]
    assert completion.finish_reason == "length"
    assert_no_blocks_held(short)


@pytest.fixture(scope="module")
def chat_greedy(llm: LLM) -> list[int]:
    """A prompt the model answers briefly and ends with EOS."""
    params = SamplingParams(temperature=0.0, max_tokens=12)
    completion = llm.chat(CHAT, params)[0].outputs[0]
    assert completion.finish_reason == "stop"
    assert completion.token_ids[-1] in llm.engine.eos_token_ids
    assert len(completion.token_ids) <= 8
    return completion.token_ids


def test_eos_stops_by_default_and_ignore_eos_continues(llm: LLM, chat_greedy):
    eos_at = len(chat_greedy) - 1
    params = SamplingParams(temperature=0.0, max_tokens=eos_at + 4, ignore_eos=True)
    completion = llm.chat(CHAT, params)[0].outputs[0]
    assert completion.token_ids[:eos_at + 1] == chat_greedy
    assert len(completion.token_ids) == eos_at + 4
    assert completion.finish_reason == "length"


def test_min_tokens_suppresses_eos(make_llm, chat_greedy):
    llm = make_llm()  # its own engine: a failure here must not leave others a stuck request
    eos_at = len(chat_greedy) - 1
    eos = llm.engine.eos_token_ids
    min_tokens = eos_at + 3
    params = SamplingParams(temperature=0.0, max_tokens=min_tokens + 2, min_tokens=min_tokens)
    completion = llm.chat(CHAT, params)[0].outputs[0]
    ids = completion.token_ids
    assert ids[:eos_at] == chat_greedy[:eos_at]
    assert len(ids) >= min_tokens
    assert not set(ids[:min_tokens]) & set(eos)
    assert_no_blocks_held(llm)


def test_stop_string_before_min_tokens_is_ignored(make_llm, alone):
    """As in vLLM, stop strings are only looked for once min_tokens are out: an earlier
    occurrence neither stops the request nor cuts the text."""
    llm = make_llm()
    ids = alone[0]
    full = llm.tokenizer.decode(ids, skip_special_tokens=True)
    offsets = text_offsets(llm, ids)
    stop = full[offsets[0]:offsets[1]]
    assert len(stop.strip()) >= 2 and full.count(stop) == 1
    params = SamplingParams(temperature=0.0, max_tokens=NEW_TOKENS, min_tokens=8, stop=stop,
                            ignore_eos=True)
    completion = llm.generate(PROMPTS[0], params)[0].outputs[0]
    assert completion.token_ids == ids
    assert completion.text == full
    assert completion.finish_reason == "length"


# -- logprobs -----------------------------------------------------------------------


def test_logprobs(llm: LLM, alone):
    params = [SamplingParams(temperature=0.0, max_tokens=8, logprobs=5, ignore_eos=True),
              SamplingParams(temperature=0.0, max_tokens=8, logprobs=0, ignore_eos=True),
              SamplingParams(temperature=1.0, seed=3, max_tokens=8, logprobs=3, ignore_eos=True)]
    top5, only, sampled = (o.outputs[0] for o in llm.generate([PROMPTS[1]] * 3, params))
    assert top5.token_ids == only.token_ids == alone[1][:8]
    for completion, wanted in ((top5, 5), (only, 0), (sampled, 3)):
        assert completion.logprobs is not None
        assert len(completion.logprobs) == len(completion.token_ids) == 8
        total = 0.0
        for token, entry in zip(completion.token_ids, completion.logprobs, strict=True):
            assert token in entry
            chosen = entry[token]
            total += chosen.logprob
            assert all(lp.logprob <= 0 for lp in entry.values())
            top = sorted((lp for t, lp in entry.items() if lp.rank <= wanted),
                         key=lambda lp: lp.rank)
            assert [lp.rank for lp in top] == list(range(1, wanted + 1))
            values = [lp.logprob for lp in top]
            assert values == sorted(values, reverse=True)
            if chosen.rank > wanted:
                assert len(entry) == wanted + 1
                assert all(chosen.logprob <= v for v in values)
            else:
                assert len(entry) == max(wanted, 1)
            if completion is not sampled:
                assert chosen.rank == 1
        assert math.isclose(completion.cumulative_logprob, total, rel_tol=1e-5, abs_tol=1e-5)
    for a, b in zip(top5.logprobs, only.logprobs, strict=True):
        (token, lp), = b.items()
        assert math.isclose(a[token].logprob, lp.logprob, rel_tol=1e-5, abs_tol=1e-5)
    plain = llm.generate(PROMPTS[1], SamplingParams(temperature=0.0, max_tokens=2))
    plain = plain[0].outputs[0]
    assert plain.logprobs is None and plain.cumulative_logprob is None
