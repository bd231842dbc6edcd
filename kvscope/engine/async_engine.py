"""AsyncEngine: the step loop in a background thread, requests streamed to asyncio.

The engine itself is synchronous (one `step()` is one forward pass). A server needs
many requests to arrive, stream and leave while steps run, so the loop lives in one
thread that owns the `LLMEngine` outright: every add and abort reaches it through a
command queue and is applied between steps, so the scheduler and the KV manager are
never touched from two threads. Outputs go back to each request's asyncio queue with
one `call_soon_threadsafe` per step. Torch releases the GIL inside its kernels, so
the event loop keeps serving HTTP while a step computes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
import time
import weakref
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

from kvscope.engine.llm_engine import LLMEngine
from kvscope.outputs import RequestOutput
from kvscope.sampling_params import SamplingParams

logger = logging.getLogger(__name__)

DEFAULT_MAX_WAITING_REQUESTS = 256


class EngineOverloadedError(RuntimeError):
    """Too many requests are already waiting; the caller should retry later (503)."""


class EngineDeadError(RuntimeError):
    """The step loop stopped after an internal error; no request can be served."""


Prompt = str | Sequence[int]
TRANSFER_POLL_S = 0.02  # how often an idle producer looks for K/V its consumers took


@dataclass(slots=True)
class _Add:
    request_id: str
    prompt: Prompt
    params: SamplingParams
    arrival_time: float
    done: Future
    priority: int = 0
    cache_salt: str | None = None


@dataclass(slots=True)
class _Call:
    """Run a function in the engine thread between two steps."""

    fn: Callable[[LLMEngine], Any]
    done: Future


class RequestStream:
    """The outputs of one or more requests (the n completions of one API call share
    a stream), as an async iterator that ends when all have finished. `close()`
    before the end aborts the unfinished ones (a client that went away); the engine
    frees their blocks on its next step."""

    def __init__(self, engine: AsyncEngine, request_ids: Sequence[str]) -> None:
        self.engine = engine
        self.loop = asyncio.get_running_loop()
        self.queue: asyncio.Queue[RequestOutput | BaseException] = asyncio.Queue()
        self.unfinished = set(request_ids)

    def __aiter__(self) -> RequestStream:
        return self

    async def __anext__(self) -> RequestOutput:
        if not self.unfinished:
            raise StopAsyncIteration
        item = await self.queue.get()
        if isinstance(item, BaseException):
            self._forget(list(self.unfinished))
            raise item
        if item.finished:
            self._forget([item.request_id])
        return item

    def __del__(self) -> None:
        # a stream dropped unread (e.g. a client gone before its response started)
        # must not leave its requests running
        if self.unfinished:
            self.close()

    def close(self) -> None:
        unfinished = list(self.unfinished)
        self._forget(unfinished)
        for request_id in unfinished:
            self.engine.abort(request_id)

    def _forget(self, request_ids: list[str]) -> None:
        for request_id in request_ids:
            self.unfinished.discard(request_id)
            self.engine._streams.pop(request_id, None)


# called in the engine thread after every step with (engine stats, outputs of the step)
StepListener = Callable[[dict[str, Any], list[RequestOutput]], None]
# called in the engine thread with the id of each unfinished request an abort ended
AbortListener = Callable[[str], None]


class AsyncEngine:
    def __init__(self, engine: LLMEngine,
                 max_waiting_requests: int = DEFAULT_MAX_WAITING_REQUESTS) -> None:
        self.engine = engine
        self.max_waiting_requests = max_waiting_requests
        self.step_listeners: list[StepListener] = []
        self.abort_listeners: list[AbortListener] = []
        self._commands: queue.SimpleQueue[_Add | _Call | str | None] = queue.SimpleQueue()
        self._wake = threading.Event()
        # weak: a stream nobody reads any more is collected, and its __del__ aborts
        self._streams: weakref.WeakValueDictionary[str, RequestStream] = \
            weakref.WeakValueDictionary()
        self._stats: dict[str, Any] = engine.get_stats()
        self._stats_lock = threading.Lock()
        self._num_pending_adds = 0
        self._error: BaseException | None = None
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="kvscope-engine", daemon=True)
        self._thread.start()

    # -- the asyncio side -----------------------------------------------------------

    @property
    def is_alive(self) -> bool:
        return self._thread.is_alive() and self._error is None

    @property
    def is_busy(self) -> bool:
        """Requests are running, waiting, or on their way in (as of the latest step)."""
        with self._stats_lock:
            stats = self._stats
            return bool(stats["num_running"] or stats["num_waiting"] or
                        stats.get("num_swapped") or self._num_pending_adds)

    def stats(self) -> dict[str, Any]:
        """The engine's get_stats() as of the end of its latest step."""
        with self._stats_lock:
            return dict(self._stats)

    async def add_requests(self, requests: Sequence[tuple[str, Prompt, SamplingParams]],
                           priority: int = 0, cache_salt: str | None = None) -> RequestStream:
        """Submit (request_id, prompt, params) requests that share one output stream;
        returns once the engine has accepted them all.

        Raises EngineOverloadedError when too many requests wait, and the engine's
        RequestError for an invalid request (none of them is then kept), before
        anything is streamed."""
        self._check_accepting(len(requests))
        stream = RequestStream(self, [request_id for request_id, _, _ in requests])
        now = time.monotonic()
        accepted = []
        with self._stats_lock:
            self._num_pending_adds += len(requests)
        for request_id, prompt, params in requests:
            self._streams[request_id] = stream
            accepted.append(Future())
            self._send(_Add(request_id, prompt, params, now, accepted[-1], priority,
                            cache_salt))
        try:
            await asyncio.gather(*(asyncio.wrap_future(f) for f in accepted))
        except BaseException:
            stream._forget([request_id for request_id, _, _ in requests])
            for (request_id, _, _), done in zip(requests, accepted, strict=True):
                if _was_or_will_be_added(done):
                    self.abort(request_id)
            raise
        return stream

    async def generate(self, request_id: str, prompt: Prompt,
                       params: SamplingParams) -> AsyncIterator[RequestOutput]:
        """Add one request and stream its outputs (each cumulative) until it
        finishes. Leaving the iteration early aborts the request."""
        stream = await self.add_requests([(request_id, prompt, params)])
        try:
            async for output in stream:
                yield output
        finally:
            stream.close()

    def abort(self, request_id: str) -> None:
        self._send(request_id)

    async def call(self, fn: Callable[[LLMEngine], Any]) -> Any:
        """`fn(engine)` run in the engine thread between two steps (so it sees, and may
        change, a consistent engine); returns its result."""
        if self._error is not None or self._stopping:
            raise EngineDeadError(f"the engine is not running ({self._error or 'shut down'})")
        done: Future = Future()
        self._send(_Call(fn, done))
        return await asyncio.wrap_future(done)

    def shutdown(self, timeout: float = 10.0) -> None:
        self._stopping = True
        self._send(None)
        self._thread.join(timeout)
        self.engine.shutdown()

    def _check_accepting(self, count: int) -> None:
        if self._error is not None or self._stopping:
            raise EngineDeadError(f"the engine is not running ({self._error or 'shut down'})")
        with self._stats_lock:
            waiting = self._stats["num_waiting"] + self._num_pending_adds
        if waiting + count > self.max_waiting_requests:
            raise EngineOverloadedError(
                f"{waiting} requests are already waiting (limit {self.max_waiting_requests}); "
                "retry later")

    def _send(self, command: _Add | _Call | str | None) -> None:
        self._commands.put(command)
        self._wake.set()

    # -- the engine thread ------------------------------------------------------------

    def _run(self) -> None:
        try:
            while not self._stopping:
                self._apply_commands()
                if self.engine.has_unfinished_requests():
                    outputs = self.engine.step()
                    self._publish(outputs)
                elif self.engine.kv_transfer_pending():  # free blocks a consumer takes
                    self._wake.wait(TRANSFER_POLL_S)
                    self._wake.clear()
                    self.engine.release_transferred()
                    self._refresh_stats()
                else:
                    self._wake.wait()
                    self._wake.clear()
        except BaseException as exc:  # a bug in a step: fail every stream, loudly
            logger.exception("engine step loop failed")
            self._error = exc
            self._fail_all(EngineDeadError(f"the engine failed: {exc!r}"))

    def _apply_commands(self) -> None:
        while True:
            try:
                command = self._commands.get_nowait()
            except queue.Empty:
                break
            if command is None:
                self._stopping = True
            elif isinstance(command, str):
                for request_id in self.engine.abort_request(command):
                    for listener in self.abort_listeners:
                        listener(request_id)
            elif isinstance(command, _Call):
                _run_call(command, self.engine)
            else:
                self._add(command)
        self._refresh_stats()

    def _add(self, command: _Add) -> None:
        if not command.done.set_running_or_notify_cancel():  # the caller gave up
            with self._stats_lock:
                self._num_pending_adds -= 1
            return
        try:
            self.engine.add_request(command.request_id, command.prompt, command.params,
                                    arrival_time=command.arrival_time,
                                    priority=command.priority, cache_salt=command.cache_salt)
        except Exception as exc:
            command.done.set_exception(exc)
        else:
            command.done.set_result(None)
        finally:
            with self._stats_lock:
                self._num_pending_adds -= 1

    def _publish(self, outputs: list[RequestOutput]) -> None:
        stats = self._refresh_stats()
        for listener in self.step_listeners:
            listener(stats, outputs)
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Queue, Any]]] = {}
        for output in outputs:
            stream = self._streams.get(output.request_id)
            if stream is not None:
                by_loop.setdefault(stream.loop, []).append((stream.queue, output))
        for loop, items in by_loop.items():
            with contextlib.suppress(RuntimeError):  # that event loop has closed
                loop.call_soon_threadsafe(_deliver, items)

    def _refresh_stats(self) -> dict[str, Any]:
        stats = self.engine.get_stats()
        with self._stats_lock:
            self._stats = stats
        return stats

    def _fail_all(self, error: BaseException) -> None:
        for ref in self._streams.valuerefs():  # a copy: safe against the loop's changes
            stream = ref()
            if stream is None:
                continue
            with contextlib.suppress(RuntimeError):
                stream.loop.call_soon_threadsafe(stream.queue.put_nowait, error)
        while True:  # adds still queued would otherwise wait forever
            try:
                command = self._commands.get_nowait()
            except queue.Empty:
                return
            if isinstance(command, _Add | _Call) and \
                    command.done.set_running_or_notify_cancel():
                command.done.set_exception(error)


def _run_call(command: _Call, engine: LLMEngine) -> None:
    if not command.done.set_running_or_notify_cancel():
        return
    try:
        result = command.fn(engine)
    except Exception as exc:
        command.done.set_exception(exc)
    else:
        command.done.set_result(result)


def _was_or_will_be_added(done: Future) -> bool:
    if done.cancelled():
        return False
    return not done.done() or done.exception() is None


def _deliver(items: list[tuple[asyncio.Queue, Any]]) -> None:
    for target, item in items:
        target.put_nowait(item)
