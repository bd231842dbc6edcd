"""A real kvscope server for tests: uvicorn on a free loopback port, in a thread of
the test process, serving an engine built on the session's already-loaded model."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import uvicorn

from kvscope.config import EngineConfig
from kvscope.engine.async_engine import AsyncEngine
from kvscope.engine.llm_engine import LLMEngine
from kvscope.model.loader import LoadedModel
from kvscope.scope.lab_limits import LabLimits
from kvscope.scope.live import LiveEvents
from kvscope.serve.app import build_app

MODEL_NAME = "smollm2-test"


class RunningServer:
    def __init__(self, engine: AsyncEngine, server: uvicorn.Server, port: int,
                 live: LiveEvents) -> None:
        self.engine = engine
        self.live = live
        self.server = server
        self.app = server.config.app
        self.url = f"http://127.0.0.1:{port}"


@contextlib.contextmanager
def running_server(loaded: LoadedModel, api_key: str | None = None,
                   max_waiting_requests: int = 256, max_body_bytes: int = 1 << 20,
                   public_metrics: bool = False, scope: bool = True,
                   lab_limits: LabLimits | None = None,
                   **engine_options) -> Iterator[RunningServer]:
    engine_options.setdefault("kv_cache_memory", 64 * 1024 * 1024)
    engine_options.setdefault("max_model_len", 1024)
    config = EngineConfig.from_kwargs(dtype=loaded.dtype, **engine_options)
    live = LiveEvents()
    engine = AsyncEngine(LLMEngine(config, sink=live, loaded=loaded), max_waiting_requests)
    app = build_app(engine, MODEL_NAME, api_key, max_body_bytes, live=live if scope else None,
                    public_metrics=public_metrics, scope=scope, lab_limits=lab_limits)
    try:
        with serving_in_thread(app) as (server, port):
            yield RunningServer(engine, server, port, live)
    finally:
        engine.shutdown()


def free_port() -> int:
    """A TCP port on 127.0.0.1 nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def serving_in_thread(app: Any) -> Iterator[tuple[uvicorn.Server, int]]:
    """uvicorn serving `app` on a free loopback port in a daemon thread: (server, port)."""
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning",
                                           timeout_graceful_shutdown=2))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the test server did not start")
        time.sleep(0.02)
    try:
        yield server, server.servers[0].sockets[0].getsockname()[1]
    finally:
        server.should_exit = True
        thread.join(10)


@contextlib.contextmanager
def running_router(worker_urls: list[str], policy: str, **options: Any) -> Iterator[str]:
    """`kvscope router`'s app over `worker_urls`, in a thread; yields its base URL."""
    from kvscope.serve.router.app import build_router_app

    app = build_router_app(worker_urls, policy, **options)
    with serving_in_thread(app) as (_, port):
        yield f"http://127.0.0.1:{port}"


@contextlib.contextmanager
def serve_process(*args: str, what: str = "kvscope serve") -> Iterator[tuple[str, Any]]:
    """`kvscope serve ARGS` in its own process on a free port, dense fp32 as the tests'
    in-process servers; yields (its URL, its Popen) once /health answers, and kills it
    (and so what it started) at the end."""
    import os
    import subprocess
    import sys


    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "kvscope.cli", "serve", "--port", str(port), "--dtype",
         "float32", "--quantization", "none", "--served-model-name", MODEL_NAME, *args],
        env={**os.environ, "HF_HUB_OFFLINE": "1"}, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while not answers_health(url):
        if time.monotonic() > deadline or process.poll() is not None:
            process.kill()
            raise RuntimeError(f"{what} did not start")
        time.sleep(0.5)
    try:
        yield url, process
    finally:
        process.kill()
        process.wait(30)


def answers_health(url: str) -> bool:
    import httpx

    try:
        return httpx.get(f"{url}/health", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False
