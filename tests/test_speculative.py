"""Speculative decoding in the engine (fp32 SmolLM2-135M): with every proposer, greedy
output equals plain greedy output token for token, with prefix caching, chunked
prefill and forced preemption; rejected drafts give their blocks back; the metrics
and the batch-size switch; bad configuration fails clearly."""

from __future__ import annotations

import pytest

from kvscope import SamplingParams
from kvscope.config import ConfigError
from kvscope.kv.kv_manager import blocks_needed
from kvscope.speculative.ngram import propose_ngram

PROMPTS = [
    "Rewrite this sentence in the passive voice: The committee approved the new budget "
    "after the director presented the quarterly report to the board.",
    "List the numbers from 1 to 40 separated by commas:",
    "Copy this list exactly: apples, pears, plums, cherries, grapes, lemons, limes.",
    "def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n",
    "Summarise in one sentence: The river flooded the valley every spring, so the "
    "villagers built their houses on stilts and planted rice in the wet fields.",
]
GREEDY = SamplingParams(temperature=0.0, max_tokens=48)
NGRAM = {"method": "ngram", "num_speculative_tokens": 4, "prompt_lookup_max": 3}
SELF_DRAFT = {"method": "self_draft", "num_speculative_tokens": 3, "draft_layers": 24}


def token_ids(outputs) -> list[list[int]]:
    return [o.outputs[0].token_ids for o in outputs]


@pytest.fixture(scope="module")
def plain(make_llm) -> list[list[int]]:
    return token_ids(make_llm().generate(PROMPTS, GREEDY))


def draft_model_config(loaded_fp32) -> dict:
    # the bundled model drafting for itself: every draft is accepted in fp32
    return {"method": "draft_model", "num_speculative_tokens": 3, "model": str(loaded_fp32.path)}


def assert_all_blocks_back(llm) -> None:
    pool = llm.engine.kv.pool
    pool.check_invariants()
    assert llm.engine.kv.num_tables() == 0
    assert pool.num_used_blocks == 0


@pytest.mark.parametrize("method", ["ngram", "self_draft", "draft_model"])
def test_greedy_output_is_unchanged_by_speculation(make_llm, loaded_fp32, plain, method):
    config = {"ngram": NGRAM, "self_draft": SELF_DRAFT,
              "draft_model": draft_model_config(loaded_fp32)}[method]
    llm = make_llm(speculative_config=config)
    outputs = llm.generate(PROMPTS, GREEDY)
    assert token_ids(outputs) == plain
    stats = llm.engine.get_stats()
    assert stats["spec_num_draft_tokens"] > 0
    assert stats["spec_num_accepted_tokens"] > 0
    assert sum(o.metrics.num_draft_tokens for o in outputs) == stats["spec_num_draft_tokens"]
    assert sum(o.metrics.num_accepted_tokens for o in outputs) == \
        stats["spec_num_accepted_tokens"]
    if method == "draft_model":
        assert stats["spec_acceptance_rate"] == 1.0
    assert_all_blocks_back(llm)


@pytest.mark.parametrize("config", [NGRAM, SELF_DRAFT], ids=["ngram", "self_draft"])
def test_chunked_prefill_and_prefix_cache_with_speculation(make_llm, plain, config):
    llm = make_llm(speculative_config=config, max_num_batched_tokens=24,
                   long_prefill_token_threshold=8, enable_prefix_caching=True)
    first = llm.generate(PROMPTS, GREEDY)
    second = llm.generate(PROMPTS, GREEDY)  # now from the prefix cache
    assert token_ids(first) == plain
    assert token_ids(second) == plain
    assert llm.engine.get_stats()["prefix_cache_hits"] > 0
    llm.reset_prefix_cache()
    assert_all_blocks_back(llm)


@pytest.mark.parametrize("config, mode", [(NGRAM, "recompute"), (NGRAM, "swap"),
                                          (SELF_DRAFT, "recompute")],
                         ids=["ngram-recompute", "ngram-swap", "self_draft-recompute"])
