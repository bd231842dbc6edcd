"""The OpenAI-compatible server, driven by the official `openai` client over real HTTP:
its greedy outputs equal the offline LLM's, streams carry the same text, many clients
are served at once, and a client that leaves frees everything it held."""

from __future__ import annotations

import asyncio
import time

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families
from server_harness import MODEL_NAME, running_server

from kvscope import LLM, SamplingParams

KEY = "test-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
PROMPTS = [f"Question {i}: what is {i} plus {i + 1}? Answer:" for i in range(32)]


@pytest.fixture(scope="module")
def server(loaded_fp32):
    with running_server(loaded_fp32, api_key=KEY) as running:
        yield running


@pytest.fixture(scope="module")
def offline(make_llm) -> LLM:
    return make_llm()


@pytest.fixture
def client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0)


def greedy(max_tokens: int) -> SamplingParams:
    return SamplingParams(temperature=0.0, max_tokens=max_tokens)


def wait_idle(server, timeout: float = 20.0) -> dict:
    """Poll /stats until no request runs or waits; returns the stats."""
    deadline = time.monotonic() + timeout
    while True:
        stats = httpx.get(server.url + "/stats", headers=AUTH).json()
        if stats["num_running"] == 0 and stats["num_waiting"] == 0:
            return stats
        assert time.monotonic() < deadline, f"the engine is still busy: {stats}"
        time.sleep(0.05)


def test_completion_equals_offline(client, offline):
    expected = offline.generate(PROMPTS[0], greedy(12))[0].outputs[0]
    response = client.completions.create(model=MODEL_NAME, prompt=PROMPTS[0], max_tokens=12,
                                         temperature=0)
    choice = response.choices[0]
    assert choice.text == expected.text
    assert choice.finish_reason == expected.finish_reason
    assert response.usage.completion_tokens == len(expected.token_ids)
    assert response.usage.prompt_tokens == len(offline.tokenizer.encode(PROMPTS[0]))
    assert response.model == MODEL_NAME


def test_chat_equals_offline(client, offline):
    messages = [{"role": "user", "content": "Name a colour."}]
    expected = offline.chat(messages, greedy(10))[0]
    response = client.chat.completions.create(model=MODEL_NAME, messages=messages,
                                              max_completion_tokens=10, temperature=0)
    assert response.choices[0].message.role == "assistant"
    assert response.choices[0].message.content == expected.outputs[0].text
    assert response.usage.prompt_tokens == len(expected.prompt_token_ids)
    assert response.usage.completion_tokens == len(expected.outputs[0].token_ids)


def test_chat_stream_with_usage(client, offline):
    messages = [{"role": "user", "content": "Say hello."}]
    expected = offline.chat(messages, greedy(10))[0]
    stream = client.chat.completions.create(model=MODEL_NAME, messages=messages, max_tokens=10,
                                            temperature=0, stream=True,
                                            stream_options={"include_usage": True})
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == expected.outputs[0].text
    finals = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finals[-1] == expected.outputs[0].finish_reason
    assert chunks[-1].choices == []
    assert chunks[-1].usage.completion_tokens == len(expected.outputs[0].token_ids)
    assert chunks[-1].usage.prompt_tokens == len(expected.prompt_token_ids)


def test_completion_stream_equals_offline(client, offline):
    expected = offline.generate(PROMPTS[1], greedy(16))[0].outputs[0]
    stream = client.completions.create(model=MODEL_NAME, prompt=PROMPTS[1], max_tokens=16,
                                       temperature=0, stream=True)
    text = "".join(chunk.choices[0].text for chunk in stream)
    assert text == expected.text


