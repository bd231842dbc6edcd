"""A scheduler simulator for tests: no model, the engine's part of a step faked.

Every item that `samples` gets a fake output token through `update_from_output`,
and a request that reached its max_tokens (or max_model_len) is finished, as the
engine does.
"""

from __future__ import annotations

from dataclasses import dataclass

from kvscope.config import SchedulerConfig
from kvscope.kv.kv_manager import KVCacheManager
from kvscope.request import Request, RequestStatus
from kvscope.sampling_params import SamplingParams
from kvscope.sched.scheduler import NewTokens, Schedule, Scheduler

FAKE_TOKEN = 7


@dataclass
class Sim:
    sched: Scheduler
    kv: KVCacheManager
    max_model_len: int
    clock: float = 0.0
    samples: tuple[bool, ...] = ()  # which items of the last step sampled

    def add(self, request_id: str, prompt_len: int, max_tokens: int = 16,
            prompt: list[int] | None = None, priority: int = 0,
            cache_salt: str | None = None) -> Request:
        self.clock += 1.0
        tokens = list(range(100, 100 + prompt_len)) if prompt is None else prompt
        request = Request(request_id, tokens, SamplingParams(max_tokens=max_tokens),
                          arrival_time=self.clock, priority=priority, cache_salt=cache_salt)
        self.sched.add_request(request)
        return request

    def step(self) -> Schedule:
        out = self.sched.schedule()
        self.samples = tuple(s.samples for s in out.scheduled)
        new = [NewTokens(s.request, [FAKE_TOKEN], [None], [None]) for s in out.scheduled
               if s.samples]
        self.sched.update_from_output(out, new, self._stop)
        return out

    def _stop(self, new: NewTokens, index: int) -> RequestStatus | None:
        request = new.request
        if (request.num_output_tokens >= request.sampling_params.max_tokens
                or request.num_tokens >= self.max_model_len):
            return RequestStatus.FINISHED_LENGTH
        return None


def make_sim(num_blocks: int, block_size: int, budget: int, max_num_seqs: int = 8,
             max_model_len: int = 64, threshold: int = 0, caching: bool = False,
             swap_slots: int = 0, mode: str = "recompute", policy: str = "fcfs") -> Sim:
    kv = KVCacheManager(num_blocks, block_size, caching, swap_slots)
    config = SchedulerConfig(max_num_seqs=max_num_seqs, max_num_batched_tokens=budget,
                             long_prefill_token_threshold=threshold, preemption_mode=mode,
                             policy=policy)
    return Sim(Scheduler(config, kv, max_model_len), kv, max_model_len)


def plan(out: Schedule) -> list[tuple[str, int, int]]:
    return [(s.request.request_id, s.start, s.num_tokens) for s in out.scheduled]


def tables(out: Schedule) -> dict[str, list[int]]:
    return {s.request.request_id: s.block_ids for s in out.scheduled}


def ids(requests) -> list[str]:
    return [r.request_id for r in requests]


