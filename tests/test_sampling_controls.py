"""Penalties, logit_bias, allowed_token_ids, bad_words and prompt_logprobs.

First each logits processor on hand-made logits, where the expected effect is exact
arithmetic; then the same options end to end on the bundled model (fp32), with
prompt_logprobs checked against transformers' log_softmax of its own forward pass.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest
import torch

from kvscope import LLM, SamplingParams
from kvscope.model.loader import LoadedModel
from kvscope.request import Request, RequestError
from kvscope.sample.logits_processors import apply_logits_processors, banned_tokens
from kvscope.sample.sampler import Sampler
from kvscope.sampling_params import SamplingParamsError
from tests.hf_twin import hf_twin

VOCAB = 12
PROMPT = "The capital of France is"
LONG_PROMPT = ("The lighthouse stood on a spit of black rock at the mouth of the harbour, "
               "and every evening its keeper climbed the iron stairs to light the lamp.")


def request(params: SamplingParams, prompt: Sequence[int] = (0,), output: Sequence[int] = (),
            request_id: str = "r") -> Request:
    req = Request(request_id, list(prompt), params)
    for token in output:
        req.append_output_token(token)
    return req


def processed(logits: list[float], *requests: Request) -> torch.Tensor:
    """The logits (one copy per request) after every request's processors."""
    batch = torch.tensor([logits] * len(requests))
    apply_logits_processors(batch, requests)
    return batch


def ramp() -> list[float]:
    return [float(i) - 4.0 for i in range(VOCAB)]  # negative, zero and positive logits


# -- each processor on hand-made logits ------------------------------------------------

def test_frequency_penalty_subtracts_per_occurrence():
    out = processed(ramp(), request(SamplingParams(frequency_penalty=0.5), output=[3, 3, 5]))
    expected = torch.tensor(ramp())
    expected[3] -= 1.0
    expected[5] -= 0.5
    assert torch.equal(out[0], expected)


def test_presence_penalty_subtracts_once_and_ignores_the_prompt():
    req = request(SamplingParams(presence_penalty=0.7), prompt=[8, 9], output=[3, 3, 5])
    out = processed(ramp(), req)
    expected = torch.tensor(ramp())
    expected[[3, 5]] -= 0.7
    assert torch.allclose(out[0], expected, atol=0, rtol=1e-7)


def test_repetition_penalty_scales_seen_tokens_only():
    """Token 9 (prompt) and 10 (output) are positive: halved; token 1 (prompt) and 2
    (output) are negative: doubled; everything unseen is untouched."""
    req = request(SamplingParams(repetition_penalty=2.0), prompt=[1, 9], output=[2, 10])
    out = processed(ramp(), req)[0]
    expected = torch.tensor(ramp())
    expected[[9, 10]] /= 2
    expected[[1, 2]] *= 2
    assert torch.equal(out, expected)


def test_logit_bias_is_added_and_makes_greedy_pick_it():
    req = request(SamplingParams(temperature=0, logit_bias={7: 100.0, 11: -1.5}))
    out = processed(ramp(), req)[0]
    assert out[7] == ramp()[7] + 100 and out[11] == ramp()[11] - 1.5
    logits = torch.tensor([ramp()])
    assert Sampler(0, []).sample(logits, [req]).token_ids == [7]


def test_allowed_token_ids_under_seeded_sampling():
    params = [SamplingParams(temperature=1.0, seed=s, allowed_token_ids=[4, 9])
              for s in range(200)]
    requests = [request(p, request_id=str(i)) for i, p in enumerate(params)]
    logits = torch.zeros(len(requests), VOCAB)  # uniform: any token is as likely
    tokens = Sampler(0, []).sample(logits, requests).token_ids
    assert set(tokens) == {4, 9}


def test_bad_words_ban_exactly_the_completing_token():
    sequences = [[5], [1, 2, 3], [7, 8]]
    assert banned_tokens(sequences, []) == [5]
    assert banned_tokens(sequences, [0, 1, 2]) == [5, 3]
    assert banned_tokens(sequences, [1, 2, 7]) == [5, 8]
    assert banned_tokens(sequences, [2, 1]) == [5]
    params = SamplingParams(temperature=0)
    params._bad_words_token_ids = sequences
    out = processed(ramp(), request(params, output=[9, 1, 2]))[0]
    banned = torch.isinf(out).nonzero().flatten().tolist()
    assert banned == [3, 5]