def test_forced_preemption_with_speculation(make_llm, loaded_fp32, plain, config, mode):
    bytes_per_block = loaded_fp32.arch.kv_bytes_per_token(4) * 16
    llm = make_llm(speculative_config=config, block_size=16, max_model_len=128,
                   kv_cache_memory=14 * bytes_per_block, preemption_mode=mode)
    outputs = llm.generate(PROMPTS, GREEDY)
    assert llm.engine.get_stats()["num_preemptions"] > 0
    assert token_ids(outputs) == plain
    llm.reset_prefix_cache()
    assert_all_blocks_back(llm)


def test_rejected_drafts_give_back_their_blocks(make_llm):
    """A draft that reaches into a new block gets that block for the step; if the
    draft is rejected, the block goes back in the same step."""
    llm = make_llm(speculative_config={"method": "self_draft", "num_speculative_tokens": 6,
                                       "draft_layers": 2}, block_size=4)
    engine = llm.engine
    engine.add_request("r", PROMPTS[4], SamplingParams(temperature=0.0, max_tokens=40))
    grew_and_shrank = 0
    while engine.has_unfinished_requests():
        engine.step()
        for request in engine.scheduler.running:
            table = engine.kv.block_ids(request.request_id)
            assert len(table) == blocks_needed(request.num_computed_tokens, 4)
        stats = engine.get_stats()
        grew_and_shrank = stats["spec_num_draft_tokens"] - stats["spec_num_accepted_tokens"]
    assert grew_and_shrank > 20  # two layers draft badly: many rejections
    assert_all_blocks_back(llm)


def test_sampled_requests_speculate_reproducibly(make_llm):
    params = SamplingParams(temperature=0.8, top_p=0.95, seed=7, max_tokens=32)
    runs = []
    for _ in range(2):
        llm = make_llm(speculative_config=NGRAM)
        runs.append(token_ids(llm.generate(PROMPTS[1:3], params)))
        assert llm.engine.get_stats()["spec_num_draft_tokens"] > 0
        assert_all_blocks_back(llm)
    assert runs[0] == runs[1]
    assert all(len(ids) == 32 for ids in runs[0])


def test_acceptance_by_position_and_tokens_per_round(make_llm):
    llm = make_llm(speculative_config=NGRAM)
    llm.generate(PROMPTS, GREEDY)
    stats = llm.engine.speculator.stats
    assert stats.drafted_at[0] == stats.num_rounds
    assert sum(stats.drafted_at) == stats.num_draft_tokens
    assert sum(stats.accepted_at) == stats.num_accepted_tokens
    assert all(a <= d for a, d in zip(stats.accepted_at, stats.drafted_at, strict=True))
    assert stats.tokens_per_round == pytest.approx(1 + stats.mean_accepted_length)


def test_speculation_turns_off_for_large_batches(make_llm, plain):
    llm = make_llm(speculative_config={**NGRAM, "disable_by_batch_size": 4})
    short = SamplingParams(temperature=0.0, max_tokens=12)
    outputs = llm.generate(PROMPTS, [GREEDY, GREEDY, GREEDY, short, short])
    assert token_ids(outputs) == plain[:3] + [ids[:12] for ids in plain[3:]]
    spec = llm.engine.speculator.stats
    assert spec.num_skipped_large_batch > 0  # 4 running (one prompt stops at once)
    assert spec.num_draft_tokens > 0  # once the two short ones finish, 2 < 4


def test_drafts_stop_at_max_tokens(make_llm, plain):
    llm = make_llm(speculative_config=NGRAM)
    outputs = llm.generate(PROMPTS, SamplingParams(temperature=0.0, max_tokens=5))
    assert token_ids(outputs) == [ids[:5] for ids in plain]


