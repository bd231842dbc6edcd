"""Every bad request gets an OpenAI-style error body with the right status, never a
traceback or a 5xx, and the server keeps serving correctly afterwards."""

from __future__ import annotations

import json
import threading
from http.client import HTTPConnection

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from server_harness import MODEL_NAME, running_server

KEY = "secret-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
MAX_MODEL_LEN = 48
BODY_LIMIT = 64 * 1024
GOOD = {"model": MODEL_NAME, "prompt": "The capital of France is", "max_tokens": 6,
        "temperature": 0, "ignore_eos": True}


@pytest.fixture(scope="module")
def server(loaded_fp32):
    with running_server(loaded_fp32, api_key=KEY, max_body_bytes=BODY_LIMIT,
                        max_model_len=MAX_MODEL_LEN) as running:
        yield running


@pytest.fixture(scope="module")
def http(server):
    with httpx.Client(base_url=server.url, headers=AUTH, timeout=60) as client:
        yield client


@pytest.fixture(scope="module")
def reference(http) -> str:
    response = http.post("/v1/completions", json=GOOD)
    assert response.status_code == 200
    return response.json()["choices"][0]["text"]


def assert_error(response: httpx.Response, status: int, param: str | None = None,
                 code: str | None = None, message: str | None = None) -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}
    error = body["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["message"] and "Traceback" not in error["message"]
    if param is not None:
        assert error["param"] == param
    if code is not None:
        assert error["code"] == code
    if message is not None:
        assert message in error["message"]
    return error


# -- 401 / 404 ------------------------------------------------------------------------


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"},
                                     {"Authorization": KEY}, {"Authorization": "Basic x"}])
def test_missing_or_wrong_key_is_401(server, headers):
    for path in ("/v1/models",):
        response = httpx.get(server.url + path, headers=headers)
        error = assert_error(response, 401, code="invalid_api_key")
        assert error["type"] == "authentication_error"
    response = httpx.post(server.url + "/v1/completions", json=GOOD, headers=headers)
    assert_error(response, 401)


def test_unknown_model_is_404(http):
    response = http.post("/v1/completions", json={**GOOD, "model": "gpt-17"})
    assert_error(response, 404, param="model", code="model_not_found", message="gpt-17")
    chat = {"model": "nope", "messages": [{"role": "user", "content": "hi"}]}
    assert_error(http.post("/v1/chat/completions", json=chat), 404, param="model")


def test_unknown_route_and_method(http):
    assert_error(http.get("/v1/nothing-here"), 404)
    assert_error(http.get("/v1/completions"), 405)


# -- 400 -------------------------------------------------------------------------------


@pytest.mark.parametrize(("change", "param"), [
    ({"temperature": -1}, "temperature"),
    ({"top_p": 0}, "top_p"),
    ({"n": 0}, "n"),
    ({"max_tokens": 0}, "max_tokens"),
    ({"max_tokens": -5}, "max_tokens"),
    ({"max_tokens": "ten"}, "max_tokens"),
    ({"max_tokens": 10**30}, "max_tokens"),
    ({"logprobs": 50}, "logprobs"),
    ({"seed": 2**70}, "seed"),
    ({"top_k": -2}, "top_k"),
    ({"min_p": 1.5}, "min_p"),
    ({"stop": [""]}, "stop"),
    ({"stop_token_ids": [-1]}, "stop_token_ids.0"),
    ({"prompt": ""}, "prompt"),
    ({"prompt": []}, "prompt"),
    ({"prompt": [10**9]}, "prompt"),
    ({"stream": "yes"}, "stream"),
    ({"presence_penalty": 2.5}, "presence_penalty"),
    ({"frequency_penalty": -3}, "frequency_penalty"),
    ({"repetition_penalty": 0}, "repetition_penalty"),
    ({"logit_bias": {"five": 1.0}}, "logit_bias"),
    ({"logit_bias": {"5": 101}}, "logit_bias"),
    ({"logit_bias": {"99999999": 1.0}}, "logit_bias"),
    ({"allowed_token_ids": []}, "allowed_token_ids"),
    ({"allowed_token_ids": [99999999]}, "allowed_token_ids"),
    ({"bad_words": [" "]}, "bad_words"),
    ({"prompt_logprobs": 21}, "prompt_logprobs"),
    ({"prompt_logprobs": 1, "stream": True}, "prompt_logprobs"),
    ({"min_tokens": 9}, "min_tokens"),
    ({"frobnicate": True}, "frobnicate"),
])
def test_invalid_parameter_is_400(http, change, param):
    error = assert_error(http.post("/v1/completions", json={**GOOD, **change}), 400)
    assert error["param"] == param or error["param"].startswith(param + "."), error