def test_logprobs_n_seed_stop_and_echo(client, offline):
    expected = offline.generate(PROMPTS[2], SamplingParams(temperature=0.0, max_tokens=6,
                                                           logprobs=3, ignore_eos=True))
    expected = expected[0].outputs[0]
    response = client.completions.create(model=MODEL_NAME, prompt=PROMPTS[2], max_tokens=6,
                                         temperature=0, logprobs=3,
                                         extra_body={"ignore_eos": True})
    assert response.choices[0].text == expected.text
    logprobs = response.choices[0].logprobs
    assert len(logprobs.tokens) == 6
    first = expected.logprobs[0][expected.token_ids[0]].logprob
    assert logprobs.token_logprobs[0] == pytest.approx(first, abs=1e-5)
    assert all(len(top) >= 3 for top in logprobs.top_logprobs)

    sampled = dict(model=MODEL_NAME, prompt=PROMPTS[3], max_tokens=8, temperature=1.0, seed=7,
                   n=3)
    first_run = client.completions.create(**sampled)
    again = client.completions.create(**sampled)
    assert [c.index for c in first_run.choices] == [0, 1, 2]
    assert [c.text for c in first_run.choices] == [c.text for c in again.choices]
    assert len({c.text for c in first_run.choices}) > 1  # completion i has seed + i

    echoed = client.completions.create(model=MODEL_NAME, prompt=PROMPTS[0], max_tokens=3,
                                       temperature=0, echo=True)
    assert echoed.choices[0].text.startswith(PROMPTS[0])

    stop_at = expected.text[len(expected.text) // 2:][:2]
    assert stop_at.strip()
    stopped = client.completions.create(model=MODEL_NAME, prompt=PROMPTS[2], max_tokens=6,
                                        temperature=0, stop=[stop_at],
                                        extra_body={"ignore_eos": True})
    assert stop_at not in stopped.choices[0].text
    assert stopped.choices[0].finish_reason == "stop"


def test_n_forks_in_the_engine_and_streams_every_choice_once(client, server, offline):
    params = SamplingParams(n=4, temperature=1.0, seed=21, max_tokens=10)
    expected = offline.generate(PROMPTS[4], params)[0].outputs
    forks_before = server.engine.stats()["num_forked_sequences"]
    chunks = list(client.completions.create(model=MODEL_NAME, prompt=PROMPTS[4], max_tokens=10,
                                            temperature=1.0, seed=21, n=4, stream=True))
    texts = ["" for _ in range(4)]
    finishes = [0] * 4
    for chunk in chunks:
        for choice in chunk.choices:
            texts[choice.index] += choice.text
            finishes[choice.index] += choice.finish_reason is not None
    assert texts == [c.text for c in expected]
    assert finishes == [1, 1, 1, 1]
    assert wait_idle(server)["num_forked_sequences"] - forks_before == 3  # one prefill, 3 forks


def test_chat_logprobs(client):
    response = client.chat.completions.create(
        model=MODEL_NAME, messages=[{"role": "user", "content": "Hi"}], max_tokens=4,
        temperature=0, logprobs=True, top_logprobs=2)
    content = response.choices[0].logprobs.content
    assert len(content) == response.usage.completion_tokens
    for entry in content:
        assert len(entry.top_logprobs) == 2
        assert entry.top_logprobs[0].logprob >= entry.top_logprobs[1].logprob
        assert entry.logprob <= 0



def test_sampling_controls_equal_offline(server, offline):
    """Penalties, bad_words, logit_bias (token ids as JSON string keys),
    skip_special_tokens and prompt_logprobs reach the engine; the answers equal the
    offline LLM's."""
    special = offline.tokenizer.convert_tokens_to_ids("<|im_start|>")
    penalties = {"presence_penalty": 1.5, "frequency_penalty": 0.5, "repetition_penalty": 1.2,
                 "bad_words": ["the"]}
    cases = [
        ({**penalties, "max_tokens": 12},
         SamplingParams(temperature=0, max_tokens=12, **penalties)),
        ({"logit_bias": {str(special): 100}, "skip_special_tokens": False, "max_tokens": 2},
         SamplingParams(temperature=0, max_tokens=2, logit_bias={special: 100.0},
                        skip_special_tokens=False)),
        ({"prompt_logprobs": 2, "max_tokens": 1},
         SamplingParams(temperature=0, max_tokens=1, prompt_logprobs=2)),
    ]
    headers = {"Authorization": f"Bearer {KEY}"}
    choices, expected = [], []
    for body, params in cases:
        expected.append(offline.generate(PROMPTS[4], params)[0])
        response = httpx.post(server.url + "/v1/completions", headers=headers, json={
            "model": MODEL_NAME, "prompt": PROMPTS[4], "temperature": 0, **body})
        choices.append(response.json()["choices"][0])
    assert [c["text"] for c in choices] == [e.outputs[0].text for e in expected]
    assert choices[1]["text"] == "<|im_start|>" * 2
    assert "prompt_logprobs" not in choices[0]
    entries, want = choices[2]["prompt_logprobs"], expected[2].prompt_logprobs
    assert entries[0] is None and len(entries) == len(want) == len(expected[2].prompt_token_ids)
    for got, ours in zip(entries[1:], want[1:], strict=True):
        assert {int(t): v["logprob"] for t, v in got.items()} == \
            pytest.approx({t: lp.logprob for t, lp in ours.items()}, abs=1e-5)

    chat = httpx.post(server.url + "/v1/chat/completions", headers=headers, json={
        "model": MODEL_NAME, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 1,
        "prompt_logprobs": 0}).json()
    assert len(chat["prompt_logprobs"]) == chat["usage"]["prompt_tokens"]


def test_include_stop_str_in_output(client, offline):
    params = SamplingParams(temperature=0, max_tokens=12, ignore_eos=True)
    text = offline.generate(PROMPTS[5], params)[0].outputs[0].text
    stop = text[len(text) // 2:][:2]
    assert stop.strip()
    for include in (False, True):
        response = client.completions.create(
            model=MODEL_NAME, prompt=PROMPTS[5], max_tokens=12, temperature=0, stop=[stop],
            extra_body={"include_stop_str_in_output": include, "ignore_eos": True})
        cut = text.index(stop) + (len(stop) if include else 0)
        assert response.choices[0].text == text[:cut]


def test_32_concurrent_streams_equal_offline(server, offline):
    expected = [o.outputs[0].text for o in offline.generate(PROMPTS, greedy(12))]

    async def one(client: openai.AsyncOpenAI, prompt: str) -> str:
        stream = await client.completions.create(model=MODEL_NAME, prompt=prompt, max_tokens=12,
                                                 temperature=0, stream=True)
        return "".join([chunk.choices[0].text async for chunk in stream])

    async def all_clients() -> list[str]:
        async with openai.AsyncOpenAI(base_url=server.url + "/v1", api_key=KEY,
                                      max_retries=0) as client:
            return await asyncio.gather(*(one(client, p) for p in PROMPTS))

    assert asyncio.run(all_clients()) == expected
    stats = wait_idle(server)
    assert stats["num_used_blocks"] == 0


def test_disconnect_mid_stream_frees_everything(server):
    body = {"model": MODEL_NAME, "prompt": PROMPTS[5], "max_tokens": 500, "temperature": 0,
            "ignore_eos": True, "stream": True}
    headers = {"Authorization": f"Bearer {KEY}"}
    with httpx.stream("POST", server.url + "/v1/completions", json=body, headers=headers,
                      timeout=30) as response:
        assert response.status_code == 200
        lines = response.iter_lines()
        received = [line for line, _ in zip(lines, range(6), strict=False) if line]
        assert received[0].startswith("data: ")
        busy = httpx.get(server.url + "/stats", headers=AUTH).json()
        assert busy["num_running"] == 1 and busy["num_used_blocks"] > 0
    stats = wait_idle(server)
    assert stats["num_used_blocks"] == 0
    assert stats["num_generated_tokens"] < 1000  # stopped long before 500 tokens


def test_disconnect_without_streaming_aborts(server):
    body = {"model": MODEL_NAME, "prompt": PROMPTS[6], "max_tokens": 500, "temperature": 0,
            "ignore_eos": True}
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(server.url + "/v1/completions", json=body,
                   headers={"Authorization": f"Bearer {KEY}"}, timeout=1.0)
    stats = wait_idle(server)
    assert stats["num_used_blocks"] == 0


def test_metrics_parse_and_move(client, server):
    def samples() -> dict[str, float]:
        text = httpx.get(server.url + "/metrics", headers=AUTH).text
        values = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.labels.get("model_name") == MODEL_NAME:
                    values[sample.name] = values.get(sample.name, 0.0) + sample.value
        return values

    before = samples()
    client.completions.create(model=MODEL_NAME, prompt=PROMPTS[7], max_tokens=5, temperature=0,
                              extra_body={"ignore_eos": True})
    after = samples()
    assert after["kvscope:generation_tokens_total"] - before.get(
        "kvscope:generation_tokens_total", 0) == 5
    assert after["kvscope:request_success_total"] - before.get(
        "kvscope:request_success_total", 0) == 1
    assert after["kvscope:e2e_request_latency_seconds_count"] - before.get(
        "kvscope:e2e_request_latency_seconds_count", 0) == 1
    assert after["kvscope:time_to_first_token_seconds_count"] - before.get(
        "kvscope:time_to_first_token_seconds_count", 0) == 1
    prompt_len = httpx.post(server.url + "/tokenize", json={"prompt": PROMPTS[7]},
                            headers=AUTH).json()["count"]
    assert after["kvscope:prompt_tokens_total"] - before.get(
        "kvscope:prompt_tokens_total", 0) == prompt_len
    assert after["kvscope:num_requests_running"] == 0
    assert after["kvscope:kv_cache_usage_perc"] == 0


def test_small_routes(server):
    assert httpx.get(server.url + "/health").json() == {"status": "ok"}
    assert "version" in httpx.get(server.url + "/version", headers=AUTH).json()
    tokens = httpx.post(server.url + "/tokenize", json={"prompt": "Hello world"},
                        headers=AUTH).json()
    assert tokens["count"] == len(tokens["tokens"]) > 0
    text = httpx.post(server.url + "/detokenize", json={"tokens": tokens["tokens"]},
                      headers=AUTH).json()
    assert text["prompt"] == "Hello world"
    models = httpx.get(server.url + "/v1/models",
                       headers={"Authorization": f"Bearer {KEY}"}).json()
    assert [m["id"] for m in models["data"]] == [MODEL_NAME]


def test_prefix_cache_hits_show_in_metrics_and_salt_opts_out(client, server):
    def hits() -> float:
        return httpx.get(server.url + "/stats", headers=AUTH).json()["prefix_cache_hits"]

    long_prompt = " ".join(f"word{i}" for i in range(60))  # well over two blocks
    client.completions.create(model=MODEL_NAME, prompt=long_prompt, max_tokens=2)
    before = hits()
    client.completions.create(model=MODEL_NAME, prompt=long_prompt, max_tokens=2,
                              extra_body={"priority": 3})
    assert hits() > before
    salted = hits()
    client.completions.create(model=MODEL_NAME, prompt=long_prompt, max_tokens=2,
                              extra_body={"cache_salt": "tenant-x"})
    assert hits() == salted
    text = httpx.get(server.url + "/metrics", headers=AUTH).text
    rates = [s.value for f in text_string_to_metric_families(text) for s in f.samples
             if s.name == "kvscope:prefix_cache_hit_rate"]
    assert rates and 0 < rates[0] < 1


def test_a_stream_dropped_unread_aborts_its_requests(server):
    """A stream that is never iterated nor closed (a client gone before its response
    started) aborts its requests once it is garbage collected."""
    import gc

    from kvscope import SamplingParams as Params

    async def add_and_drop() -> None:
        params = Params(temperature=0.0, max_tokens=400, ignore_eos=True)
        await server.engine.add_requests([("dropped", PROMPTS[8], params)])

    asyncio.run(add_and_drop())
    gc.collect()
    stats = wait_idle(server)
    assert stats["num_used_blocks"] == 0


def finished_by_reason(server) -> dict[str, float]:
    text = httpx.get(server.url + "/metrics", headers=AUTH).text
    return {s.labels["finished_reason"]: s.value for f in text_string_to_metric_families(text)
            for s in f.samples if s.name == "kvscope:request_success_total"}


def test_every_accepted_request_is_counted_once_aborts_included(client, server):
    """request_success_total, summed over its labels, grows by exactly the number of
    requests the server accepted: finished ones under stop/length, clients that left
    (mid-stream or before a plain response) under abort."""
    wait_idle(server)
    before = finished_by_reason(server)
    for i in range(3):
        client.completions.create(model=MODEL_NAME, prompt=PROMPTS[20 + i], max_tokens=3)
    long = {"model": MODEL_NAME, "prompt": PROMPTS[24], "max_tokens": 500, "ignore_eos": True}
    for _ in range(3):  # streams dropped after their first chunks
        with httpx.stream("POST", server.url + "/v1/completions", headers=AUTH, timeout=30,
                          json={**long, "stream": True}) as response:
            assert response.status_code == 200
            next(line for line in response.iter_lines() if line)
    for _ in range(2):  # plain requests whose clients give up
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(server.url + "/v1/completions", json=long, headers=AUTH, timeout=0.5)
    stats = wait_idle(server)
    assert stats["num_used_blocks"] == 0
    after = finished_by_reason(server)
    grew = {reason: after[reason] - before.get(reason, 0) for reason in after}
    assert grew.get("abort") == 5
    assert sum(grew.values()) == 3 + 5


def test_models_created_time_and_system_fingerprint(client, server):
    started = time.time()
    models = httpx.get(server.url + "/v1/models", headers=AUTH).json()
    created = models["data"][0]["created"]
    assert 0 < started - created < 3600  # when this server started, not 0
    completion = client.completions.create(model=MODEL_NAME, prompt="Hi", max_tokens=2)
    chat = client.chat.completions.create(model=MODEL_NAME, max_tokens=2,
                                          messages=[{"role": "user", "content": "Hi"}])
    fingerprint = completion.system_fingerprint
    assert fingerprint.startswith("fp_") and len(fingerprint) == 13
    assert chat.system_fingerprint == fingerprint
    stream = client.completions.create(model=MODEL_NAME, prompt="Hi", max_tokens=2, stream=True)
    assert {chunk.system_fingerprint for chunk in stream} == {fingerprint}


def test_echo_with_logprobs_scores_the_prompt(client, server, offline):
    """echo + logprobs: the prompt's tokens with their logprobs (None for the first),
    then the completion's; max_tokens=0 scores the prompt alone."""
    prompt = PROMPTS[9]
    ids = offline.tokenizer.encode(prompt)
    scored = offline.generate(prompt, SamplingParams(temperature=0, max_tokens=1,
                                                     prompt_logprobs=1, logprobs=1))[0]
    response = client.completions.create(model=MODEL_NAME, prompt=prompt, max_tokens=1,
                                         temperature=0, echo=True, logprobs=1)
    logprobs = response.choices[0].logprobs
    assert len(logprobs.tokens) == len(ids) + 1
    assert logprobs.token_logprobs[0] is None and logprobs.top_logprobs[0] is None
    expected = [entry[t].logprob for entry, t in zip(scored.prompt_logprobs[1:], ids[1:],
                                                    strict=True)]
    assert logprobs.token_logprobs[1:len(ids)] == pytest.approx(expected, abs=1e-5)
    assert response.choices[0].text.startswith(prompt)
    assert logprobs.text_offset[0] == 0
    only = client.completions.create(model=MODEL_NAME, prompt=prompt, max_tokens=0, echo=True,
                                     logprobs=0)
    assert only.choices[0].text == prompt
    assert only.usage.completion_tokens == 0
    assert only.choices[0].logprobs.token_logprobs[1:] == pytest.approx(expected, abs=1e-5)
