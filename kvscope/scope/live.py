"""The running engine's events, fanned out to browsers over Server-Sent Events.

`LiveEvents` is the serving engine's sink. It is enabled only while a browser
listens, so a server nobody watches pays nothing. Events are sent in batches: those
of one step go out together when the step ends (one wake-up of the event loop per
step, not per event); events between steps (a request arriving, an abort) go out at
once. A new listener is registered from the engine thread between two steps, right
after a snapshot of the engine, so snapshot + later events are exactly the state.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from dataclasses import dataclass, field
from typing import Any

from kvscope.events import Event, EventSink, Snapshot

MAX_QUEUED_BATCHES = 1000  # a listener this far behind is dropped, not buffered forever


@dataclass(slots=True, eq=False)
class Listener:
    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue[list[dict[str, Any]] | None] = field(default_factory=asyncio.Queue)
    dropped: bool = False


class LiveEvents(EventSink):
    def __init__(self) -> None:
        self._listeners: list[Listener] = []
        self._lock = threading.Lock()
        self._batch: list[dict[str, Any]] = []
        self._in_step = False

    @property
    def enabled(self) -> bool:  # type: ignore[override]
        return bool(self._listeners)

    @property
    def num_listeners(self) -> int:
        return len(self._listeners)

    def emit(self, event: Event) -> None:
        self._batch.append(event.to_dict())
        if event.kind == "step_begin":
            self._in_step = True
        elif event.kind == "step_end":
            self._in_step = False
        if not self._in_step:
            self._flush()

    def _flush(self) -> None:
        batch, self._batch = self._batch, []
        with self._lock:
            listeners = list(self._listeners)
        for listener in listeners:
            if listener.queue.qsize() > MAX_QUEUED_BATCHES:
                self.remove(listener)
                listener.dropped = True
                batch_for_it: list[dict[str, Any]] | None = None  # tells it to stop
            else:
                batch_for_it = batch
            with contextlib.suppress(RuntimeError):  # its event loop has closed
                listener.loop.call_soon_threadsafe(listener.queue.put_nowait, batch_for_it)

    def add(self, listener: Listener, snapshot: Snapshot) -> None:
        """Register a listener (call from the engine thread, between steps): it gets
        the snapshot first, then every later event."""
        self._batch, self._in_step = [], False  # left over if every listener left mid-step
        with self._lock:
            self._listeners.append(listener)
        listener.loop.call_soon_threadsafe(listener.queue.put_nowait, [snapshot.to_dict()])

    def remove(self, listener: Listener) -> None:
        with self._lock, contextlib.suppress(ValueError):
            self._listeners.remove(listener)
