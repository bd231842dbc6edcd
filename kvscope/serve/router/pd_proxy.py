"""`kvscope pd-proxy --prefill URL --decode URL`: disaggregated prefill/decode behind one
OpenAI-compatible address.

Each completion or chat completion goes first to a prefill server (started with
`--kv-transfer-config '{"kv_connector": ..., "kv_role": "kv_producer"}'`) as the same
request with max_tokens 1, not streamed, and {"do_remote_decode": true}: it computes the
prompt, samples the first token, keeps the prompt's K/V and answers where to find it
(`kv_transfer_params`). The request then goes, unchanged but for those params, to a
decode server (`"kv_role": "kv_consumer"`), which loads the K/V instead of computing
the prompt and generates the rest; its answer, streamed or not, goes back to the caller.

When the prefill server fails (unreachable, an error, no kv_transfer_params) the decode
server gets the plain request and computes the prompt itself: counted, logged, and
the caller still gets an answer. Each pool is chosen from round robin among its servers
that answer /health.
"""

from __future__ import annotations

import contextlib
import logging
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from kvscope import __version__
from kvscope.serve.auth import ApiKeyMiddleware
from kvscope.serve.body_limit import BodyLimitMiddleware
from kvscope.serve.errors import APIError, install_error_handlers
from kvscope.serve.router.app import DEFAULT_MAX_BODY_BYTES, ROUTED, json_object
from kvscope.serve.router.policies import RoundRobin
from kvscope.serve.router.proxy import WorkerFailed, forward
from kvscope.serve.router.workers import WorkerPool

logger = logging.getLogger("kvscope.pd_proxy")
PREFILL_HEADER = "x-kvscope-prefill-worker"
DEFAULT_PREFILL_TIMEOUT_S = 300.0


@dataclass(slots=True)
class PDState:
    prefill: WorkerPool
    decode: WorkerPool
    client: httpx.AsyncClient
    prefill_timeout_s: float
    choose_prefill: RoundRobin = field(default_factory=RoundRobin)
    choose_decode: RoundRobin = field(default_factory=RoundRobin)
    counts: Counter[str] = field(default_factory=Counter)


def build_pd_proxy_app(prefill_urls: list[str], decode_urls: list[str],
                       api_key: str | None = None, worker_api_key: str | None = None,
                       health_interval_s: float = 2.0,
                       prefill_timeout_s: float = DEFAULT_PREFILL_TIMEOUT_S,
                       read_timeout_s: float = 600.0) -> FastAPI:
    headers = {"Authorization": f"Bearer {worker_api_key}"} if worker_api_key else {}
    prefill = WorkerPool(prefill_urls, headers, health_interval_s)
    decode = WorkerPool(decode_urls, headers, health_interval_s)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        timeout = httpx.Timeout(connect=5.0, read=read_timeout_s, write=30.0, pool=None)
        async with httpx.AsyncClient(timeout=timeout,
                                     limits=httpx.Limits(max_connections=None)) as client:
            app.state.pd = PDState(prefill, decode, client, prefill_timeout_s)
            for pool in (prefill, decode):
                await pool.check(client)
                pool.start(client)
            try:
                yield
            finally:
                await prefill.stop()
                await decode.stop()

    app = FastAPI(title="kvscope pd-proxy", version=__version__, lifespan=lifespan)
    install_error_handlers(app)
    for path in ROUTED:
        app.add_api_route(path, _disaggregated(path), methods=["POST"])
    app.add_api_route("/health", _health, methods=["GET"])
    app.add_api_route("/pd/workers", _workers, methods=["GET"])
    app.add_middleware(BodyLimitMiddleware, max_body_bytes=DEFAULT_MAX_BODY_BYTES)
    if api_key is not None:
        app.add_middleware(ApiKeyMiddleware, api_key=api_key, static_dir=None)
    return app


def _state(request: Request) -> PDState:
    return request.app.state.pd


def _disaggregated(path: str) -> Any:
    async def route(request: Request) -> Response:
        state = _state(request)
        body = await json_object(request)
        if body.get("n", 1) != 1:
            raise APIError(400, "the pd-proxy serves n = 1 (each sequence its own prefill)",
                           param="n")
        state.counts["requests"] += 1
        params, prefill_url = await _prefill(state, path, body)
        decode_body = dict(body)
        if params is not None:
            decode_body["kv_transfer_params"] = params
        workers = state.decode.healthy()
        if not workers:
            raise APIError(503, "no decode server is up", code="no_worker")
        worker = state.choose_decode.choose(workers, "").worker
        try:
            answer = await forward(state.client, worker, path, decode_body,
                                   state.decode.headers, request)
        except WorkerFailed as exc:
            raise APIError(502, str(exc), code="worker_failed") from exc
        if prefill_url is not None:
            answer.headers[PREFILL_HEADER] = prefill_url
        return answer

    return route


async def _prefill(state: PDState, path: str, body: dict[str, Any]
                   ) -> tuple[dict[str, Any] | None, str | None]:
    """Ask a prefill server to compute the prompt; (its kv_transfer_params, its URL),
    or (None, None) when none could, and the decode server computes the prompt."""
    workers = state.prefill.healthy()
    if not workers:
        return _no_prefill(state, "no prefill server is up")
    worker = state.choose_prefill.choose(workers, "").worker
    ask = {k: v for k, v in body.items() if k not in ("stream", "stream_options")}
    ask.update(max_tokens=1, stream=False, kv_transfer_params={"do_remote_decode": True})
    if "max_completion_tokens" in ask:
        ask["max_completion_tokens"] = 1
    worker.in_flight += 1
    worker.requests += 1
    try:
        answer = await state.client.post(f"{worker.url}{path}", json=ask,
                                         headers=state.prefill.headers,
                                         timeout=state.prefill_timeout_s)
    except httpx.HTTPError as exc:
        worker.mark_down()
        return _no_prefill(state, f"{worker.url} failed: {type(exc).__name__}: {exc}")
    finally:
        worker.in_flight -= 1
    params = _params_of(answer)
    if params is None:
        worker.failures += 1
        return _no_prefill(state, f"{worker.url} answered {answer.status_code} without "
                                  "kv_transfer_params")
    state.counts["prefilled"] += 1
    return params, worker.url


def _params_of(answer: httpx.Response) -> dict[str, Any] | None:
    if answer.status_code != 200:
        return None
    try:
        params = answer.json().get("kv_transfer_params")
    except ValueError:
        return None
    return params if isinstance(params, dict) else None


def _no_prefill(state: PDState, why: str) -> tuple[None, None]:
    state.counts["prefill_failures"] += 1
    logger.warning("prefill failed (%s): the decode server computes the prompt", why)
    return None, None


async def _health(request: Request) -> Response:
    state = _state(request)
    up = {"prefill_up": len(state.prefill.healthy()), "decode_up": len(state.decode.healthy())}
    ok = up["decode_up"] > 0
    return JSONResponse({"status": "ok" if ok else "no decode server up", **up},
                        status_code=200 if ok else 503)


async def _workers(request: Request) -> dict[str, Any]:
    state = _state(request)
    return {"counts": dict(state.counts),
            "prefill": [w.snapshot() for w in state.prefill.workers],
            "decode": [w.snapshot() for w in state.decode.workers]}
