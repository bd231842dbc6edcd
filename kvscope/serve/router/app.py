"""The router's FastAPI app: /v1/completions and /v1/chat/completions forwarded to a
worker chosen by the policy, /v1/models from a healthy worker, /health (200 while any
worker is up), /metrics (per-worker counts, the policy's decisions and the share the
prefix decided) and /router/workers (each worker's state, as JSON). With
`fallback_url` (the data-parallel front) every other path goes to that server."""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from kvscope import __version__
from kvscope.scope.routes import STATIC_DIR
from kvscope.serve.auth import ApiKeyMiddleware
from kvscope.serve.body_limit import BodyLimitMiddleware
from kvscope.serve.errors import APIError, install_error_handlers
from kvscope.serve.router.policies import CacheAware, LeastLoad, RoundRobin, make_policy
from kvscope.serve.router.proxy import PASSED_METHODS, WorkerFailed, forward, pass_through
from kvscope.serve.router.workers import WorkerPool

DEFAULT_MAX_BODY_BYTES = 4 << 20
ROUTED = ("/v1/completions", "/v1/chat/completions")
KEY_CHARS = 8192  # how much of a prompt the cache-aware policy compares
DEFAULT_READ_TIMEOUT_S = 600.0  # a worker silent this long (no answer, no stream chunk) failed


@dataclass(slots=True)
class RouterState:
    pool: WorkerPool
    policy: RoundRobin | LeastLoad | CacheAware
    client: httpx.AsyncClient
    fallback_url: str | None = None
    pids: list[int] | None = None  # the workers' processes, when the front started them
    decisions: Counter[str] = field(default_factory=Counter)


def build_router_app(worker_urls: list[str], policy: str = "cache_aware",
                     api_key: str | None = None, worker_api_key: str | None = None,
                     health_interval_s: float = 2.0,
                     max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
                     fallback_url: str | None = None,
                     pids: list[int] | None = None,
                     read_timeout_s: float = DEFAULT_READ_TIMEOUT_S) -> FastAPI:
    headers = {"Authorization": f"Bearer {worker_api_key}"} if worker_api_key else {}
    pool = WorkerPool(worker_urls, headers, health_interval_s)
    chosen = make_policy(policy)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        timeout = httpx.Timeout(connect=5.0, read=read_timeout_s, write=30.0, pool=None)
        limits = httpx.Limits(max_connections=None, max_keepalive_connections=64)
        async with httpx.AsyncClient(timeout=timeout, limits=limits) as client:
            app.state.router = RouterState(pool, chosen, client, fallback_url, pids)
            await pool.check(client)
            pool.start(client)
            try:
                yield
            finally:
                await pool.stop()

    app = FastAPI(title="kvscope router", version=__version__, lifespan=lifespan)
    install_error_handlers(app)
    for path in ROUTED:
        app.add_api_route(path, _routed(path), methods=["POST"])
    app.add_api_route("/v1/models", _models, methods=["GET"])
    app.add_api_route("/health", _health, methods=["GET"])
    app.add_api_route("/metrics", _metrics, methods=["GET"])
    app.add_api_route("/router/workers", _workers, methods=["GET"])
    if fallback_url is not None:  # the data-parallel front: its replicas are its engine
        app.add_api_route("/reset_prefix_cache", _reset_every_cache, methods=["POST"])
        app.add_api_route("/{path:path}", pass_through, methods=PASSED_METHODS)
    app.add_middleware(BodyLimitMiddleware, max_body_bytes=max_body_bytes)
    if api_key is not None:  # the scope's pages stay public, as on `kvscope serve`
        app.add_middleware(ApiKeyMiddleware, api_key=api_key,
                           static_dir=STATIC_DIR if fallback_url is not None else None)
    return app


def _state(request: Request) -> RouterState:
    return request.app.state.router


