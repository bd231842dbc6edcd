"""What a scope lesson run costs the requests a server serves, and what the API-key
check costs each request.

    .venv/bin/python benchmarks/lab_interference.py

Two `kvscope serve` subprocesses on the bundled model, one after the other: lesson runs
that yield to the serving engine (the default), and lesson runs that do not
(`--no-scope-lab-yield`, the behaviour before yielding). On each, a client sends small
completions one after the other (16 prompt tokens, 16 greedy tokens), first alone, then
while another client keeps the scope busy with maximal lesson runs (8 prompts of ~250
tokens, n=8, 64 tokens each, the largest a lesson may ask for), and the table compares
the latencies. The keyed server's `/version` round trip against the unkeyed one's, and
the middleware's own cost in-process, show what the key check adds.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import threading
import time
import timeit
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serve import free_port, server_process

from kvscope.bench.workload import load_corpus
from kvscope.serve.auth import ApiKeyMiddleware

KEY = "bench-key"
AUTH = {"Authorization": f"Bearer {KEY}"}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=30, help="completions per case")
    parser.add_argument("--version-calls", type=int, default=300)
    parser.add_argument("--startup-timeout", type=float, default=300)
    return parser.parse_args()


def lab_prompts() -> list[str]:
    """Eight different ~250-token passages of the bundled corpus."""
    words = load_corpus().split()
    return [" ".join(words[i * 200:(i * 200) + 200]) for i in range(8)]


MAXIMAL_LAB = {"max_tokens": 64, "n": 8, "temperature": 0.8, "num_blocks": 512,
               "max_num_seqs": 64, "max_num_batched_tokens": 512}


def keep_lab_busy(url: str, stop: threading.Event, outcomes: list[int]) -> None:
    body = {**MAXIMAL_LAB, "prompts": lab_prompts()}
    with httpx.Client(base_url=url, headers=AUTH, timeout=600) as client:
        while not stop.is_set():
            outcomes.append(client.post("/scope/api/lab/run", json=body).status_code)


def latencies(url: str, count: int) -> list[float]:
    body = {"prompt": "The history of the printing press begins in the fifteenth century when",
            "max_tokens": 16, "temperature": 0, "ignore_eos": True}
    seconds = []
    with httpx.Client(base_url=url, headers=AUTH, timeout=120) as client:
        client.post("/v1/completions", json=body).raise_for_status()  # warm-up
        for _ in range(count):
            start = time.perf_counter()
            client.post("/v1/completions", json=body).raise_for_status()
            seconds.append(time.perf_counter() - start)
    return seconds


def with_lab(url: str, count: int) -> tuple[list[float], list[int]]:
    stop, outcomes = threading.Event(), []
    busy = threading.Thread(target=keep_lab_busy, args=(url, stop, outcomes))
    busy.start()
    time.sleep(3)  # the lesson is computing
    try:
        return latencies(url, count), outcomes
    finally:
        stop.set()
        busy.join()


def version_round_trip_us(url: str, headers: dict[str, str], calls: int) -> float:
    with httpx.Client(base_url=url, headers=headers, timeout=30) as client:
        client.get("/version").raise_for_status()
        start = time.perf_counter()
        for _ in range(calls):
            client.get("/version")
        return (time.perf_counter() - start) / calls * 1e6


def middleware_us() -> tuple[float, float]:
    """The key check alone: one request through ApiKeyMiddleware to an app that does
    nothing, against the same request straight to that app (microseconds each)."""
    async def app(scope: Any, receive: Any, send: Any) -> None:
        return None

    checked = ApiKeyMiddleware(app, KEY)
    scope = {"type": "http", "path": "/v1/completions", "method": "POST",
             "headers": [(b"authorization", f"Bearer {KEY}".encode())]}
    loop = asyncio.new_event_loop()
    number = 20000
    bare = timeit.timeit(lambda: loop.run_until_complete(app(scope, None, None)), number=number)
    keyed = timeit.timeit(lambda: loop.run_until_complete(checked(scope, None, None)),
                          number=number)
    loop.close()
    return bare / number * 1e6, keyed / number * 1e6


def summary(seconds: list[float]) -> dict[str, float]:
    ordered = sorted(seconds)
    p99 = ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]
    return {"mean_ms": statistics.fmean(seconds) * 1e3, "p99_ms": p99 * 1e3}


def server_argv(port: int, extra: list[str]) -> list[str]:
    return [sys.executable, "-m", "kvscope.cli", "serve", "--port", str(port),
            "--max-model-len", "1024", *extra]


def measure(name: str, extra: list[str], args: argparse.Namespace,
            env: dict[str, str]) -> dict[str, Any]:
    port = free_port()
    with server_process(name, server_argv(port, extra), env, port, args.startup_timeout) as url:
        alone = latencies(url, args.requests)
        busy, outcomes = with_lab(url, args.requests)
    return {"alone": summary(alone), "with_lab": summary(busy), "lab_statuses": outcomes}


def main() -> None:
    import os

    args = parse_args()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    results = {
        "lessons yield (default)": measure("yield", ["--api-key", KEY], args, env),
        "lessons do not yield": measure("no-yield", ["--api-key", KEY, "--no-scope-lab-yield"],
                                        args, env),
    }
    print("\nServing latency of a small completion (16 + 16 tokens), one at a time")
    print("| lessons | alone: mean / p99 ms | during a maximal lesson: mean / p99 ms | "
          "ratio (mean) | lesson answers |")
    print("| --- | --- | --- | --- | --- |")
    for name, r in results.items():
        a, b = r["alone"], r["with_lab"]
        print(f"| {name} | {a['mean_ms']:.0f} / {a['p99_ms']:.0f} | {b['mean_ms']:.0f} / "
              f"{b['p99_ms']:.0f} | {b['mean_ms'] / a['mean_ms']:.2f}x | "
              f"{sorted(set(r['lab_statuses']))} |")
    keyed_port, open_port = free_port(), free_port()
    with server_process("keyed", server_argv(keyed_port, ["--api-key", KEY]), env, keyed_port,
                        args.startup_timeout) as keyed, \
            server_process("open", server_argv(open_port, []), env, open_port,
                           args.startup_timeout) as opened:
        rounds = [(version_round_trip_us(keyed, AUTH, args.version_calls),
                   version_round_trip_us(opened, {}, args.version_calls)) for _ in range(3)]
    keyed_us = min(r[0] for r in rounds)
    open_us = min(r[1] for r in rounds)
    bare, checked = middleware_us()
    print("\nThe API-key check")
    print("| what | without a key | with the key | difference |")
    print("| --- | --- | --- | --- |")
    print(f"| GET /version round trip (best of 3 x {args.version_calls}) | {open_us:.0f} us | "
          f"{keyed_us:.0f} us | {keyed_us - open_us:+.0f} us |")
    print(f"| the middleware alone, in-process | {bare:.2f} us | {checked:.2f} us | "
          f"{checked - bare:+.2f} us |")


if __name__ == "__main__":
    main()
