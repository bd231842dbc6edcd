"""Arbitrary Unicode in every text field of every route that takes text: lone
surrogates, NUL, combining marks, private-use and unassigned code points, a megabyte
string. No answer may be a 5xx, and the server answers a good request afterwards."""

from __future__ import annotations

import json
from collections.abc import Callable

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from server_harness import MODEL_NAME, running_server

KEY = "fuzz-key"
AUTH = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
GOOD = {"model": MODEL_NAME, "prompt": "The capital of France is", "max_tokens": 4,
        "temperature": 0, "ignore_eos": True}
USER = "user"


def chat(**fields) -> dict:
    return {"model": MODEL_NAME, "max_tokens": 1, **fields}


def lab(**fields) -> dict:
    return {"max_tokens": 1, "num_blocks": 8, **fields}


# (route, where the text goes): every string field the routes read
TEXT_FIELDS: list[tuple[str, Callable[[str], dict]]] = [
    ("/v1/completions", lambda t: {**GOOD, "max_tokens": 1, "prompt": t}),
    ("/v1/completions", lambda t: {**GOOD, "max_tokens": 1, "prompt": ["x", t]}),
    ("/v1/completions", lambda t: {**GOOD, "max_tokens": 1, "stop": [t]}),
    ("/v1/completions", lambda t: {**GOOD, "max_tokens": 1, "bad_words": [t]}),
    ("/v1/completions", lambda t: {**GOOD, "max_tokens": 1, "user": t}),
    ("/v1/completions", lambda t: {**GOOD, "max_tokens": 1, "cache_salt": t[:200]}),
    ("/v1/completions", lambda t: {**GOOD, "max_tokens": 1, "model": t}),
    ("/v1/completions", lambda t: {**GOOD, "max_tokens": 1, "suffix": t}),
    ("/v1/completions", lambda t: {**GOOD, "max_tokens": 1, "logit_bias": {t: 1.0}}),
    ("/v1/chat/completions", lambda t: chat(messages=[{"role": USER, "content": t}])),
    ("/v1/chat/completions", lambda t: chat(messages=[
        {"role": USER, "content": [{"type": "text", "text": t}]}])),
    ("/v1/chat/completions", lambda t: chat(messages=[
        {"role": USER, "content": "hi", "name": t}])),
    ("/v1/chat/completions", lambda t: chat(messages=[{"role": "system", "content": t},
                                                      {"role": USER, "content": "hi"}])),
    ("/v1/chat/completions", lambda t: chat(messages=[{"role": USER, "content": "hi"}],
                                            stop=t)),
    ("/tokenize", lambda t: {"prompt": t}),
    ("/tokenize", lambda t: {"messages": [{"role": USER, "content": t}]}),
    ("/tokenize", lambda t: {"prompt": "x", "model": t}),
    ("/detokenize", lambda t: {"tokens": [1, 2], "model": t}),
    ("/scope/api/lab/run", lambda t: lab(prompts=[t])),
    ("/scope/api/lab/attention", lambda t: {"prompt": t}),
]

ANY_CHARACTER = st.characters(exclude_categories=())  # surrogates (Cs) included
NASTY = st.sampled_from(["\ud800", "\udfff", "\ud83d", "\x00", "\u0301", "\u200d", "\ufeff",
                         "\U0010ffff", "\ue000", "\ufffd", "\r\n", "<|im_end|>"])
TEXT = st.one_of(
    st.text(ANY_CHARACTER, max_size=40),
    st.lists(st.one_of(NASTY, st.text(ANY_CHARACTER, max_size=4)), min_size=1,
             max_size=12).map("".join),
)
MEGABYTE = ["a\u0301" * 500_000, "\x00" * (1 << 20), "word " * 200_000 + "\ud800"]


@pytest.fixture(scope="module")
def server(loaded_fp32):
    with running_server(loaded_fp32, api_key=KEY, max_body_bytes=16 << 20,
                        max_model_len=64) as running:
        yield running


@pytest.fixture(scope="module")
def client(server):
    with httpx.Client(base_url=server.url, headers=AUTH, timeout=120) as client:
        yield client


def post(client: httpx.Client, path: str, body: dict) -> httpx.Response:
    # ensure_ascii: a lone surrogate can only travel as a \u escape
    return client.post(path, content=json.dumps(body, ensure_ascii=True))


def assert_no_5xx(response: httpx.Response, path: str, body: dict) -> None:
    assert response.status_code < 500, (path, str(body)[:300], response.text[:500])
    if response.status_code != 200:
        assert set(response.json()["error"]) == {"message", "type", "param", "code"}


def assert_still_serving(client: httpx.Client) -> None:
    response = post(client, "/v1/completions", GOOD)
    assert response.status_code == 200, response.text
    assert response.json()["usage"]["completion_tokens"] == 4


@pytest.mark.parametrize("index", range(len(TEXT_FIELDS)),
                         ids=[f"{path}:{i}" for i, (path, _) in enumerate(TEXT_FIELDS)])
def test_arbitrary_unicode_never_gets_a_5xx(client, index):
    path, build = TEXT_FIELDS[index]
    examples = 8 if path.startswith("/scope/api/") else 25  # lesson runs cost an engine each

    @given(text=TEXT)
    @settings(max_examples=examples, deadline=None, derandomize=True,
              suppress_health_check=list(HealthCheck))
    def check(text: str) -> None:
        body = build(text)
        assert_no_5xx(post(client, path, body), path, body)

    check()
    assert_still_serving(client)


def test_megabyte_strings_never_get_a_5xx(client):
    for text in MEGABYTE:
        for path, build in (TEXT_FIELDS[0], TEXT_FIELDS[9], TEXT_FIELDS[14],
                            TEXT_FIELDS[-1]):
            body = build(text)
            assert_no_5xx(post(client, path, body), path, {"size": len(text)})
    assert_still_serving(client)