def test_bad_words_are_tokenized_with_and_without_a_leading_space(loaded_fp32: LoadedModel):
    tokenizer = loaded_fp32.tokenizer
    params = SamplingParams(bad_words=["Paris", "the capital"])
    params.resolve_bad_words(tokenizer)
    expected = [tokenizer.encode(text, add_special_tokens=False)
                for text in ("Paris", " Paris", "the capital", " the capital")]
    assert params.bad_words_token_ids == expected
    assert len(expected[0]) == 1 and expected[0] != expected[1]


def test_bias_comes_before_the_penalties():
    """Logit 2.0 of a seen token, bias +2, repetition 2: (2 + 2) / 2 = 2, whereas the
    penalty first would give 2 / 2 + 2 = 3; then presence 0.5 takes 0.5 off."""
    params = SamplingParams(logit_bias={6: 2.0}, repetition_penalty=2.0, presence_penalty=0.5)
    out = processed(ramp(), request(params, output=[6]))[0]
    assert out[6].item() == 1.5


def test_rows_without_options_are_untouched():
    plain = request(SamplingParams(), output=[3, 3], request_id="plain")
    penalised = request(SamplingParams(frequency_penalty=1.0, allowed_token_ids=[3, 4]),
                        output=[3, 3], request_id="penalised")
    out = processed(ramp(), plain, penalised, plain)
    assert torch.equal(out[0], torch.tensor(ramp())) and torch.equal(out[2], out[0])
    assert out[1, 3] == ramp()[3] - 2 and out[1, 4] == ramp()[4]
    assert torch.isinf(out[1]).sum() == VOCAB - 2


@pytest.mark.parametrize(("field", "value"), [
    ("presence_penalty", 2.5), ("frequency_penalty", -3), ("frequency_penalty", float("nan")),
    ("repetition_penalty", 0), ("repetition_penalty", -1.0),
    ("logit_bias", {5: 101}), ("logit_bias", {-1: 1.0}), ("logit_bias", {"5": 1.0}),
    ("allowed_token_ids", []), ("allowed_token_ids", [1, -2]),
    ("bad_words", [""]), ("bad_words", "word"), ("prompt_logprobs", -1),
])
def test_invalid_values_name_their_field(field: str, value: Any):
    with pytest.raises(SamplingParamsError) as info:
        SamplingParams(**{field: value})
    assert info.value.param == field


# -- end to end on the bundled model ---------------------------------------------------

@pytest.fixture(scope="module")
def llm(make_llm) -> LLM:
    return make_llm()


@pytest.fixture(scope="module")
def runs(llm: LLM) -> dict[str, Any]:
    """Every end-to-end case in one batch (one engine run), keyed by name."""
    paris = llm.tokenizer.encode(" Paris", add_special_tokens=False)[0]
    greedy = {"temperature": 0, "max_tokens": 16, "ignore_eos": True}
    cases = {
        "plain": SamplingParams(**greedy),
        "penalised": SamplingParams(**greedy, presence_penalty=2.0, frequency_penalty=2.0,
                                    logprobs=20),
        "biased": SamplingParams(**greedy, logit_bias={paris: 100.0}),
        "allowed": SamplingParams(temperature=1.0, seed=3, max_tokens=16, ignore_eos=True,
                                  allowed_token_ids=[paris, 13, 30]),
        "no_paris": SamplingParams(**greedy, bad_words=["Paris"]),
    }
    outputs = llm.generate([PROMPT] * len(cases), list(cases.values()))
    return {"paris": paris, **{name: out.outputs[0] for name, out in
                               zip(cases, outputs, strict=True)}}


def test_penalties_stop_repetition(runs):
    assert len(set(runs["plain"].token_ids)) < 16  # without them the model repeats
    assert len(set(runs["penalised"].token_ids)) == 16


def test_penalised_greedy_picks_the_argmax_of_the_penalised_logprobs(runs):
    """logprobs are the raw ones, so every greedy pick must beat each of the top 20
    raw alternatives once both are penalised by the output so far."""
    completion = runs["penalised"]
    for step, token in enumerate(completion.token_ids):
        before = completion.token_ids[:step]
        top = completion.logprobs[step]
        best = penalised(before, token, top[token].logprob)
        assert all(best >= penalised(before, t, lp.logprob) - 1e-5 for t, lp in top.items())


def penalised(before: list[int], token: int, raw: float) -> float:
    """presence 2 and frequency 2, as the "penalised" run asked."""
    count = before.count(token)
    return raw - 2.0 * count - 2.0 * (count > 0)


def test_logit_bias_forces_a_token(runs):
    assert runs["biased"].token_ids == [runs["paris"]] * 16


