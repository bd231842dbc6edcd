"""How the router picks a worker for a request.

- `round_robin`: the next healthy worker in turn.
- `least_load`: the healthy worker with the fewest requests in flight.
- `cache_aware`: the worker whose recent prompts share the longest prefix with this
  one, so that its prefix cache already holds the shared blocks; unless the loads are
  too uneven (then the least loaded), or no worker shares enough of the prompt (then
  the least loaded, which starts caching it). The idea is SGLang's router's; the
  prefixes are compared as text, so it works in front of any server.
"""

from __future__ import annotations

from dataclasses import dataclass

from kvscope.serve.router.workers import Worker

POLICIES = ("round_robin", "least_load", "cache_aware")


@dataclass(frozen=True, slots=True)
class Decision:
    worker: Worker
    reason: str  # round_robin | least_load | prefix | load | no_match
    matched_chars: int = 0


def shared_prefix_len(a: str, b: str) -> int:
    """Length of the longest common prefix (binary search over slice comparisons,
    which run in C)."""
    lo, hi = 0, min(len(a), len(b))
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if a[:mid] == b[:mid]:
            lo = mid
        else:
            hi = mid - 1
    return lo


def least_loaded(workers: list[Worker]) -> Worker:
    return min(workers, key=lambda w: (w.in_flight, w.requests))


class RoundRobin:
    name = "round_robin"

    def __init__(self) -> None:
        self._next = 0

    def choose(self, workers: list[Worker], prompt: str) -> Decision:
        worker = workers[self._next % len(workers)]
        self._next += 1
        return Decision(worker, "round_robin")


class LeastLoad:
    name = "least_load"

    def choose(self, workers: list[Worker], prompt: str) -> Decision:
        return Decision(least_loaded(workers), "least_load")


class CacheAware:
    """`balance_threshold`: in-flight difference between the busiest and the idlest
    worker past which load wins over cache; `min_match`: the share of the prompt a
    worker's recent prompt must share for the cache to decide."""

    name = "cache_aware"

    def __init__(self, balance_threshold: int = 8, min_match: float = 0.5) -> None:
        self.balance_threshold = balance_threshold
        self.min_match = min_match

    def choose(self, workers: list[Worker], prompt: str) -> Decision:
        loads = [w.in_flight for w in workers]
        if max(loads) - min(loads) > self.balance_threshold:
            decision = Decision(least_loaded(workers), "load")
        else:
            decision = self._by_prefix(workers, prompt)
        decision.worker.recent.append(prompt)
        return decision

    def _by_prefix(self, workers: list[Worker], prompt: str) -> Decision:
        best, matched = None, 0
        for worker in workers:
            length = max((shared_prefix_len(prompt, p) for p in worker.recent), default=0)
            if length > matched or (length == matched and best is not None
                                    and worker.in_flight < best.in_flight):
                best, matched = worker, length
        if best is None or matched < self.min_match * len(prompt) or matched == 0:
            return Decision(least_loaded(workers), "no_match", matched)
        return Decision(best, "prefix", matched)


def make_policy(name: str) -> RoundRobin | LeastLoad | CacheAware:
    if name == "round_robin":
        return RoundRobin()
    if name == "least_load":
        return LeastLoad()
    if name == "cache_aware":
        return CacheAware()
    raise ValueError(f"unknown routing policy {name!r}; choose one of {', '.join(POLICIES)}")
