"""Bounds on the scope's lesson runs, so that a lesson can never take the server from
the requests it serves.

- `LabGate`: one lesson run at a time and a short queue behind it; a run past the
  queue is answered 429 with `Retry-After` at once instead of piling up.
- `LabBudget`: checked between two steps of a run's engines. A run may compute at
  most `max_tokens` tokens (prompt, recomputed and generated, over every engine the
  run builds) and last at most `timeout_s`; past either it is stopped and its
  requests aborted, so its engine ends with every block free. Before each step the
  run waits while the serving engine has work, so real traffic goes first.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

from kvscope.engine.llm_engine import LLMEngine
from kvscope.serve.errors import APIError

YIELD_POLL_S = 0.005  # how often a waiting lesson run looks at the serving engine again


@dataclass(frozen=True, slots=True)
class LabLimits:
    queue: int = 2  # lesson runs that may wait behind the one running
    max_tokens: int = 16384  # tokens one run may compute, over all its engines
    timeout_s: float = 30.0  # wall-clock limit of one run, waiting included
    retry_after_s: int = 5  # what a 429 tells the client to wait
    yield_to_serving: bool = True  # wait between steps while the serving engine has work


class LabStopped(Exception):
    """A lesson run stopped by its budget; its engine's requests were aborted."""

    def __init__(self, reason: str, message: str, num_free_blocks: int,
                 num_blocks: int) -> None:
        super().__init__(message)
        self.reason = reason  # "token_cap" | "timeout"
        self.num_free_blocks = num_free_blocks
        self.num_blocks = num_blocks


class LabGate:
    """At most one lesson run at a time, `queue` more waiting, the rest refused."""

    def __init__(self, limits: LabLimits) -> None:
        self.limits = limits
        self.admitted = 0
        self._running = asyncio.Lock()

    @contextlib.asynccontextmanager
    async def enter(self) -> AsyncIterator[None]:
        if self.admitted >= 1 + self.limits.queue:
            raise APIError(429, f"the server is already running a lesson with "
                                f"{self.admitted - 1} more waiting (limit "
                                f"{self.limits.queue}); retry in a few seconds",
                           code="lab_busy",
                           headers={"Retry-After": str(self.limits.retry_after_s)})
        self.admitted += 1
        try:
            async with self._running:
                yield
        finally:
            self.admitted -= 1


@dataclass(slots=True)
class LabBudget:
    """What one run may still spend; `serving_busy` says whether real requests wait."""

    limits: LabLimits
    serving_busy: Callable[[], bool] = lambda: False
    deadline: float = field(init=False)
    spent_before: int = 0  # tokens computed by the run's earlier engines

    def __post_init__(self) -> None:
        self.deadline = time.monotonic() + self.limits.timeout_s

    def before_step(self, engine: LLMEngine) -> None:
        """Wait while the serving engine has work, then stop the run (raise LabStopped)
        if it is over its token cap or its time."""
        self.wait_for_serving()
        spent = self.spent_before + engine.num_computed_tokens
        if spent > self.limits.max_tokens:
            self._stop(engine, "token_cap",
                       f"the lesson run was stopped after computing {spent} tokens: a run may "
                       f"compute at most {self.limits.max_tokens} (prompt, recomputed and "
                       "generated tokens); use fewer or shorter prompts, fewer tokens, or a "
                       "larger pool")
        if time.monotonic() >= self.deadline:
            self._stop(engine, "timeout",
                       f"the lesson run was stopped after {self.limits.timeout_s:g} s (the "
                       "limit of one run; it waits while the server serves requests)")

    def wait_for_serving(self) -> None:
        """Sleep while the serving engine has work (up to the run's deadline)."""
        while self.serving_busy() and time.monotonic() < self.deadline:
            time.sleep(YIELD_POLL_S)

    def engine_done(self, engine: LLMEngine) -> None:
        """The run moves on to another engine (a comparison run)."""
        self.spent_before += engine.num_computed_tokens

    @staticmethod
    def _stop(engine: LLMEngine, reason: str, message: str) -> None:
        engine.abort_request(list(engine.unfinished_request_ids()))
        pool = engine.kv.pool
        raise LabStopped(reason, message, pool.num_free_blocks, pool.num_blocks)
