"""The scope's HTTP side: its static pages at `/`, the live event stream, a recorded
run to replay, and the lesson endpoints that run a small real engine.

    GET  /scope/api/info          model, whether live / replay are available, the engine's shape
    GET  /scope/api/live          Server-Sent Events: a snapshot, then every engine event
    GET  /scope/api/replay        the recorded run (`kvscope scope --replay FILE`), as JSONL
    GET  /scope/api/kv-sizes      KV bytes per token: the loaded model and well-known ones
    GET  /scope/api/parallel-math expert and context parallelism computed (not run) from
                                  published MoE configs and the loaded model's
                                  (?model=&ep=&batch=&cp=&seq_len=)
    POST /scope/api/lab/run       a lesson's workload on a fresh small engine: its events
                                  (with speculative_config: token texts, and with
                                  compare_plain the same run without speculation)
    POST /scope/api/lab/routing   a shared-prefix workload over 2-4 replica engines, routed
                                  by the router's round_robin and cache_aware policies:
                                  where each request went and each replica's cache hits
    POST /scope/api/lab/disaggregation  one request prefilled on one lab engine and
                                  decoded on another, its K/V moved by a KV connector:
                                  both engines' events, and a single engine's tokens
    POST /scope/api/lab/attention one query's block-wise attention, with real Q, K, V
    POST /scope/api/lab/tuning    the Tuning Lab: one engine setting measured live on a
                                  short serving workload (bench/tuning.py measure_setting,
                                  the function `kvscope bench sweep` runs for every point)
    GET  /scope/api/lab/tuning/sweep  the recorded sweep shipped with the package
    POST /scope/api/lab/launch-overhead  one decode workload through the Python layer loop
                                  and through the decode stack: per-step times, kernel
                                  calls counted, and a GPU figure computed from them
    GET  /scope/api/machine-memory  this machine's CPU caches and memory, the loaded
                                  model's sizes (the GPU memory lesson)
    POST /scope/api/inside/NAME   a lesson on the model's insides (scope/inside/lessons.py:
                                  tokens, embeddings, attention, rope, block, sampling,
                                  phases, recompute), from kvscope's own forward pass
    GET  /scope/api/inside/roofline  this machine's measured matmul peak and bandwidth
                                  (?measure=true measures again)
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastapi import APIRouter, FastAPI, Query, Request
from fastapi.responses import FileResponse, StreamingResponse
from fastapi.staticfiles import StaticFiles
from pydantic import Field
from starlette.concurrency import run_in_threadpool
from starlette.routing import Match, Mount, Router
from starlette.types import Scope

from kvscope.bench import tuning
from kvscope.bench.sweep import RECORDED_SWEEP
from kvscope.bench.tuning import TuningRun
from kvscope.engine.async_engine import AsyncEngine
from kvscope.scope.disagg_lab import DisaggLabRequest, disaggregation_lesson
from kvscope.scope.inside.lessons import INSIDE_LESSONS, Lesson
from kvscope.scope.inside.roofline import machine_roofline
from kvscope.scope.kv_sizes import kv_sizes
from kvscope.scope.lab import LabRunRequest, run_lab
from kvscope.scope.lab_limits import LabBudget, LabGate, LabLimits, LabStopped
from kvscope.scope.launch_lab import LaunchOverheadRequest, launch_overhead_lesson
from kvscope.scope.live import Listener, LiveEvents
from kvscope.scope.machine_memory import machine_memory
from kvscope.scope.parallel_math import MAX_BATCH, MAX_RANKS, MAX_SEQ_LEN, parallel_math
from kvscope.scope.routing_lab import RoutingLabRequest, routing_lesson
from kvscope.serve.errors import APIError
from kvscope.serve.protocol import StrictModel

STATIC_DIR = Path(__file__).resolve().parent / "static"
KEEPALIVE_S = 15.0


@dataclass(slots=True)
class ScopeState:
    engine: AsyncEngine
    model_name: str
    live: LiveEvents | None
    replay: Path | None
    lab_gate: LabGate


class AttentionRequest(StrictModel):
    prompt: str = Field(min_length=1)
    layer: int = 0
    head: int = 0
    block_size: int = 16
    position: int = -1


def install_scope(app: FastAPI, engine: AsyncEngine, model_name: str,
                  live: LiveEvents | None = None, replay: Path | None = None,
                  lab_limits: LabLimits | None = None) -> None:
    """Add the scope's API routes and serve its pages at `/` (call after every other
    route: the static mount answers whatever path is left)."""
    app.state.scope = ScopeState(engine, model_name, live, replay,
                                 LabGate(lab_limits or LabLimits()))
    router = APIRouter(prefix="/scope/api")
    router.add_api_route("/info", _info, methods=["GET"])
    router.add_api_route("/live", _live, methods=["GET"])
    router.add_api_route("/replay", _replay, methods=["GET"])
    router.add_api_route("/kv-sizes", _kv_sizes, methods=["GET"])
    router.add_api_route("/parallel-math", _parallel_math, methods=["GET"])
    router.add_api_route("/lab/run", _lab_run, methods=["POST"])
    router.add_api_route("/lab/routing", _lab_routing, methods=["POST"])
    router.add_api_route("/lab/disaggregation", _lab_disaggregation, methods=["POST"])
    router.add_api_route("/lab/attention", _lab_attention, methods=["POST"])
    router.add_api_route("/lab/tuning", _lab_tuning, methods=["POST"])
    router.add_api_route("/lab/tuning/sweep", _tuning_sweep, methods=["GET"])
    router.add_api_route("/lab/launch-overhead", _lab_launch_overhead, methods=["POST"])
    router.add_api_route("/machine-memory", _machine_memory, methods=["GET"])
    for name, (body_type, lesson) in INSIDE_LESSONS.items():
        router.add_api_route(f"/inside/{name}", _inside_route(body_type, lesson),
                             methods=["POST"], name=f"inside_{name}")
    router.add_api_route("/inside/roofline", _roofline, methods=["GET"])
    app.include_router(router)
    app.router.routes.append(PagesMount(app.router, STATIC_DIR))


class PagesMount(Mount):
    """The scope's static pages at `/`, for every path no API route claims: a path an
    API route has under another method (GET /v1/completions) and anything under
    /v1 or /scope/api is left to the API, which answers 405 or an OpenAI-style 404."""

    def __init__(self, router: Router, directory: Path) -> None:
        super().__init__("/", app=StaticFiles(directory=directory, html=True), name="scope")
        self.api_router = router

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        path = scope.get("path", "")
        if path.startswith(("/v1/", "/scope/api/")) or path in ("/v1", "/scope/api"):
            return Match.NONE, {}
        for route in self.api_router.routes:
            if route is not self and route.matches(scope)[0] == Match.PARTIAL:
                return Match.NONE, {}
        return super().matches(scope)


def _state(request: Request) -> ScopeState:
    return request.app.state.scope


async def _info(request: Request) -> dict[str, Any]:
    state = _state(request)
    return {"model": state.model_name, "live": state.live is not None,
            "replay": state.replay is not None,
            "engine": state.engine.engine.describe().to_dict()}


async def _kv_sizes(request: Request) -> dict[str, Any]:
    state = _state(request)
    return kv_sizes(state.engine.engine.loaded, state.model_name)


async def _parallel_math(request: Request, model: str = "mixtral-8x7b",
                         ep: int = Query(8, ge=1, le=MAX_RANKS),
                         batch: int = Query(256, ge=1, le=MAX_BATCH),
                         cp: int = Query(4, ge=1, le=MAX_RANKS),
                         seq_len: int = Query(131072, ge=2, le=MAX_SEQ_LEN)) -> dict[str, Any]:
    state = _state(request)
    try:
        return parallel_math(state.engine.engine.loaded, state.model_name, model, ep, batch,
                             cp, seq_len)
    except ValueError as exc:
        raise APIError(400, str(exc)) from exc


async def _replay(request: Request) -> FileResponse:
    state = _state(request)
    if state.replay is None:
        raise APIError(404, "this server has no recording to replay; start it with "
                            "'kvscope scope --replay run.jsonl'")
    return FileResponse(state.replay, media_type="application/x-ndjson")


async def _lab_run(body: LabRunRequest, request: Request) -> dict[str, Any]:
    state = _state(request)
    async with state.lab_gate.enter():
        return await _in_lab_thread(state, run_lab, state.engine.engine.loaded, body,
                                    _lab_budget(state))


async def _lab_routing(body: RoutingLabRequest, request: Request) -> dict[str, Any]:
    state = _state(request)
    async with state.lab_gate.enter():
        return await _in_lab_thread(state, routing_lesson, state.engine.engine.loaded, body,
                                    _lab_budget(state))


async def _lab_disaggregation(body: DisaggLabRequest, request: Request) -> dict[str, Any]:
    state = _state(request)
    async with state.lab_gate.enter():
        return await _in_lab_thread(state, disaggregation_lesson, state.engine.engine.loaded,
                                    body, _lab_budget(state))


async def _lab_tuning(body: TuningRun, request: Request) -> dict[str, Any]:
    """Looked up on the module at each call (not imported by name), so that the one
    function that measures a setting is the one `kvscope bench sweep` calls too."""
    state = _state(request)
    async with state.lab_gate.enter():
        return await _in_lab_thread(state, tuning.measure_setting, state.engine.engine.loaded,
                                    body, _lab_budget(state))


async def _lab_launch_overhead(body: LaunchOverheadRequest, request: Request) -> dict[str, Any]:
    state = _state(request)
    async with state.lab_gate.enter():
        return await _in_lab_thread(state, launch_overhead_lesson, state.engine.engine.loaded,
                                    body, _lab_budget(state))


async def _machine_memory(request: Request) -> dict[str, Any]:
    state = _state(request)
    return machine_memory(state.engine.engine.loaded, state.model_name)


async def _tuning_sweep() -> FileResponse:
    if not RECORDED_SWEEP.is_file():
        raise APIError(404, "no recorded sweep ships with this install; make one with "
                            "'kvscope bench sweep --output kvscope/bench/data/tuning-sweep.json'")
    return FileResponse(RECORDED_SWEEP, media_type="application/json")


def _lab_budget(state: ScopeState) -> LabBudget:
    """A lesson run's budget, waiting while the serving engine has work (unless the
    server was told not to)."""
    limits = state.lab_gate.limits
    busy = (lambda: state.engine.is_busy) if limits.yield_to_serving else (lambda: False)
    return LabBudget(limits, busy)


async def _lab_attention(body: AttentionRequest, request: Request) -> dict[str, Any]:
    from kvscope.scope.attention_math import block_attention_math

    state = _state(request)
    async with state.lab_gate.enter():
        return await _in_lab_thread(state, block_attention_math, state.engine.engine.loaded,
                                    body.prompt, body.layer, body.head, body.block_size,
                                    body.position)


def _inside_route(body_type: type[StrictModel], lesson: Lesson) -> Callable[..., Any]:
    """A route answering one lesson on the model's insides, one run at a time."""

    async def answer(body: Any, request: Request) -> dict[str, Any]:
        state = _state(request)
        async with state.lab_gate.enter():
            return await _in_lab_thread(state, lesson, state.engine.engine.loaded, body,
                                        _lab_budget(state))

    answer.__annotations__["body"] = body_type  # what FastAPI parses the JSON body into
    return answer


