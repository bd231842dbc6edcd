"""Every bad input fails fast, with a message naming the field; a bad request never
disturbs the requests already running."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

from kvscope import LLM, SamplingParams
from kvscope.config import ConfigError
from kvscope.model.arch import UnsupportedModelError
from kvscope.model.loader import ModelNotFoundError
from kvscope.request import RequestError
from kvscope.sampling_params import SamplingParamsError

PROMPT = "The capital of France is"
OTHER = "Once upon a time, in a small village by the sea, there lived an old fisherman who"
GREEDY = SamplingParams(temperature=0.0, max_tokens=8, ignore_eos=True)


@pytest.fixture(scope="module")
def llm(make_llm) -> LLM:
    return make_llm()


def assert_idle(llm: LLM) -> None:
    stats = llm.engine.get_stats()
    assert not llm.engine.has_unfinished_requests()
    assert stats["num_used_blocks"] == 0
    assert stats["num_free_blocks"] == stats["num_blocks"]


# -- prompts ------------------------------------------------------------------------


def test_empty_string_prompt(llm: LLM):
    with pytest.raises(RequestError, match=r"^prompt must not be empty$"):
        llm.generate("", GREEDY)
    with pytest.raises(RequestError, match=r"^prompt must not be empty$"):
        llm.engine.add_request("empty", "", GREEDY)
    assert_idle(llm)


def test_empty_token_list_prompt(llm: LLM):
    message = re.escape("prompt must not be empty (got no token ids)")
    with pytest.raises(RequestError, match=message):
        llm.generate([[]], GREEDY)
    with pytest.raises(RequestError, match=message):
        llm.engine.add_request("empty", [], GREEDY)
    assert_idle(llm)


def test_token_ids_outside_the_vocabulary(llm: LLM):
    vocab = llm.engine.loaded.arch.vocab_size
    for bad, index, value in (([1, vocab], 1, vocab), ([-1, 5], 0, -1), ([1, 2.0], 1, 2.0)):
        message = re.escape(f"prompt token {index} is {value!r}: token ids must be integers "
                            f"in [0, {vocab})")
        with pytest.raises(RequestError, match=message):
            llm.engine.add_request("bad", bad, GREEDY)
    assert_idle(llm)


def test_prompt_longer_than_max_model_len(make_llm):
    llm = make_llm(max_model_len=16)
    ids = list(range(100, 120))
    with pytest.raises(RequestError, match=r"^prompt has 20 tokens; max_model_len is 16 "):
        llm.generate([ids], GREEDY)
    # the prompt needs room for at least one generated token
    with pytest.raises(RequestError, match=r"^prompt has 16 tokens; max_model_len is 16 "):
        llm.generate([ids[:16]], GREEDY)
    assert_idle(llm)


def test_generate_with_one_bad_prompt_adds_nothing(llm: LLM):
    with pytest.raises(RequestError, match="prompt must not be empty"):
        llm.generate([PROMPT, OTHER, ""], GREEDY)
    assert_idle(llm)


def test_sampling_params_count_must_match(llm: LLM):
    with pytest.raises(ValueError, match=r"got 2 sampling_params for 3 prompts"):
        llm.generate([PROMPT, OTHER, PROMPT], [GREEDY, GREEDY])
    assert_idle(llm)


# -- sampling values ----------------------------------------------------------------


@pytest.mark.parametrize(("values", "message"), [
    ({"temperature": -0.5}, "temperature must be a number >= 0; got -0.5"),
    ({"top_p": 0}, "top_p must be in (0, 1]; got 0"),
    ({"top_p": 1.5}, "top_p must be in (0, 1]; got 1.5"),
    ({"top_k": -2}, "top_k must be an integer >= 1, or 0 / -1 to disable; got -2"),
    ({"min_p": 2}, "min_p must be in [0, 1]; got 2"),
    ({"max_tokens": 0}, "max_tokens must be an integer >= 1 (or None for up to max_model_len)"
                        "; got 0"),
    ({"min_tokens": 5, "max_tokens": 3}, "min_tokens must be <= max_tokens (3); got 5"),
    ({"min_tokens": -1}, "min_tokens must be an integer >= 0; got -1"),
    ({"logprobs": -1}, "logprobs must be an integer >= 0 or None; got -1"),
    ({"stop": ""}, "stop must be a non-empty string or a list of non-empty strings; got ''"),
    ({"stop": ["ok", ""]}, "stop must be a non-empty string or a list of non-empty strings"),
    ({"stop_token_ids": [-3]}, "stop_token_ids must be a list of non-negative token ids"),
    ({"seed": "7"}, "seed must be an integer in [-2**63, 2**64) or None; got '7'"),
    ({"seed": 2**64}, "seed must be an integer in [-2**63, 2**64) or None"),
    ({"n": 0}, "n must be an integer in [1, 64]; got 0"),
])
def test_invalid_sampling_values(values, message):
    with pytest.raises(SamplingParamsError, match="^" + re.escape(message)):
        SamplingParams(**values)


# -- engine options and models ------------------------------------------------------


def test_kv_budget_too_small_for_one_full_length_request(make_llm, loaded_fp32):
    bytes_per_block = loaded_fp32.arch.kv_bytes_per_token(4) * 16
    budget = 10 * bytes_per_block
    message = (f"kv_cache_memory of {budget} bytes holds 10 blocks of 16 tokens "
               f"({bytes_per_block} bytes each), but one request of max_model_len 256 needs "
               f"16 blocks")
    with pytest.raises(ConfigError, match="^" + re.escape(message)):
        make_llm(kv_cache_memory=budget, max_model_len=256, block_size=16)
    # exactly enough is fine
    llm = make_llm(kv_cache_memory=16 * bytes_per_block, max_model_len=256, block_size=16)
    assert llm.engine.num_blocks == 16


@pytest.mark.parametrize(("options", "message"), [
    ({"max_num_seq": 4}, "unknown engine option(s) ['max_num_seq']; known options: "),
    ({"block_size": 0}, "block_size must be a positive integer; got 0"),
    ({"block_size": 2.5}, "block_size must be a positive integer; got 2.5"),
    ({"kv_cache_memory": -1}, "kv_cache_memory must be a positive number of bytes; got -1"),
    ({"max_num_seqs": 0}, "max_num_seqs must be a positive integer; got 0"),
    ({"max_num_batched_tokens": 0}, "max_num_batched_tokens must be a positive integer; got 0"),
    ({"max_model_len": 1}, "max_model_len must be an integer >= 2; got 1"),
    ({"max_model_len": 10**6}, "max_model_len 1000000 exceeds the model's context length "),
    ({"seed": "x"}, "seed must be an integer; got 'x'"),
])
def test_invalid_engine_options(make_llm, options, message):
    with pytest.raises(ConfigError, match="^" + re.escape(message)):
        make_llm(**options)


def test_bad_dtype(loaded_fp32):
    with pytest.raises(ConfigError, match=re.escape(
            "dtype must be one of auto, float32, bfloat16; got 'float16'")):
        LLM(dtype="float16", loaded=loaded_fp32)
    with pytest.raises(ConfigError, match=re.escape(
            "dtype must be float32 or bfloat16; got torch.float16")):
        LLM(dtype=torch.float16, loaded=loaded_fp32)
    with pytest.raises(ValueError, match=re.escape(
            "loaded model is torch.float32, but dtype is torch.bfloat16")):
        LLM(dtype="bfloat16", loaded=loaded_fp32)


def test_unknown_model_path(tmp_path):
    missing = tmp_path / "no-such-model"
    with pytest.raises(ModelNotFoundError, match=re.escape(
            f"model {str(missing)!r} is neither a Hugging Face model directory, a .gguf "
            "file nor a packaged model (qwen2.5-coder-0.5b, qwen2.5-coder-1.5b)")):
        LLM(model=str(missing), dtype="float32")
    with pytest.raises(ModelNotFoundError, match=re.escape(
            f"model directory {str(tmp_path)!r} has no config.json")):
        LLM(model=str(tmp_path), dtype="float32")


def test_gguf_of_an_unsupported_architecture(tmp_path):
    import gguf

    path = tmp_path / "tiny-gpt2.gguf"
    writer = gguf.GGUFWriter(str(path), arch="gpt2")
    writer.add_block_count(1)
    writer.add_context_length(64)
    writer.add_tensor("token_embd.weight", np.zeros((8, 4), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(UnsupportedModelError, match=re.escape(
            "GGUF architecture 'gpt2' is not supported; supported: ['llama', 'qwen2']")):
        LLM(model=str(path), dtype="float32")


# -- one bad request among good ones ------------------------------------------------


def run_to_end(llm: LLM) -> dict[str, list[int]]:
    done = {}
    while llm.engine.has_unfinished_requests():
        for output in llm.engine.step():
            if output.finished:
                done[output.request_id] = output.outputs[0].token_ids
    return done


def test_bad_requests_do_not_disturb_running_ones(llm: LLM):
    expected = dict(zip("ab", (o.outputs[0].token_ids
                                for o in llm.generate([PROMPT, OTHER], GREEDY)), strict=True))
    engine = llm.engine
    engine.add_request("a", PROMPT, GREEDY)
    engine.add_request("b", OTHER, GREEDY)
    engine.step()
    engine.step()
    with pytest.raises(RequestError, match=r"^request_id 'a' is already in use$"):
        engine.add_request("a", OTHER, GREEDY)
    with pytest.raises(RequestError, match="prompt must not be empty"):
        engine.add_request("c", "", GREEDY)
    with pytest.raises(RequestError, match="max_model_len is 1024"):
        engine.add_request("d", list(range(100, 1200)), GREEDY)
    with pytest.raises(RequestError, match="prompt token 0 is 1000000000: token ids"):
        engine.add_request("e", [10**9], GREEDY)
    assert run_to_end(llm) == expected
    assert_idle(llm)


@pytest.mark.parametrize(("params", "field"), [
    (SamplingParams(temperature=0.0, max_tokens=8, min_tokens=2, stop_token_ids=[10**6]),
     "stop_token_ids"),
    (SamplingParams(temperature=0.0, max_tokens=8, logprobs=10**6), "logprobs"),
])
def test_params_out_of_the_vocabulary_are_rejected_at_add(make_llm, params, field):
    """Values that SamplingParams cannot check alone (they depend on the model's
    vocabulary) must still fail in add_request, not in the middle of a batch."""
    llm = make_llm()  # its own engine: a crash here must not leave a stuck request behind
    expected = llm.generate(PROMPT, GREEDY)[0].outputs[0].token_ids
    llm.engine.add_request("good", PROMPT, GREEDY)
    llm.engine.step()
    with pytest.raises(ValueError, match=field):
        llm.engine.add_request("bad", OTHER, params)
    assert run_to_end(llm) == {"good": expected}
    assert_idle(llm)
