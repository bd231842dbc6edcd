"""Forwarding one request to a worker and its answer back, streams included.

A worker that cannot be reached, whose connection breaks, or that stays silent past
the read timeout is marked down: the request gets a 502 with an OpenAI-style body (or,
once a stream has started, a final `data: {"error": ...}` event and `data: [DONE]`),
never a hang. A request that never reached a worker (the connection was refused) is
tried on the next healthy one.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Awaitable
from typing import Any, TypeVar

import httpx
from fastapi import Request
from fastapi.responses import Response, StreamingResponse
from starlette.background import BackgroundTask

from kvscope.serve.errors import error_body, error_response
from kvscope.serve.router.workers import Worker

WORKER_HEADER = "x-kvscope-worker"
CLIENT_LEFT = 499  # the status nobody receives, for the access log
DISCONNECT_POLL_S = 0.5  # how often a waiting request checks that its caller is still there
T = TypeVar("T")
_PASSED_HEADERS = ("content-type", "retry-after")
PASSED_METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE"]
_PASSED_REQUEST_HEADERS = ("authorization", "accept", "content-type", "last-event-id")
_PASSED_BACK_HEADERS = ("content-type", "cache-control", "retry-after", "www-authenticate",
                        "x-accel-buffering")


class WorkerFailed(Exception):
    def __init__(self, worker: Worker, cause: Exception, reached: bool) -> None:
        super().__init__(f"worker {worker.url} failed: {type(cause).__name__}: {cause}")
        self.worker = worker
        self.reached = reached  # False: the request never got to the worker


async def forward(client: httpx.AsyncClient, worker: Worker, path: str, body: dict[str, Any],
                  headers: dict[str, str], caller: Request) -> Response:
    """POST `body` to the worker; the answer as the client should get it. Raises
    WorkerFailed when the worker cannot be reached (then nothing was answered). A
    caller that leaves before the answer closes the worker's connection, so the
    worker aborts the request (a stream's does the same when its relay stops)."""
    request = client.build_request("POST", f"{worker.url}{path}", json=body, headers=headers)
    worker.in_flight += 1
    worker.requests += 1
    try:
        upstream = await _unless_caller_left(client.send(request, stream=True), caller)
    except httpx.HTTPError as exc:
        worker.in_flight -= 1
        worker.mark_down()
        never_reached = isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout)
        raise WorkerFailed(worker, exc, reached=not never_reached) from exc
    if upstream is None:
        worker.in_flight -= 1
        return Response(status_code=CLIENT_LEFT)
    kept = {k: v for k, v in upstream.headers.items() if k.lower() in _PASSED_HEADERS}
    kept[WORKER_HEADER] = worker.url
    if not body.get("stream") or upstream.status_code != 200:
        try:
            content = await _unless_caller_left(upstream.aread(), caller)
            if content is None:
                return Response(status_code=CLIENT_LEFT)
        except httpx.HTTPError as exc:
            worker.mark_down()
            return error_response(502, str(WorkerFailed(worker, exc, True)),
                                  headers={WORKER_HEADER: worker.url})
        finally:
            await upstream.aclose()
            worker.in_flight -= 1
        return Response(content, status_code=upstream.status_code, headers=kept)
    return StreamingResponse(_relay(upstream, worker), status_code=200, headers=kept)


async def _unless_caller_left(work: Awaitable[T], caller: Request) -> T | None:
    """`work`'s result, or None once the caller has disconnected (`work` cancelled:
    the worker's connection closes, and it aborts the request)."""
    task = asyncio.ensure_future(work)
    while True:
        done, _ = await asyncio.wait({task}, timeout=DISCONNECT_POLL_S)
        if done:
            return task.result()
        if await caller.is_disconnected():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, httpx.HTTPError):
                await task
            return None


async def _relay(upstream: httpx.Response, worker: Worker) -> AsyncIterator[bytes]:
    """The worker's stream, chunk by chunk; a break ends it with an error event."""
    try:
        async for chunk in upstream.aiter_raw():
            yield chunk
    except httpx.HTTPError as exc:
        worker.mark_down()
        failure = error_body(502, f"{WorkerFailed(worker, exc, True)} during the stream")
        yield f"data: {json.dumps(failure)}\n\ndata: [DONE]\n\n".encode()
    finally:
        await upstream.aclose()
        worker.in_flight -= 1


async def pass_through(request: Request, path: str) -> Response:
    """Any other path, as the fallback server answers it (streamed: the scope's live
    events are a stream that does not end)."""
    state = request.app.state.router
    url = f"{state.fallback_url}/{path}"
    if request.url.query:
        url += f"?{request.url.query}"
    headers = {k: v for k, v in request.headers.items()
               if k.lower() in _PASSED_REQUEST_HEADERS}
    outgoing = state.client.build_request(request.method, url, headers=headers,
                                          content=await request.body())
    try:
        upstream = await state.client.send(outgoing, stream=True)
    except httpx.HTTPError as exc:
        return error_response(502, f"the server at {state.fallback_url} did not answer: "
                                   f"{type(exc).__name__}: {exc}")
    kept = {k: v for k, v in upstream.headers.items() if k.lower() in _PASSED_BACK_HEADERS}
    return StreamingResponse(upstream.aiter_raw(), status_code=upstream.status_code,
                             headers=kept, background=BackgroundTask(upstream.aclose))
