"""`kvscope serve --data-parallel-size N`: N engine replicas, each a `kvscope serve`
process of its own (its own engine, scheduler and KV pool) on a loopback port, behind
one front on the public address: the router (router/app.py) with the `least_load`
policy, so each request goes to the replica with the fewest in flight. Every other
path (the scope, /tokenize, /stats, ...) is passed to replica 0.

The replicas get the front's API key, so nobody reaches them without it, share the
machine's cores equally, and end when the front ends (however it ends: they watch
for their parent's death).
"""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
import time
from collections.abc import Sequence

import httpx
import uvicorn

from kvscope.serve.router.app import build_router_app
from kvscope.serve.server import Server

logger = logging.getLogger("kvscope.serve")

REPLICA_FLAG = "--data-parallel-replica"  # hidden: a replica dies with its front
STARTUP_TIMEOUT_S = 600.0
_FRONT_ONLY = {"--data-parallel-size", "-dp", "--port", "--host"}  # each takes a value


def replica_argv(argv: Sequence[str], port: int) -> list[str]:
    """The front's `serve` arguments for one replica: without the options only the
    front has, on a loopback port."""
    kept: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
            continue
        name = arg.split("=", 1)[0]
        if name in _FRONT_ONLY:
            skip = "=" not in arg
            continue
        kept.append(arg)
    # the last value of an option wins: whatever the front was given (abbreviated too),
    # a replica runs one engine on its own port
    return [*kept, "--host", "127.0.0.1", "--port", str(port), "--data-parallel-size", "1",
            REPLICA_FLAG]


def serve_data_parallel(argv: Sequence[str], size: int, host: str, port: int,
                        api_key: str | None, max_body_bytes: int) -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    ports = [_free_port() for _ in range(size)]
    threads = max(1, (os.cpu_count() or 1) // size)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    replicas = [subprocess.Popen([sys.executable, "-m", "kvscope.cli", "serve",
                                  *replica_argv(argv, p)],
                                 env=env, stdin=subprocess.DEVNULL) for p in ports]
    urls = [f"http://127.0.0.1:{p}" for p in ports]
    try:
        _wait_until_healthy(urls, replicas, api_key)
        logger.info("%d replicas up (%d threads each): %s", size, threads, ", ".join(urls))
        app = build_router_app(urls, "least_load", api_key, api_key, fallback_url=urls[0],
                               pids=[r.pid for r in replicas], max_body_bytes=max_body_bytes)
        server = Server(uvicorn.Config(app, host=host, port=port, log_level="info",
                                       timeout_graceful_shutdown=5))
        server.model_name = f"{size} data-parallel replicas (the scope: replica 0's)"
        server.run()  # returns after SIGINT/SIGTERM
    finally:
        _stop(replicas)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_until_healthy(urls: list[str], replicas: list[subprocess.Popen],
                        api_key: str | None) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    waiting = set(urls)
    while waiting:
        for url, proc in zip(urls, replicas, strict=True):
            if proc.poll() is not None:
                raise SystemExit(f"kvscope: the replica at {url} exited with {proc.returncode} "
                                 "while starting")
            if url in waiting and _healthy(url):
                waiting.discard(url)
        if time.monotonic() > deadline:
            raise SystemExit(f"kvscope: replicas {sorted(waiting)} did not start in "
                             f"{STARTUP_TIMEOUT_S:.0f} s")
        time.sleep(0.5)


def _healthy(url: str) -> bool:
    try:
        return httpx.get(f"{url}/health", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def _stop(replicas: list[subprocess.Popen]) -> None:
    for proc in replicas:
        if proc.poll() is None:
            proc.terminate()
    for proc in replicas:
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