def test_allowed_token_ids_restrict_sampling(runs):
    tokens = runs["allowed"].token_ids
    assert set(tokens) <= {runs["paris"], 13, 30} and len(set(tokens)) > 1


def test_bad_words_never_appear(runs):
    assert "Paris" in runs["plain"].text
    assert "Paris" not in runs["no_paris"].text


def test_skip_special_tokens(llm: LLM):
    """A special token forced by logit_bias shows in the text only with
    skip_special_tokens=False."""
    special = llm.tokenizer.convert_tokens_to_ids("<|im_start|>")
    params = [SamplingParams(temperature=0, max_tokens=2, logit_bias={special: 100.0},
                             skip_special_tokens=skip) for skip in (True, False)]
    skipped, kept = (o.outputs[0] for o in llm.generate([PROMPT] * 2, params))
    assert skipped.token_ids == kept.token_ids == [special] * 2
    assert skipped.text == "" and kept.text == "<|im_start|>" * 2


def test_vocab_limits_name_their_field(llm: LLM):
    vocab = llm.engine.loaded.arch.vocab_size
    for field, value in (("logit_bias", {vocab: 1.0}), ("allowed_token_ids", [1, vocab]),
                         ("prompt_logprobs", 21)):
        with pytest.raises(RequestError) as info:
            llm.generate(PROMPT, SamplingParams(**{field: value}))
        assert info.value.param == field


# -- prompt_logprobs -------------------------------------------------------------------



@pytest.fixture(scope="module")
def prompt_ids(llm: LLM) -> list[int]:
    ids = llm.tokenizer.encode(LONG_PROMPT)
    assert len(ids) > 24  # more than one KV block and several prefill chunks below
    return ids


@pytest.fixture(scope="module")
def hf_logprobs(loaded_fp32: LoadedModel, prompt_ids: list[int]) -> torch.Tensor:
    with torch.inference_mode():
        logits = hf_twin(loaded_fp32)(torch.tensor([prompt_ids])).logits[0]
    return torch.log_softmax(logits.float(), dim=-1)


def assert_matches(prompt_logprobs: list, prompt_ids: list[int], oracle: torch.Tensor,
                   num_top: int, tol: float = 2e-4) -> None:
    """Row pos - 1 of the oracle predicts prompt token pos. Ranks are compared up to
    ties within the tolerance."""
    assert len(prompt_logprobs) == len(prompt_ids) and prompt_logprobs[0] is None
    for pos in range(1, len(prompt_ids)):
        entry, expected = prompt_logprobs[pos], oracle[pos - 1]
        for token, logprob in entry.items():
            assert logprob.logprob == pytest.approx(expected[token].item(), abs=tol)
        token = prompt_ids[pos]
        value = expected[token]
        rank = entry[token].rank
        assert int((expected > value + tol).sum()) < rank <= int((expected > value - tol).sum()) + 1
        top = sorted((lp.logprob for lp in entry.values() if lp.rank <= num_top), reverse=True)
        assert top == pytest.approx(expected.topk(num_top).values.tolist(), abs=tol)


def test_prompt_logprobs_equal_transformers(llm: LLM, prompt_ids, hf_logprobs):
    output = llm.generate(prompt_ids, SamplingParams(max_tokens=1, prompt_logprobs=3))[0]
    assert_matches(output.prompt_logprobs, prompt_ids, hf_logprobs, 3)


def test_prompt_logprobs_chunked_and_with_a_warm_prefix_cache(make_llm, prompt_ids):
    """Prefilled in chunks of 7 tokens, with the prompt's blocks already cached by an
    earlier request: the same prompt_logprobs, and no prefix-cache hit taken."""
    params = SamplingParams(temperature=0, max_tokens=1, prompt_logprobs=2)
    whole = make_llm().generate(prompt_ids, params)
    chunked = make_llm(max_num_batched_tokens=7, block_size=8)
    chunked.generate(prompt_ids, SamplingParams(max_tokens=1))  # caches the prompt's blocks
    hits = chunked.engine.get_stats()["prefix_cache_hits"]
    again = chunked.generate(prompt_ids, params)
    assert chunked.engine.get_stats()["prefix_cache_hits"] == hits
    ours, theirs = whole[0].prompt_logprobs, again[0].prompt_logprobs
    assert len(ours) == len(theirs) == len(prompt_ids)
    for a, b in zip(ours[1:], theirs[1:], strict=True):
        assert a.keys() == b.keys()
        for token in a:
            assert a[token].rank == b[token].rank
            assert a[token].logprob == pytest.approx(b[token].logprob, abs=1e-4)
    assert whole[0].outputs[0].token_ids == again[0].outputs[0].token_ids