def test_prompt_over_context_is_400(http):
    too_long = {**GOOD, "prompt": [42] * MAX_MODEL_LEN}
    assert_error(http.post("/v1/completions", json=too_long), 400, param="prompt",
                 code="context_length_exceeded", message=str(MAX_MODEL_LEN))
    too_much = {**GOOD, "prompt": [42] * 40, "max_tokens": 9}
    assert_error(http.post("/v1/completions", json=too_much), 400, param="max_tokens",
                 code="context_length_exceeded")
    chat = {"messages": [{"role": "user", "content": "word " * 60}]}
    assert_error(http.post("/v1/chat/completions", json=chat), 400, param="messages",
                 code="context_length_exceeded")


def test_malformed_bodies_are_400(http):
    def post(content: bytes) -> httpx.Response:
        return http.post("/v1/completions", content=content,
                         headers={"content-type": "application/json"})

    assert_error(post(b'{"prompt": "hi", '), 400, message="not valid JSON")
    assert_error(post(b"\xff\xfe\x00garbage\x80"), 400)
    assert_error(post(b'{"prompt": "hi", "temperature": NaN}'), 400, param="temperature")
    assert_error(post(b"[1, 2, 3]"), 400)
    assert_error(post(b""), 400)
    assert_error(http.post("/v1/chat/completions", json={"messages": []}), 400,
                 param="messages")
    assert_error(http.post("/v1/chat/completions",
                           json={"messages": [{"role": "wizard", "content": "x"}]}), 400)
    assert_error(http.post("/v1/chat/completions",
                           json={"messages": [{"role": "user", "content": "x"}],
                                 "top_logprobs": 2}), 400, param="top_logprobs")


def test_messages_that_say_what_is_wrong(http):
    def post(path: str, content: bytes) -> httpx.Response:
        return http.post(path, content=content, headers={"content-type": "application/json"})

    error = assert_error(post("/v1/completions", b'{"prompt": "hi",\n  "max_tokens": }'), 400,
                         code="json_invalid")
    assert error["message"] == ("the request body is not valid JSON: Expecting value at "
                                "line 2, column 17")
    assert error["param"] is None
    assert_error(http.post("/v1/completions", json={**GOOD, "prompt": [5, 7, -3]}), 400,
                 param="prompt", message="entry [2] is -3")
    assert_error(http.post("/v1/completions", json={**GOOD, "prompt": [[5], [9, -1]]}), 400,
                 param="prompt", message="entry [1][1] is -1")
    assert_error(http.post("/v1/completions", json={**GOOD, "prompt": [5, 99999999]}), 400,
                 param="prompt", message="prompt token 1 is 99999999")
    for message in ({"role": "user"}, {"role": "assistant", "content": None}):
        assert_error(http.post("/v1/chat/completions", json={"messages": [message]}), 400,
                     param="messages.0", message="needs content")


def json_body(body: dict) -> bytes:
    """JSON with every non-ASCII character escaped: the only way to send a lone
    surrogate, which UTF-8 cannot carry."""
    return json.dumps(body, ensure_ascii=True).encode()


@pytest.mark.parametrize(("path", "body", "param"), [
    ("/v1/completions", {**GOOD, "prompt": "\ud800abc"}, "prompt"),
    ("/v1/completions", {**GOOD, "prompt": ["fine", "bad \udfff"]}, "prompt"),
    ("/v1/completions", {**GOOD, "stop": ["\ud83d"]}, "stop"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "\ud800abc"}]},
     "messages.0.content"),
    ("/tokenize", {"prompt": "\ud800abc"}, "prompt"),
    ("/detokenize", {"tokens": [1, 2], "model": "\ud800"}, "model"),
])
def test_lone_surrogates_are_400_and_the_connection_is_reused(server, path, body, param):
    connection = HTTPConnection("127.0.0.1", int(server.url.rsplit(":", 1)[1]),
                                            timeout=60)
    try:
        connection.request("POST", path, json_body(body),
                           {**AUTH, "Content-Type": "application/json"})
        response = connection.getresponse()
        error = json.loads(response.read())["error"]
        assert response.status == 400, error
        assert error["param"] == param and "lone UTF-16 surrogate" in error["message"]
        socket_before = connection.sock
        assert socket_before is not None  # the server kept the connection open
        connection.request("POST", "/v1/completions", json_body(GOOD),
                           {**AUTH, "Content-Type": "application/json"})
        response = connection.getresponse()
        assert response.status == 200
        json.loads(response.read())
        assert connection.sock is socket_before
    finally:
        connection.close()