async def _roofline(request: Request, measure: bool = False) -> dict[str, Any]:
    """Measuring keeps the cores busy for about a second: one at a time (the lesson
    gate), and only while the serving engine has nothing to do."""
    state = _state(request)

    def measured(dtype: Any, again: bool) -> dict[str, Any]:
        _lab_budget(state).wait_for_serving()
        return machine_roofline(dtype, again)

    async with state.lab_gate.enter():
        return await _in_lab_thread(state, measured, state.engine.engine.loaded.dtype, measure)


async def _in_lab_thread(state: ScopeState, fn: Callable[..., dict[str, Any]],
                         *args: Any) -> dict[str, Any]:
    """Run a lesson's work off the event loop; its refusals become 4xx answers."""
    try:
        return await run_in_threadpool(fn, *args)
    except ValueError as exc:
        raise APIError(400, str(exc)) from exc
    except LabStopped as exc:
        if exc.reason == "timeout":
            retry = str(state.lab_gate.limits.retry_after_s)
            raise APIError(503, str(exc), code="lab_timeout",
                           headers={"Retry-After": retry}) from exc
        raise APIError(400, str(exc), code="lab_token_cap") from exc


async def _live(request: Request) -> StreamingResponse:
    state = _state(request)
    live = state.live
    if live is None:
        raise APIError(404, "this server was started without live events")
    listener = Listener(asyncio.get_running_loop())
    await state.engine.call(lambda engine: live.add(listener, engine.snapshot()))
    return StreamingResponse(_sse(live, listener), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


async def _sse(live: LiveEvents, listener: Listener) -> AsyncIterator[str]:
    try:
        while True:
            try:
                batch = await asyncio.wait_for(listener.queue.get(), KEEPALIVE_S)
            except TimeoutError:
                yield ": keep-alive\n\n"
                continue
            if batch is None:  # fell too far behind: the page reconnects for a snapshot
                yield "event: dropped\ndata: {}\n\n"
                return
            yield "".join(f"data: {json.dumps(event, separators=(',', ':'))}\n\n"
                          for event in batch)
    finally:
        live.remove(listener)
