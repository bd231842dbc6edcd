"""round_robin against cache_aware: two `kvscope serve` workers (one core each) behind
`kvscope router`, a workload of 8 system prompts × 8 questions, side by side in one
run. Both policies see the same requests in the same order with the workers' prefix
caches emptied before each run (POST /reset_prefix_cache), in alternating rounds so
a noisy machine hits both alike; the table shows each policy's best round.

    .venv/bin/python benchmarks/router.py [--rounds 2] [--concurrency 8] [--save PATH]

Reported: the workers' prefix-cache hit rate over the run (hit tokens / prompt tokens
looked up), time to first token (mean, p99) of the streamed requests, and output
tokens per second.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
POLICIES = ("round_robin", "cache_aware")
NUM_SYSTEMS = 8
NUM_QUESTIONS = 8
SYSTEM_CHARS = 1200  # each system prompt: about 300 tokens of the corpus


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(cmd: list[str], url: str, env: dict[str, str]) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-m", "kvscope.cli", *cmd], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        if proc.poll() is not None:
            raise RuntimeError(f"{cmd[0]} exited with {proc.returncode}")
        time.sleep(0.5)
    proc.kill()
    raise RuntimeError(f"{cmd[0]} did not start")


def workload(seed: int = 0) -> list[str]:
    """Every question under every system prompt, in a shuffled (seeded) order: with the
    prompts in a fixed rotation, round_robin would send each system prompt to the same
    worker every time whenever the worker count divides the prompt count."""
    sys.path.insert(0, str(HERE))
    from throughput import corpus_text

    text = corpus_text()
    systems = [text[i * SYSTEM_CHARS:(i + 1) * SYSTEM_CHARS] for i in range(NUM_SYSTEMS)]
    prompts = [f"{system}\n\nQuestion {q}: summarise the passage above in one line.\nAnswer:"
               for q in range(NUM_QUESTIONS) for system in systems]
    random.Random(seed).shuffle(prompts)
    return prompts


async def one_request(client: httpx.AsyncClient, url: str, prompt: str,
                      max_tokens: int) -> tuple[float, int]:
    """(seconds to the first token, tokens received) of one streamed completion."""
    body = {"model": "bench", "prompt": prompt, "max_tokens": max_tokens, "temperature": 0,
            "ignore_eos": True, "stream": True}
    start = time.perf_counter()
    first, tokens = None, 0
    async with client.stream("POST", f"{url}/v1/completions", json=body) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            if line.startswith("data: {"):
                if first is None:
                    first = time.perf_counter() - start
                tokens += 1
    return first or 0.0, tokens


async def drive(url: str, prompts: list[str], concurrency: int,
                max_tokens: int) -> tuple[list[float], int, float]:
    queue = list(prompts)
    ttfts: list[float] = []
    total = [0]

    async def client_loop(client: httpx.AsyncClient) -> None:
        while queue:
            ttft, tokens = await one_request(client, url, queue.pop(0), max_tokens)
            ttfts.append(ttft)
            total[0] += tokens

    start = time.perf_counter()
    async with httpx.AsyncClient(timeout=600) as client:
        await asyncio.gather(*(client_loop(client) for _ in range(concurrency)))
    return ttfts, total[0], time.perf_counter() - start


def cache_counts(workers: list[str]) -> tuple[int, int]:
    stats = [httpx.get(f"{w}/stats").json() for w in workers]
    return (sum(s["prefix_cache_hits"] for s in stats),
            sum(s["prefix_cache_queries"] for s in stats))


def run_policy(policy: str, workers: list[str], prompts: list[str],
               args: argparse.Namespace, env: dict[str, str]) -> dict[str, Any]:
    for w in workers:
        httpx.post(f"{w}/reset_prefix_cache", timeout=60).raise_for_status()
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = ["router", "--port", str(port), "--policy", policy]
    for w in workers:
        cmd += ["--worker", w]
    router = start(cmd, url, env)
    try:
        hits0, queries0 = cache_counts(workers)
        ttfts, tokens, wall = asyncio.run(drive(url, prompts, args.concurrency,
                                                args.max_tokens))
        hits1, queries1 = cache_counts(workers)
        decisions = httpx.get(f"{url}/router/workers").json()["decisions"]
    finally:
        router.terminate()
        router.wait(30)
    ttfts.sort()
    return {"policy": policy, "hit_rate": (hits1 - hits0) / max(1, queries1 - queries0),
            "ttft_mean_s": statistics.mean(ttfts),
            "ttft_p99_s": ttfts[min(len(ttfts) - 1, int(0.99 * len(ttfts)))],
            "out_tok_s": tokens / wall, "wall_s": wall, "decisions": decisions}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--max-tokens", type=int, default=16)
    p.add_argument("--save", type=Path)
    args = p.parse_args()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    ports = [free_port() for _ in range(2)]
    workers = [f"http://127.0.0.1:{port}" for port in ports]
    procs = [start(["serve", "--no-scope", "--port", str(port), "--served-model-name", "bench"],
                   url, env) for port, url in zip(ports, workers, strict=True)]
    prompts = workload()
    runs: dict[str, list[dict[str, Any]]] = {policy: [] for policy in POLICIES}
    try:
        for r in range(args.rounds):
            for policy in POLICIES:
                print(f"round {r + 1}: {policy}...", file=sys.stderr, flush=True)
                runs[policy].append(run_policy(policy, workers, prompts, args, env))
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(30)
    best = {policy: min(rs, key=lambda r: r["wall_s"]) for policy, rs in runs.items()}
    print(render(best, len(prompts), args))
    if args.save:
        args.save.write_text(json.dumps({"cpu": platform.processor(), "runs": runs,
                                         "args": vars(args) | {"save": str(args.save)}},
                                        indent=2))


def render(best: dict[str, dict[str, Any]], num_requests: int, args: argparse.Namespace) -> str:
    base = best["round_robin"]
    lines = [f"{num_requests} requests ({NUM_SYSTEMS} system prompts x {NUM_QUESTIONS} "
             f"questions), {args.concurrency} concurrent clients, {args.max_tokens} tokens each, "
             "2 workers with one core each",
             f"{'policy':<13}{'hit rate':>9}{'TTFT mean s':>13}{'TTFT p99 s':>12}"
             f"{'out tok/s':>11}{'vs rr':>8}  decisions"]
    for policy, row in best.items():
        lines.append(f"{policy:<13}{row['hit_rate']:>9.1%}{row['ttft_mean_s']:>13.3f}"
                     f"{row['ttft_p99_s']:>12.3f}{row['out_tok_s']:>11.1f}"
                     f"{row['out_tok_s'] / base['out_tok_s']:>7.2f}x  {row['decisions']}")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
