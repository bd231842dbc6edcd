"""`kvscope router` over real kvscope servers on 127.0.0.1: two in this process (each
its own engine and KV pool) and, for the failure test, one in its own process killed
mid-stream. Outputs equal one engine's; cache_aware keeps a prefix on one worker and
hits the prefix cache more than round_robin; a dead worker's clients get an
OpenAI-style error, the rest are served, nothing hangs."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections import defaultdict

import httpx
import pytest

from tests.server_harness import MODEL_NAME, running_router, running_server

KV = 64 * 1024 * 1024
SYSTEMS = [
    "You are a careful assistant for a lighthouse keeper's log. Every answer lists the "
    "weather, the sea state, the ships seen and the state of the lamp, in that order, "
    "in short plain sentences, without guessing anything that was not observed. ",
    "You are a terse assistant for a bakery. Every answer gives the flour, water, salt "
    "and yeast in grams for the loaves asked for, then the times for mixing, proofing "
    "and baking, and nothing else, rounding every figure to whole numbers. ",
    "You are a patient tutor of arithmetic for children. Every answer repeats the "
    "question, works it out one small step at a time with whole numbers, and ends with "
    "the answer on its own line, written in words as well as in digits. ",
    "You are an assistant for a railway timetable office. Every answer names the line, "
    "the first and last trains, the changes needed and the platforms, using the "
    "twenty-four hour clock, and says when a service runs only on weekdays. ",
    "You are a museum guide for a hall of clocks. Every answer names the maker, the "
    "year, the movement and the case of the clock asked about, then one fact about how "
    "it kept time, in two or three sentences at most, in plain words. ",
    "You are an assistant for a small library. Every answer gives the shelf, the "
    "author's surname and the year of the book asked for, then whether it may be taken "
    "home, and for how many weeks, in one short paragraph without lists. ",
]
QUESTIONS = [f"Question {i}: what should be written down for day {i}?" for i in range(6)]


@pytest.fixture(scope="module")
def workers(loaded_fp32):
    with running_server(loaded_fp32, kv_cache_memory=KV) as a, \
            running_server(loaded_fp32, kv_cache_memory=KV) as b:
        yield [a, b]


def completion(prompt: str, max_tokens: int = 6, stream: bool = False) -> dict:
    return {"model": MODEL_NAME, "prompt": prompt, "max_tokens": max_tokens,
            "temperature": 0, "ignore_eos": True, "stream": stream}


async def stream_text(client: httpx.AsyncClient, url: str, body: dict) -> tuple[str, str, list]:
    """(the text, the worker that served it, any error events) of one streamed call."""
    text, errors = [], []
    async with client.stream("POST", f"{url}/v1/completions", json=body) as response:
        assert response.status_code == 200, await response.aread()
        worker = response.headers["x-kvscope-worker"]
        async for line in response.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            event = json.loads(line[6:])
            if "error" in event:
                errors.append(event["error"])
            else:
                text.append(event["choices"][0]["text"])
    return "".join(text), worker, errors


def hit_counts(servers) -> tuple[int, int]:
    stats = [httpx.get(f"{s.url}/stats").json() for s in servers]
    return (sum(s["prefix_cache_hits"] for s in stats),
            sum(s["prefix_cache_queries"] for s in stats))


def test_32_streaming_clients_through_round_robin_equal_one_engine(workers) -> None:
    prompts = [f"Write one short line about the number {i}." for i in range(32)]
    expected = [httpx.post(f"{workers[0].url}/v1/completions", json=completion(p),
                           timeout=120).json()["choices"][0]["text"] for p in prompts]

    async def clients(url: str) -> list[tuple[str, str, list]]:
        async with httpx.AsyncClient(timeout=120) as client:
            return await asyncio.gather(*(stream_text(client, url, completion(p, stream=True))
                                          for p in prompts))

    with running_router([w.url for w in workers], "round_robin") as url:
        results = asyncio.run(clients(url))
        state = httpx.get(f"{url}/router/workers").json()
        metrics = httpx.get(f"{url}/metrics").text
    assert [text for text, _, _ in results] == expected
    assert all(not errors for _, _, errors in results)
    served = defaultdict(int)
    for _, worker, _ in results:
        served[worker] += 1
    assert dict(served) == {workers[0].url: 16, workers[1].url: 16}
    assert state["decisions"] == {"round_robin": 32}
    assert [w["requests"] for w in state["workers"]] == [16, 16]
    assert [w["in_flight"] for w in state["workers"]] == [0, 0]
    assert f'kvscope_router_requests_total{{worker="{workers[1].url}"}} 16' in metrics


def _prefix_workload(systems: list[str]) -> list[str]:
    """Every question under every system prompt, the prompts interleaved."""
    return [s + q for q in QUESTIONS for s in systems]


def _serve_in_order(url: str, prompts: list[str]) -> list[str]:
    return [httpx.post(f"{url}/v1/completions", json=completion(p, max_tokens=2),
                       timeout=120).headers["x-kvscope-worker"] for p in prompts]


def test_cache_aware_keeps_each_prefix_on_one_worker_and_hits_more(workers) -> None:
    urls = [w.url for w in workers]
    hit_rates = {}
    for policy, systems in (("round_robin", SYSTEMS[:3]), ("cache_aware", SYSTEMS[3:])):
        hits0, queries0 = hit_counts(workers)
        with running_router(urls, policy) as url:
            prompts = _prefix_workload(systems)
            chosen = _serve_in_order(url, prompts)
            metrics = httpx.get(f"{url}/metrics").text
        hits1, queries1 = hit_counts(workers)
        hit_rates[policy] = (hits1 - hits0) / (queries1 - queries0)
        by_system = defaultdict(set)
        for prompt, worker in zip(prompts, chosen, strict=True):
            by_system[prompt[:40]].add(worker)
        if policy == "cache_aware":  # each system prompt stays where it was first cached
            assert all(len(ws) == 1 for ws in by_system.values())
            assert len(set(chosen)) == 2  # and the three prompts are spread over both
            assert "kvscope_router_prefix_hit_ratio 0.833333" in metrics  # 15 of 18
        else:  # three prompts over two workers in turn: each lands on both
            assert all(len(ws) == 2 for ws in by_system.values())
    assert hit_rates["cache_aware"] > hit_rates["round_robin"]


def test_bad_body_and_no_worker_up_get_openai_errors(workers) -> None:
    with running_router(["http://127.0.0.1:9"], "least_load", health_interval_s=60) as url:
        response = httpx.post(f"{url}/v1/completions", json=completion("hi"))
        assert response.status_code == 503
        assert response.json()["error"]["code"] == "no_worker"
        assert httpx.get(f"{url}/health").status_code == 503
    with running_router([workers[0].url], "least_load", api_key="secret") as url:
        assert httpx.post(f"{url}/v1/completions", json=completion("hi")).status_code == 401
        auth = {"Authorization": "Bearer secret"}
        bad = httpx.post(f"{url}/v1/completions", content=b"{not json", headers=auth)
        assert bad.status_code == 400 and "not valid JSON" in bad.json()["error"]["message"]
        assert httpx.get(f"{url}/health").status_code == 200
        models = httpx.get(f"{url}/v1/models", headers=auth).json()
        assert models["data"][0]["id"] == MODEL_NAME


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_worker_process(port: int) -> subprocess.Popen:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "kvscope.cli", "serve", "--port", str(port), "--no-scope",
         "--kv-cache-memory", str(KV), "--max-model-len", "512", "--served-model-name",
         MODEL_NAME], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.5)
    proc.kill()
    raise RuntimeError("the worker process did not start")


def test_a_worker_killed_mid_stream_fails_its_clients_only(workers) -> None:
    port = _free_port()
    doomed = _start_worker_process(port)
    doomed_url = f"http://127.0.0.1:{port}"
    try:
        with running_router([workers[0].url, doomed_url], "round_robin") as url:
            results = asyncio.run(asyncio.wait_for(_kill_during_streams(url, doomed), 120))
            after = [httpx.post(f"{url}/v1/completions", json=completion("After the crash"),
                                timeout=60) for _ in range(4)]
            state = httpx.get(f"{url}/router/workers").json()
    finally:
        doomed.kill()
        doomed.wait(30)
    on_doomed = [r for r in results if r[1] == doomed_url]
    on_alive = [r for r in results if r[1] == workers[0].url]
    assert len(on_doomed) == len(on_alive) == 3
    for _, _, errors in on_doomed:  # cut off, told why, in an OpenAI error body
        assert len(errors) == 1 and errors[0]["type"] == "server_error"
        assert doomed_url in errors[0]["message"]
    for text, _, errors in on_alive:
        assert not errors and len(text) > 0
    assert [r.status_code for r in after] == [200] * 4
    assert {r.headers["x-kvscope-worker"] for r in after} == {workers[0].url}
    dead = next(w for w in state["workers"] if w["url"] == doomed_url)
    assert dead["healthy"] is False and dead["failures"] >= 1 and dead["in_flight"] == 0


async def _kill_during_streams(url: str, doomed: subprocess.Popen) -> list:
    async with httpx.AsyncClient(timeout=120) as client:
        tasks = [asyncio.create_task(stream_text(client, url, completion(
            f"Count slowly from one to one hundred, stream {i}:", max_tokens=160, stream=True)))
            for i in range(6)]
        await asyncio.sleep(1.5)  # every stream has started
        doomed.send_signal(signal.SIGKILL)
        return await asyncio.gather(*tasks)
