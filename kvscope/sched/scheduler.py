"""Continuous batching with chunked prefill, one token budget per step.

There are no prefill and decode phases (as in vLLM v1): every step each scheduled
request gets tokens toward `num_computed_tokens == num_tokens`. Running requests
go first, in arrival order; waiting requests are admitted after them while the
token budget, the sequence cap and the KV pool allow. When a running request
cannot grow, the latest-arrived running request is preempted: its blocks are freed
and it returns to the front of the queue to be recomputed later.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field

from kvscope.config import SchedulerConfig
from kvscope.events import Event, EventSink, NullSink
from kvscope.kv.kv_manager import KVCacheManager
from kvscope.request import Request, RequestStatus


@dataclass(slots=True)
class ScheduledRequest:
    """One request's share of a step: tokens [start, start + num_tokens)."""

    request: Request
    start: int
    num_tokens: int
    block_ids: list[int]

    @property
    def samples(self) -> bool:
        """True when this chunk reaches the last known token, so the step samples."""
        return self.start + self.num_tokens == self.request.num_tokens

    @property
    def is_decode(self) -> bool:
        return self.num_tokens == 1 and self.start > 0


@dataclass(slots=True)
class SchedulerOutput:
    step: int
    scheduled: list[ScheduledRequest] = field(default_factory=list)
    preempted: list[str] = field(default_factory=list)

    @property
    def num_tokens(self) -> int:
        return sum(s.num_tokens for s in self.scheduled)

    @property
    def is_empty(self) -> bool:
        return not self.scheduled


class Scheduler:
    def __init__(
        self,
        config: SchedulerConfig,
        kv: KVCacheManager,
        max_model_len: int,
        sink: EventSink | None = None,
    ) -> None:
        self.config = config
        self.kv = kv
        self.max_model_len = max_model_len
        self.sink = sink or NullSink()
        self.waiting: deque[Request] = deque()
        self.running: list[Request] = []
        self.num_steps = 0
        self.num_preemptions = 0

    # -- queue management ---------------------------------------------------------

    def add_request(self, request: Request) -> None:
        request.status = RequestStatus.WAITING
        self.waiting.append(request)

    def finish(self, request: Request, status: RequestStatus) -> None:
        """Remove a request from the queues and free its blocks on this same step."""
        request.status = status
        request.finished_time = time.monotonic()
        if request in self.running:
            self.running.remove(request)
        elif request in self.waiting:
            self.waiting.remove(request)
        self.kv.free(request)

    def has_unfinished_requests(self) -> bool:
        return bool(self.waiting or self.running)

    # -- one step -----------------------------------------------------------------

    def schedule(self) -> SchedulerOutput:
        out = SchedulerOutput(step=self.num_steps)
        self.num_steps += 1
        budget = self.config.max_num_batched_tokens
        budget = self._schedule_running(out, budget)
        if not out.preempted:
            self._schedule_waiting(out, budget)
        return out

    def _chunk_size(self, request: Request, budget: int) -> int:
        n = min(request.num_uncomputed_tokens, budget)
        threshold = self.config.long_prefill_token_threshold
        if threshold and n > 1:
            n = min(n, threshold)
        return n

    def _schedule_running(self, out: SchedulerOutput, budget: int) -> int:
        index = 0
        while index < len(self.running) and budget > 0:
            request = self.running[index]
            n = self._chunk_size(request, budget)
            while not self.kv.allocate_slots(request, n):
                victim = self.running[-1]
                self._preempt(victim, out)
                if victim is request:
                    return budget
            out.scheduled.append(self._scheduled(request, n))
            budget -= n
            index += 1
        return budget

    def _schedule_waiting(self, out: SchedulerOutput, budget: int) -> None:
        while self.waiting and budget > 0 and len(self.running) < self.config.max_num_seqs:
            request = self.waiting[0]
            n = self._chunk_size(request, budget)
            if not self.kv.allocate_slots(request, n):
                break
            self.waiting.popleft()
            request.status = RequestStatus.RUNNING
            if request.first_scheduled_time is None:
                request.first_scheduled_time = time.monotonic()
            self.running.append(request)
            out.scheduled.append(self._scheduled(request, n))
            budget -= n

    def _scheduled(self, request: Request, n: int) -> ScheduledRequest:
        return ScheduledRequest(request, request.num_computed_tokens, n,
                                self.kv.block_ids(request.request_id))

    def _preempt(self, victim: Request, out: SchedulerOutput) -> None:
        """Recompute-mode preemption: drop the victim's K/V, queue it first in line."""
        self.running.remove(victim)
        freed = self.kv.free(victim)
        victim.num_computed_tokens = 0
        victim.status = RequestStatus.PREEMPTED
        victim.num_preemptions += 1
        self.num_preemptions += 1
        self.waiting.appendleft(victim)
        out.preempted.append(victim.request_id)
        if self.sink.enabled:
            self.sink.emit(Event("preempted", out.step, {
                "request_id": victim.request_id, "mode": "recompute", "freed": freed}))

    def update_after_step(self, out: SchedulerOutput) -> None:
        """Advance every scheduled request by the tokens the step computed."""
        for item in out.scheduled:
            item.request.num_computed_tokens += item.num_tokens
