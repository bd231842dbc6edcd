"""The disaggregated prefill/decode lesson's backend: one request prefilled on a
producer lab engine and decoded on a consumer, with both connectors. The decode engine
computes none of the prompt, the tokens equal a single engine's, the K/V moved is the
prompt's (bytes = tokens × bytes per token), and both engines end with every block free."""

from __future__ import annotations

import pytest

from kvscope.scope.disagg_lab import DisaggLabRequest, disaggregation_lesson

PROMPT = "The history of the printing press begins in the fifteenth century, when"


def kinds(side: dict, kind: str) -> list[dict]:
    return [e for e in side["events"] if e["kind"] == kind]


@pytest.mark.parametrize(("connector", "producer_moves"), [
    ("ZmqConnector", ["send", "release"]), ("SharedStorageConnector", ["save"])])
def test_one_request_across_two_engines(loaded_fp32, connector, producer_moves):
    run = disaggregation_lesson(loaded_fp32, DisaggLabRequest(
        prompt=PROMPT, max_tokens=8, connector=connector))
    prompt_tokens = len(run["prompt_token_ids"])
    assert run["single"]["identical"] and len(run["output"]["token_ids"]) == 8
    assert run["kv_transfer_params"]["num_tokens"] == prompt_tokens
    assert run["kv_transfer_params"]["first_token_id"] == run["output"]["token_ids"][0]
    prefill, decode = run["prefill"], run["decode"]
    assert decode["stats"]["num_computed_prompt_tokens"] == 0
    assert decode["stats"]["num_computed_tokens"] == 8 - 1
    assert prefill["stats"]["num_computed_prompt_tokens"] == prompt_tokens
    bytes_per_token = loaded_fp32.arch.kv_bytes_per_token(4)
    [load] = kinds(decode, "kv_transferred")
    assert (load["direction"], load["ok"], load["num_tokens"], load["num_bytes"]) == (
        "load", True, prompt_tokens, prompt_tokens * bytes_per_token)
    moves = kinds(prefill, "kv_transferred")
    assert [m["direction"] for m in moves] == producer_moves
    assert moves[0]["num_bytes"] == prompt_tokens * bytes_per_token
    # the producer's blocks were freed only after its K/V was taken (or written out)
    freed = kinds(prefill, "blocks_freed")
    assert len(freed) == 1
    assert prefill["stats"]["num_used_blocks"] == decode["stats"]["num_used_blocks"] == 0
    # the consumer's blocks: the prompt's and the generated tokens', freed at the end
    assert sum(len(e["block_ids"]) for e in kinds(decode, "blocks_allocated")) == \
        sum(len(e["block_ids"]) for e in kinds(decode, "blocks_freed"))


def test_a_prompt_too_long_for_the_lesson_is_refused(loaded_fp32):
    with pytest.raises(ValueError, match="this lesson takes at most"):
        disaggregation_lesson(loaded_fp32, DisaggLabRequest(prompt="word " * 300))