def _routed(path: str) -> Any:
    async def route(request: Request) -> Response:
        state = _state(request)
        body = await json_object(request)
        key = prompt_key(body)
        tried: set[str] = set()
        while True:
            workers = [w for w in state.pool.healthy() if w.url not in tried]
            if not workers:
                raise APIError(503, "no worker is up to take the request"
                               + (" (the ones tried failed)" if tried else ""),
                               code="no_worker")
            decision = state.policy.choose(workers, key)
            state.decisions[decision.reason] += 1
            try:
                return await forward(state.client, decision.worker, path, body,
                                     state.pool.headers, request)
            except WorkerFailed as exc:
                if exc.reached:  # the worker may have started on it: do not run it twice
                    raise APIError(502, str(exc), code="worker_failed") from exc
                tried.add(decision.worker.url)

    return route


async def json_object(request: Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except ValueError as exc:
        raise APIError(400, f"the request body is not valid JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise APIError(400, "the request body must be a JSON object")
    return body


def prompt_key(body: dict[str, Any]) -> str:
    """The text the cache-aware policy compares: the prompt (token ids as text), or
    the chat messages role by role; only its first KEY_CHARS characters, so a huge
    prompt costs the router no more than a long one."""
    if "messages" in body:
        messages = body["messages"] if isinstance(body["messages"], list) else []
        key = "".join(f"<{m.get('role')}>{_content(m.get('content'))}" for m in messages
                      if isinstance(m, dict))
    else:
        prompt = body.get("prompt", "")
        key = ",".join(str(p) for p in prompt) if isinstance(prompt, list) else str(prompt)
    return key[:KEY_CHARS]


def _content(content: Any) -> str:
    if isinstance(content, list):  # content parts: the text ones
        return "".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return str(content)


async def _models(request: Request) -> Response:
    state = _state(request)
    for worker in state.pool.healthy():
        try:
            upstream = await state.client.get(f"{worker.url}/v1/models",
                                              headers=state.pool.headers)
        except httpx.HTTPError:
            worker.mark_down()
            continue
        return Response(upstream.content, status_code=upstream.status_code,
                        media_type="application/json")
    raise APIError(503, "no worker is up to list the models", code="no_worker")


async def _reset_every_cache(request: Request) -> dict[str, Any]:
    """Every replica forgets its cached prefix blocks; the sum of what they dropped."""
    state = _state(request)
    dropped = 0
    for worker in state.pool.healthy():
        try:
            answer = await state.client.post(f"{worker.url}/reset_prefix_cache",
                                             headers=state.pool.headers)
            dropped += answer.json().get("dropped_blocks", 0)
        except (httpx.HTTPError, ValueError) as exc:
            raise APIError(502, f"{worker.url} did not reset its cache: {exc}") from exc
    return {"dropped_blocks": dropped}


async def _health(request: Request) -> Response:
    up = len(_state(request).pool.healthy())
    return JSONResponse({"status": "ok" if up else "no worker up", "workers_up": up},
                        status_code=200 if up else 503)


async def _workers(request: Request) -> dict[str, Any]:
    state = _state(request)
    workers = [w.snapshot() for w in state.pool.workers]
    for worker, pid in zip(workers, state.pids or [], strict=False):
        worker["pid"] = pid
    return {"policy": state.policy.name, "decisions": dict(state.decisions),
            "workers": workers}


async def _metrics(request: Request) -> Response:
    state = _state(request)
    lines = []
    for name, kind, value in (("requests_total", "counter", "requests"),
                              ("failures_total", "counter", "failures"),
                              ("in_flight", "gauge", "in_flight"),
                              ("worker_up", "gauge", "healthy")):
        lines.append(f"# TYPE kvscope_router_{name} {kind}")
        lines += [f'kvscope_router_{name}{{worker="{w.url}"}} {int(getattr(w, value))}'
                  for w in state.pool.workers]
    lines.append("# TYPE kvscope_router_decisions_total counter")
    lines += [f'kvscope_router_decisions_total{{reason="{reason}"}} {count}'
              for reason, count in sorted(state.decisions.items())]
    cache_decided = state.decisions["prefix"]
    total = cache_decided + state.decisions["no_match"] + state.decisions["load"]
    lines += ["# TYPE kvscope_router_prefix_hit_ratio gauge",
              f"kvscope_router_prefix_hit_ratio {cache_decided / total if total else 0.0:.6f}"]
    return Response("\n".join(lines) + "\n", media_type="text/plain; version=0.0.4")
