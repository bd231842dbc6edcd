"""`kvscope router` over real kvscope servers on 127.0.0.1 (two in this process, each
its own engine and KV pool), and `kvscope serve --data-parallel-size 2` (the same
router in front of two replica processes). Outputs equal one engine's; cache_aware
keeps a prefix on one worker and hits the prefix cache more than round_robin; a
replica killed mid-stream fails its clients with an OpenAI-style error while the rest
are served, nothing hangs, and no process outlives the front."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from collections import defaultdict

import httpx
import pytest

from tests.server_harness import (
    MODEL_NAME,
    running_router,
    running_server,
    serve_process,
)

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


def test_a_caller_that_leaves_a_plain_request_stops_its_work(workers) -> None:
    """Not streamed: the router holds the answer back until it is complete, so it
    watches the caller meanwhile; when the caller leaves, it closes the worker's
    connection and the worker aborts the request (its blocks come back)."""
    with running_router([workers[0].url], "least_load") as url:
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(f"{url}/v1/completions", json=completion("Count to a thousand:", 900),
                       timeout=httpx.Timeout(5.0, read=1.5))
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            state = httpx.get(f"{url}/router/workers").json()["workers"][0]
            stats = httpx.get(f"{workers[0].url}/stats").json()
            if state["in_flight"] == 0 and stats["num_running"] == 0:
                break
            time.sleep(0.2)
        assert state["in_flight"] == 0 and stats["num_running"] == 0
        assert stats["num_free_blocks"] == stats["num_blocks"]  # free or evictable


def _prefix_workload(systems: list[str]) -> list[str]:
    """Every question under every system prompt, the prompts interleaved."""
    return [s + q for q in QUESTIONS for s in systems]


def _serve_in_order(url: str, prompts: list[str]) -> list[str]:
    return [httpx.post(f"{url}/v1/completions", json=completion(p, max_tokens=2),
                       timeout=120).headers["x-kvscope-worker"] for p in prompts]


def test_cache_aware_keeps_each_prefix_on_one_worker_and_hits_more(workers) -> None:
    urls = [w.url for w in workers]
    hit_rates = {}
    for policy in ("round_robin", "cache_aware"):  # the same workload, caches emptied
        dropped = [httpx.post(f"{w.url}/reset_prefix_cache").json()["dropped_blocks"]
                   for w in workers]
        if policy == "cache_aware":  # round_robin's run left each worker prefix blocks
            assert all(d > 0 for d in dropped)
        systems = SYSTEMS[:3]
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


@pytest.fixture(scope="module")
def data_parallel():
    """`kvscope serve --data-parallel-size 2` in its own process (two replica processes
    behind it), dense fp32 like the in-process workers; yields (its URL, its process)."""
    with serve_process("-dp", "2", "--kv-cache-memory", str(KV), "--max-model-len", "512",
                       what="kvscope serve -dp 2") as served:
        yield served


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_data_parallel_replicas_answer_like_one_engine(workers, data_parallel) -> None:
    url, _ = data_parallel
    prompts = [f"Name one thing that is the colour number {i}." for i in range(32)]
    expected = [httpx.post(f"{workers[0].url}/v1/completions", json=completion(p),
                           timeout=120).json()["choices"][0]["text"] for p in prompts]

    async def clients() -> list[tuple[str, str, list]]:
        async with httpx.AsyncClient(timeout=120) as client:
            return await asyncio.gather(*(stream_text(client, url, completion(p, stream=True))
                                          for p in prompts))

    results = asyncio.run(clients())
    assert [text for text, _, _ in results] == expected
    state = httpx.get(f"{url}/router/workers").json()
    assert state["policy"] == "least_load" and len(state["workers"]) == 2
    assert {worker for _, worker, _ in results} == {w["url"] for w in state["workers"]}
    # every other path is replica 0's: the scope and its API; a cache reset is everyone's
    assert httpx.get(f"{url}/scope/api/info").json()["model"] == MODEL_NAME
    assert "<title>" in httpx.get(f"{url}/").text
    httpx.post(f"{url}/v1/completions", json=completion(SYSTEMS[0]), timeout=60)  # 3 blocks
    dropped = httpx.post(f"{url}/reset_prefix_cache").json()["dropped_blocks"]
    replica_stats = [httpx.get(f"{w['url']}/stats").json() for w in state["workers"]]
    assert dropped > 0 and all(s["num_cached_blocks"] == 0 for s in replica_stats)


def test_a_replica_killed_mid_stream_fails_its_clients_only(data_parallel) -> None:
    url, front = data_parallel
    replicas = httpx.get(f"{url}/router/workers").json()["workers"]
    doomed = replicas[1]
    results = asyncio.run(asyncio.wait_for(_kill_during_streams(url, doomed["pid"]), 120))
    after = [httpx.post(f"{url}/v1/completions", json=completion("After the crash"),
                        timeout=60) for _ in range(4)]
    state = httpx.get(f"{url}/router/workers").json()
    on_doomed = [r for r in results if r[1] == doomed["url"]]
    on_alive = [r for r in results if r[1] != doomed["url"]]
    assert len(on_doomed) == len(on_alive) == 3
    for _, _, errors in on_doomed:  # cut off, told why, in an OpenAI error body
        assert len(errors) == 1 and errors[0]["type"] == "server_error"
        assert doomed["url"] in errors[0]["message"]
    for text, _, errors in on_alive:
        assert not errors and len(text) > 0
    assert [r.status_code for r in after] == [200] * 4
    assert {r.headers["x-kvscope-worker"] for r in after} == {replicas[0]["url"]}
    dead = state["workers"][1]
    assert dead["healthy"] is False and dead["failures"] >= 1 and dead["in_flight"] == 0
    # the front ends, and its last replica with it: no process is left behind
    front.send_signal(signal.SIGTERM)
    assert front.wait(60) == 0
    deadline = time.monotonic() + 30
    while _alive(replicas[0]["pid"]) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _alive(replicas[0]["pid"]) and not _alive(doomed["pid"])


async def _kill_during_streams(url: str, pid: int) -> list:
    """Six streams round the two replicas (least load alternates while they are equal),
    then the second replica is killed while they run."""
    async with httpx.AsyncClient(timeout=120) as client:
        tasks = []
        for i in range(6):
            tasks.append(asyncio.create_task(stream_text(client, url, completion(
                f"Count slowly from one to one hundred, stream {i}:", max_tokens=160,
                stream=True))))
            await asyncio.sleep(0.2)
        await asyncio.sleep(1.5)  # every stream has started
        os.kill(pid, signal.SIGKILL)
        return await asyncio.gather(*tasks)


def test_a_replica_never_starts_replicas_of_its_own() -> None:
    """However the front was told its size (abbreviated too), a replica's arguments
    parse to one engine on its own port, marked as a replica."""
    from kvscope.cli import build_parser
    from kvscope.serve.data_parallel import replica_argv

    for front in (["-dp", "2"], ["--data-parallel-size=2"], ["--data-parallel-s", "2"]):
        argv = replica_argv([*front, "--port", "8000", "--host", "0.0.0.0", "--seed", "3"], 4321)
        args = build_parser().parse_args(["serve", *argv])
        assert (args.data_parallel_size, args.data_parallel_replica) == (1, True)
        assert (args.port, args.host, args.seed) == (4321, "127.0.0.1", 3)
