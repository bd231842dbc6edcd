"""Disaggregated prefill/decode for real: a prefill server (kv_producer) and a decode
server (kv_consumer) on 127.0.0.1, each its own engine and KV pool, behind `kvscope
pd-proxy`, with both connectors (K/V over TCP with pyzmq, and through files in a
directory). Greedy output equals one engine's token for token; the decode server
computes none of the prompts; afterwards neither server holds a block. A prefill
server process killed after it answered leaves the decode server to compute the prompt
itself (counted), with the same output, and the proxy then serves without it."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import time
from collections.abc import Iterator

import httpx
import pytest

from kvscope.config import ConfigError, EngineConfig
from tests.server_harness import (
    MODEL_NAME,
    free_port,
    running_server,
    serve_process,
    serving_in_thread,
)

KV = 64 * 1024 * 1024
PROMPTS = [
    "The history of the printing press begins in the fifteenth century, when",
    "def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n",
    "List the numbers from 1 to 40 separated by commas:",
    "Summarise in one sentence: The river flooded the valley every spring, so the "
    "villagers built their houses on stilts and planted rice in the wet fields. " * 2,
]


def completion(prompt: str, stream: bool = False, **extra) -> dict:
    return {"model": MODEL_NAME, "prompt": prompt, "max_tokens": 16, "temperature": 0,
            "ignore_eos": True, "stream": stream, "logprobs": 0, **extra}


def transfer(connector: str, role: str, **extra) -> dict:
    return {"kv_connector": connector, "kv_role": role, "kv_connector_extra_config": extra}


@contextlib.contextmanager
def pd_proxy(prefill: list[str], decode: list[str]) -> Iterator[str]:
    from kvscope.serve.router.pd_proxy import build_pd_proxy_app

    app = build_pd_proxy_app(prefill, decode, health_interval_s=0.5)
    with serving_in_thread(app) as (_, port):
        yield f"http://127.0.0.1:{port}"


async def _ask(client: httpx.AsyncClient, url: str, body: dict) -> list[str]:
    """The completion's tokens, one string each (from its logprobs), streamed or not."""
    if not body["stream"]:
        answer = await client.post(f"{url}/v1/completions", json=body)
        assert answer.status_code == 200, answer.text
        return answer.json()["choices"][0]["logprobs"]["tokens"]
    tokens: list[str] = []
    async with client.stream("POST", f"{url}/v1/completions", json=body) as answer:
        assert answer.status_code == 200
        async for line in answer.aiter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                chunk = json.loads(line[6:])
                assert "error" not in chunk, chunk
                tokens += chunk["choices"][0]["logprobs"]["tokens"]
    return tokens


def ask_all(url: str, stream_every: int = 2) -> list[list[str]]:
    async def everyone() -> list[list[str]]:
        async with httpx.AsyncClient(timeout=120) as client:
            return await asyncio.gather(*(
                _ask(client, url, completion(p, stream=i % stream_every == 1))
                for i, p in enumerate(PROMPTS)))

    return asyncio.run(everyone())


@pytest.fixture(scope="module")
def expected(loaded_fp32) -> list[list[str]]:
    with running_server(loaded_fp32, kv_cache_memory=KV) as one:
        return ask_all(one.url, stream_every=len(PROMPTS) + 1)


def stats(url: str) -> dict:
    return httpx.get(f"{url}/stats", timeout=10).json()


def wait_until_free(url: str) -> dict:
    """The server's stats once it holds no block (a producer frees held blocks just
    after the consumer took them)."""
    deadline = time.monotonic() + 10
    while (current := stats(url))["num_used_blocks"] and time.monotonic() < deadline:
        time.sleep(0.05)
    return current