def test_body_over_limit_is_413(http):
    response = http.post("/v1/completions", json={**GOOD, "prompt": "a" * (BODY_LIMIT + 10)})
    error = assert_error(response, 413, code="request_too_large")
    # serialised exactly as every other error body
    assert response.content == json.dumps({"error": error}, separators=(",", ":"),
                                          ensure_ascii=False).encode()
    assert response.headers["content-type"] == "application/json"

    def chunks():  # no Content-Length: the limit holds while reading
        yield b'{"prompt": "'
        for _ in range(20):
            yield b"b" * 8192
        yield b'"}'

    response = http.post("/v1/completions", content=chunks(),
                         headers={"content-type": "application/json"})
    assert_error(response, 413)


def test_burst_of_malformed_requests_then_a_normal_one(http, reference):
    bad_bodies: list[bytes] = [
        b"{", b"null", b'"just a string"', b'{"prompt": 5}', b'{"prompt": {"a": 1}}',
        b'{"prompt": "x", "max_tokens": 1e400}', b'{"prompt": "x", "n": -3}',
        b'{"prompt": "x", "unknown_field": 1}', b"\x00\x01\x02\xff" * 50,
        json.dumps({"prompt": "x", "max_tokens": 2**63}).encode(),
        json.dumps({"prompt": "x", "temperature": 1e308, "max_tokens": 1}).encode(),
        json.dumps({"prompt": [[1, 2], "x"]}).encode(),
        json.dumps({"prompt": "x", "stop": [1, 2]}).encode(),
        json.dumps({"messages": "hi"}).encode(),
    ]
    statuses = []
    for body in bad_bodies * 3:
        for path in ("/v1/completions", "/v1/chat/completions", "/tokenize", "/detokenize"):
            response = http.post(path, content=body, headers={"content-type": "application/json"})
            statuses.append(response.status_code)
            if response.status_code != 200:
                assert_error(response, response.status_code)
    assert all(s < 500 and s != 422 for s in statuses), sorted(set(statuses))
    again = http.post("/v1/completions", json=GOOD)
    assert again.status_code == 200
    assert again.json()["choices"][0]["text"] == reference


# -- 503 -------------------------------------------------------------------------------


def test_overloaded_engine_answers_503(loaded_fp32):
    """One running, one waiting, and the cap is one waiting request: the next is 503,
    and once the queue drains the server accepts again."""
    with running_server(loaded_fp32, max_num_seqs=1, max_waiting_requests=1) as srv:
        long = {**GOOD, "max_tokens": 40, "stream": True}
        first_token = threading.Event()
        results: dict[str, int] = {}

        def stream_one(name: str) -> None:
            with httpx.stream("POST", srv.url + "/v1/completions", json=long,
                              timeout=60) as response:
                results[name] = response.status_code
                for _ in response.iter_lines():
                    first_token.set()

        running = threading.Thread(target=stream_one, args=("running",))
        running.start()
        assert first_token.wait(30)
        waiting = threading.Thread(target=stream_one, args=("waiting",))
        waiting.start()
        for _ in range(200):  # until the second request is queued in the engine
            if httpx.get(srv.url + "/stats").json()["num_waiting"] == 1:
                break
            threading.Event().wait(0.01)
        response = httpx.post(srv.url + "/v1/completions", json=GOOD, timeout=60)
        assert_error(response, 503, code="overloaded")
        running.join(60)
        waiting.join(60)
        assert results == {"running": 200, "waiting": 200}
        assert httpx.post(srv.url + "/v1/completions", json=GOOD, timeout=60).status_code == 200


# -- schemathesis ----------------------------------------------------------------------


WITH_BODY = ["POST /v1/completions", "POST /v1/chat/completions", "POST /tokenize",
             "POST /detokenize"]
FUZZED = [(label, mode) for label in WITH_BODY
          for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)]


@pytest.mark.parametrize(("label", "mode"), [*FUZZED, ("GET /v1/models", GenerationMode.POSITIVE)])
def test_no_5xx_on_generated_requests(server, label, mode):
    """schemathesis generates requests from the app's own OpenAPI schema, valid ones and
    invalid ones; none may get a 5xx (or a bare 422)."""
    schema = schemathesis.openapi.from_url(server.url + "/openapi.json", headers=AUTH)
    operations = {op.ok().label: op.ok() for op in schema.get_all_operations()}
    assert label in operations

    @given(case=operations[label].as_strategy(generation_mode=mode))
    @settings(max_examples=40, deadline=None, derandomize=True,
              suppress_health_check=list(HealthCheck))
    def check(case):
        response = case.call(base_url=server.url, headers=AUTH, timeout=60)
        assert response.status_code < 500, (label, case.body, response.text)
        assert response.status_code != 422, response.text

    check()