@pytest.mark.parametrize("options, message", [
    ({"method": "medusa", "num_speculative_tokens": 2}, "method must be one of"),
    ({"method": "ngram", "num_speculative_tokens": 0}, "num_speculative_tokens"),
    ({"method": "ngram"}, "needs 'num_speculative_tokens'"),
    ({"method": "draft_model", "num_speculative_tokens": 2}, "needs 'model'"),
    ({"method": "ngram", "num_speculative_tokens": 2, "lookup": 3}, "unknown"),
    ({"method": "ngram", "num_speculative_tokens": 2, "prompt_lookup_min": 5,
      "prompt_lookup_max": 2}, "prompt_lookup_min must be <="),
    ({"method": "self_draft", "num_speculative_tokens": 2, "draft_layers": 30},
     "draft_layers must be below"),
])
def test_bad_speculative_config_is_refused(make_llm, options, message):
    with pytest.raises(ConfigError, match=message):
        make_llm(speculative_config=options)


def test_ngram_lookup_takes_the_latest_longest_match():
    tokens = [1, 2, 3, 9, 1, 2, 3, 7, 8, 5, 2, 3]
    assert propose_ngram(tokens, 3, 1, 3) == [7, 8, 5]  # "2 3" last seen before "7 8 5"
    assert propose_ngram([1, 2, 3, 4], 3, 1, 3) == []
    assert propose_ngram([5, 6, 5], 4, 1, 2) == [6, 5]
    assert propose_ngram([4, 4, 4, 4], 2, 2, 2) == [4]


@pytest.mark.parametrize("config", [NGRAM, SELF_DRAFT], ids=["ngram", "self_draft"])
def test_greedy_output_is_unchanged_in_bf16(loaded_bf16, config):
    """Verification rows are computed as decode rows (same attention kernel, linears
    whose rows do not depend on the row count), so bf16 agrees bit for bit too."""
    from kvscope import LLM

    plain = LLM(dtype="bfloat16", loaded=loaded_bf16, max_model_len=1024,
                kv_cache_memory=64 << 20)
    spec = LLM(dtype="bfloat16", loaded=loaded_bf16, max_model_len=1024,
               kv_cache_memory=64 << 20, speculative_config=config)
    params = SamplingParams(temperature=0.0, max_tokens=64)
    for batch in ([PROMPTS[0]], PROMPTS):  # alone, then all at once
        assert token_ids(spec.generate(batch, params)) == token_ids(plain.generate(batch, params))
    assert spec.engine.get_stats()["spec_num_accepted_tokens"] > 0


QWEN_PAIR = ("qwen2.5-coder-1.5b", "qwen2.5-coder-0.5b")


def test_qwen_draft_model_keeps_greedy_output_in_bf16():
    """The real pair: Qwen2.5-Coder-0.5B drafting for 1.5B (skipped without its packages)."""
    import torch

    from kvscope import LLM
    from kvscope.model.loader import load_model
    from kvscope.model.packaged import missing_packages

    missing = [p for name in QWEN_PAIR for p in missing_packages(name)]
    if missing:
        pytest.skip(f"the Qwen pair needs {len(missing)} packages, e.g. {missing[0]}")
    target = load_model(QWEN_PAIR[0], torch.bfloat16)
    draft = load_model(QWEN_PAIR[1], torch.bfloat16)
    plain = LLM(dtype="bfloat16", loaded=target, max_model_len=1024)
    spec = LLM(dtype="bfloat16", loaded=target, draft_loaded=draft, max_model_len=1024,
               speculative_config={"method": "draft_model", "model": QWEN_PAIR[1],
                                   "num_speculative_tokens": 4})
    prompts = [plain.apply_chat_template([{"role": "user", "content": text}]) for text in (
        "Write a Python function `is_prime(n)`.", "Why is the sea salty?")]
    params = SamplingParams(temperature=0.0, max_tokens=40)
    assert token_ids(spec.generate(prompts, params)) == token_ids(plain.generate(prompts, params))
    stats = spec.engine.get_stats()
    assert stats["spec_acceptance_rate"] > 0.3
    assert spec.engine.kv.pool.num_used_blocks == 0
    draft_kv = spec.engine.speculator.proposer.kv
    assert draft_kv.num_free_blocks == draft_kv.pool.num_blocks