@pytest.mark.parametrize("connector", ["ZmqConnector", "SharedStorageConnector"])
def test_through_the_proxy_output_equals_one_engine_and_decode_computes_no_prompt(
        loaded_fp32, expected, connector, tmp_path):
    extra = {"shared_storage_path": str(tmp_path)} if connector == "SharedStorageConnector" \
        else {}
    with running_server(loaded_fp32, kv_cache_memory=KV,
                        kv_transfer_config=transfer(connector, "kv_producer", **extra)) as p, \
            running_server(loaded_fp32, kv_cache_memory=KV,
                           kv_transfer_config=transfer(connector, "kv_consumer", **extra)) as d, \
            pd_proxy([p.url], [d.url]) as proxy:
        assert ask_all(proxy) == expected
        prefill, decode = wait_until_free(p.url), wait_until_free(d.url)
        assert decode["num_computed_prompt_tokens"] == 0
        assert decode["kv_transfer_num_loaded"] == len(PROMPTS)
        assert decode["kv_transfer_num_load_failures"] == 0
        # the decode server computed each answer's tokens but the first and the last
        assert decode["num_computed_tokens"] == len(PROMPTS) * (16 - 1)
        assert prefill["kv_transfer_num_sent"] == len(PROMPTS)
        assert prefill["num_computed_prompt_tokens"] == decode["kv_transfer_bytes_loaded"] \
            // loaded_fp32.arch.kv_bytes_per_token(4)
        assert prefill["num_used_blocks"] == decode["num_used_blocks"] == 0
        workers = httpx.get(f"{proxy}/pd/workers").json()
        assert workers["counts"] == {"requests": len(PROMPTS), "prefilled": len(PROMPTS)}
    assert list(tmp_path.iterdir()) == []  # every K/V file was taken


@pytest.fixture(scope="module")
def prefill_process():
    """A `kvscope serve` prefill server in its own process (ZmqConnector on a known
    port); yields (its URL, its process)."""
    config = json.dumps(transfer("ZmqConnector", "kv_producer", kv_port=free_port()))
    with serve_process("--kv-cache-memory", str(KV), "--max-model-len", "1024",
                       "--no-scope", "--kv-transfer-config", config,
                       what="the prefill server") as served:
        yield served


def test_a_prefill_server_that_dies_leaves_the_decode_server_to_compute(
        loaded_fp32, expected, prefill_process):
    url, process = prefill_process
    consumer = transfer("ZmqConnector", "kv_consumer", load_timeout_s=2)
    with running_server(loaded_fp32, kv_cache_memory=KV, kv_transfer_config=consumer) as d, \
            pd_proxy([url], [d.url]) as proxy:
        answer = httpx.post(f"{url}/v1/completions", timeout=120, json=completion(
            PROMPTS[0], max_tokens=1, kv_transfer_params={"do_remote_decode": True}))
        params = answer.json()["kv_transfer_params"]
        assert params["do_remote_prefill"] and params["num_tokens"] > 0
        process.send_signal(signal.SIGKILL)  # before the decode server came for the K/V
        process.wait(30)
        before = stats(d.url)
        body = completion(PROMPTS[0], kv_transfer_params=params)
        decoded = asyncio.run(_one(d.url, body))
        assert decoded == expected[0]
        after = wait_until_free(d.url)
        assert after["kv_transfer_num_load_failures"] == before[
            "kv_transfer_num_load_failures"] + 1
        assert after["num_computed_prompt_tokens"] > before["num_computed_prompt_tokens"]
        assert after["num_used_blocks"] == 0
        # the proxy with its prefill server gone: the decode server computes every prompt
        assert ask_all(proxy) == expected
        assert httpx.get(f"{proxy}/pd/workers").json()["counts"]["prefill_failures"] >= 1


async def _one(url: str, body: dict) -> list[str]:
    async with httpx.AsyncClient(timeout=120) as client:
        return await _ask(client, url, body)


def test_bad_transfer_options_and_params_fail_clearly(loaded_fp32):
    with pytest.raises(ConfigError, match="kv_connector must be one of"):
        EngineConfig.from_kwargs(kv_transfer_config={"kv_connector": "Nope",
                                                     "kv_role": "kv_producer"})
    with pytest.raises(ConfigError, match="kv_role must be one of"):
        EngineConfig.from_kwargs(kv_transfer_config={"kv_connector": "ZmqConnector",
                                                     "kv_role": "both"})
    with pytest.raises(ConfigError, match="works with one process"):
        EngineConfig.from_kwargs(tensor_parallel_size=2, kv_transfer_config=transfer(
            "ZmqConnector", "kv_consumer"))
    with running_server(loaded_fp32, kv_cache_memory=KV) as plain:
        answer = httpx.post(f"{plain.url}/v1/completions", json=completion(
            PROMPTS[0], kv_transfer_params={"do_remote_decode": True}))
        assert answer.status_code == 400
        assert "kv-transfer-config" in answer.json()["error"]["message"]
