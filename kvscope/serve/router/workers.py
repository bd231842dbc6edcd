"""The servers behind the router: where each is, whether it answers, how busy it is,
and the prompts it saw last (what its prefix cache probably still holds)."""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from dataclasses import dataclass, field

import httpx

RECENT_PROMPTS = 256  # per worker: the prompts a cache-aware choice compares against
HEALTH_TIMEOUT_S = 2.0


@dataclass(slots=True)
class Worker:
    url: str  # base URL, e.g. http://10.0.0.2:8000 (the router adds /v1/...)
    healthy: bool = True
    in_flight: int = 0
    requests: int = 0
    failures: int = 0
    recent: deque[str] = field(default_factory=lambda: deque(maxlen=RECENT_PROMPTS))

    def mark_down(self) -> None:
        self.healthy = False
        self.failures += 1
        self.recent.clear()  # a restarted server starts with an empty cache

    def snapshot(self) -> dict[str, object]:
        return {"url": self.url, "healthy": self.healthy, "in_flight": self.in_flight,
                "requests": self.requests, "failures": self.failures}


class WorkerPool:
    """The workers, and a loop that asks each for /health every `interval_s` so that
    one marked down comes back once it answers again."""

    def __init__(self, urls: list[str], headers: dict[str, str] | None = None,
                 interval_s: float = 2.0) -> None:
        if not urls:
            raise ValueError("the router needs at least one --worker URL")
        self.workers = [Worker(url.rstrip("/")) for url in urls]
        self.headers = headers or {}
        self.interval_s = interval_s
        self._task: asyncio.Task[None] | None = None

    def healthy(self) -> list[Worker]:
        return [w for w in self.workers if w.healthy]

    async def check(self, client: httpx.AsyncClient) -> None:
        results = await asyncio.gather(*(self._answers(client, w) for w in self.workers))
        for worker, ok in zip(self.workers, results, strict=True):
            if ok and not worker.healthy:
                worker.healthy = True
            elif not ok and worker.healthy:
                worker.mark_down()

    async def _answers(self, client: httpx.AsyncClient, worker: Worker) -> bool:
        try:
            response = await client.get(f"{worker.url}/health", headers=self.headers,
                                        timeout=HEALTH_TIMEOUT_S)
        except httpx.HTTPError:
            return False
        return response.status_code == 200

    def start(self, client: httpx.AsyncClient) -> None:
        async def loop() -> None:
            while True:
                await self.check(client)
                await asyncio.sleep(self.interval_s)

        self._task = asyncio.create_task(loop())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
