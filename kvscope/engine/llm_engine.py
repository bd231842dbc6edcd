"""The step loop: schedule → execute → sample → update.

LLMEngine owns the scheduler, the KV cache manager, the model runner and the
sampler, and is the API the offline LLM class and the server drive:
add_request / step / abort_request / has_unfinished_requests / get_stats.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from kvscope.config import ConfigError, EngineConfig
from kvscope.engine.detokenizer import IncrementalDetokenizer
from kvscope.events import (
    Emitter,
    EngineStarted,
    EventSink,
    RequestAborted,
    RequestArrived,
    RequestFinished,
    ScheduledChunk,
    Snapshot,
    StepBegin,
    StepEnd,
    TokenEmitted,
)
from kvscope.kv.fragmentation import Fragmentation, measure
from kvscope.kv.kv_manager import KVCacheManager, blocks_needed
from kvscope.model.loader import LoadedModel, load_model
from kvscope.outputs import CompletionOutput, Logprob, RequestMetrics, RequestOutput
from kvscope.request import Request, RequestStatus
from kvscope.runner.model_runner import ModelRunner
from kvscope.sample.sampler import Sampler, SamplerOutput
from kvscope.sampling_params import SamplingParams
from kvscope.sched.scheduler import Scheduler, SchedulerOutput

MAX_DEFAULT_MODEL_LEN = 8192
MAX_LOGPROBS = 20  # most alternatives returned per token (vLLM's default cap)


class RequestError(ValueError):
    """A request is invalid (empty prompt, too long, duplicate id, ...)."""


@dataclass(slots=True)
class _Tracked:
    """Engine-side state of one request that the scheduler does not need."""

    request: Request
    detok: IncrementalDetokenizer | None
    logprobs: list[dict[int, Logprob]] | None
    cumulative_logprob: float | None


@dataclass(slots=True)
class StepTimings:
    schedule_s: float = 0.0
    forward_s: float = 0.0
    sample_s: float = 0.0
    update_s: float = 0.0


class LLMEngine:
    def __init__(self, config: EngineConfig, sink: EventSink | None = None,
                 loaded: LoadedModel | None = None, load_progress: bool = False) -> None:
        self.config = config
        self.events = Emitter(sink)
        self.loaded = loaded or load_model(config.model, config.dtype, load_progress)
        self.tokenizer = self.loaded.tokenizer
        arch = self.loaded.arch
        self.max_model_len = _resolve_max_model_len(config.max_model_len,
                                                    arch.max_position_embeddings)
        block_size = config.cache.block_size
        bytes_per_block = arch.kv_bytes_per_token(config.dtype.itemsize) * block_size
        self.num_blocks = _num_blocks(config.cache.budget_bytes(), bytes_per_block,
                                      self.max_model_len, block_size)
        num_swap_blocks = 0
        if config.scheduler.preemption_mode == "swap":
            num_swap_blocks = config.cache.swap_space // bytes_per_block
        self.kv = KVCacheManager(self.num_blocks, block_size, config.cache.enable_prefix_caching,
                                 num_swap_blocks, self.events)
        self.scheduler = Scheduler(config.scheduler, self.kv, self.max_model_len, self.events)
        self.runner = ModelRunner(self.loaded.model, self.num_blocks, block_size,
                                  self.max_model_len, config.dtype, num_swap_blocks)
        self.eos_token_ids = _eos_ids(arch.eos_token_ids, self.tokenizer)
        self.sampler = Sampler(config.seed, self.eos_token_ids)
        self._tracked: dict[str, _Tracked] = {}
        self._ids = itertools.count()
        self.last_timings = StepTimings()
        self.num_generated_tokens = 0
        self.num_computed_tokens = 0  # every token the model processed, recomputes included
        self.last_fragmentation = Fragmentation()  # after the latest step
        self.run_fragmentation = Fragmentation()  # summed over steps (slot-steps)
        if self.events.enabled:
            self.events.emit(self.describe())

    # -- requests -----------------------------------------------------------------

    def tokenize(self, prompt: str | Sequence[int]) -> tuple[str | None, list[int]]:
        if isinstance(prompt, str):
            if not prompt:
                raise RequestError("prompt must not be empty")
            return prompt, list(self.tokenizer.encode(prompt, add_special_tokens=True))
        ids = list(prompt)
        if not ids:
            raise RequestError("prompt must not be empty (got no token ids)")
        vocab = self.loaded.arch.vocab_size
        if any(not isinstance(t, int) or not 0 <= t < vocab for t in ids):
            raise RequestError(f"prompt token ids must be integers in [0, {vocab})")
        return None, ids

    def add_request(self, request_id: str | None, prompt: str | Sequence[int],
                    params: SamplingParams | None = None,
                    arrival_time: float | None = None, priority: int = 0,
                    cache_salt: str | None = None) -> str:
        """Queue a request. `priority` matters under the priority policy (lower runs
        first); requests with different `cache_salt` never share cached blocks."""
        params = params or SamplingParams()
        request_id = str(next(self._ids)) if request_id is None else request_id
        if request_id in self._tracked:
            raise RequestError(f"request_id {request_id!r} is already in use")
        self._check_vocab_limits(params)
        text, ids = self.tokenize(prompt)
        if len(ids) >= self.max_model_len:
            raise RequestError(
                f"prompt has {len(ids)} tokens; max_model_len is {self.max_model_len} "
                "(the prompt plus at least one generated token must fit)")
        if not isinstance(priority, int):
            raise RequestError(f"priority must be an integer; got {priority!r}")
        if cache_salt is not None and not isinstance(cache_salt, str):
            raise RequestError(f"cache_salt must be a string; got {cache_salt!r}")
        request = Request(request_id, ids, params, prompt=text,
                          arrival_time=time.monotonic() if arrival_time is None
                          else arrival_time, priority=priority, cache_salt=cache_salt)
        detok = None
        if params.detokenize:
            detok = IncrementalDetokenizer(self.tokenizer, ids, params.skip_special_tokens,
                                           params.stop_strings, params.include_stop_str_in_output)
        wants_logprobs = params.logprobs is not None
        self._tracked[request_id] = _Tracked(request, detok, [] if wants_logprobs else None,
                                             0.0 if wants_logprobs else None)
        self.scheduler.add_request(request)
        if self.events.enabled:
            self.events.emit(RequestArrived(request_id=request_id, prompt_token_ids=ids,
                                            prompt=text, max_tokens=params.max_tokens,
                                            priority=priority))
        return request_id

    def _check_vocab_limits(self, params: SamplingParams) -> None:
        vocab = self.loaded.arch.vocab_size
        bad = [t for t in params.stop_token_ids or () if t >= vocab]
        if bad:
            raise RequestError(f"stop_token_ids {bad} are outside the vocabulary [0, {vocab})")
        if params.logprobs is not None and params.logprobs > MAX_LOGPROBS:
            raise RequestError(f"logprobs must be <= {MAX_LOGPROBS}; got {params.logprobs}")

    def abort_request(self, request_ids: str | Sequence[str]) -> None:
        ids = [request_ids] if isinstance(request_ids, str) else list(request_ids)
        for request_id in ids:
            tracked = self._tracked.pop(request_id, None)
            if tracked is None or tracked.request.is_finished:
                continue
            self.scheduler.finish(tracked.request, RequestStatus.FINISHED_ABORTED)
            self.sampler.forget(request_id)
            if self.events.enabled:
                self.events.emit(RequestAborted(request_id=request_id))

    def has_unfinished_requests(self) -> bool:
        return self.scheduler.has_unfinished_requests()

    def reset_prefix_cache(self) -> int:
        """Forget every cached prefix block; returns how many were dropped."""
        return self.kv.reset_prefix_cache()

    # -- one step -----------------------------------------------------------------

    def step(self) -> list[RequestOutput]:
        """Run one engine step; returns outputs of the requests that made progress."""
        t0 = time.perf_counter()
        self.events.step = self.scheduler.num_steps
        if self.events.enabled:
            self.events.emit(StepBegin())
        sched = self.scheduler.schedule()
        t1 = time.perf_counter()
        if sched.is_empty:
            self.events.step = self.scheduler.num_steps
            return []
        result = self.runner.execute(sched)
        t2 = time.perf_counter()
        sampled = self.sampler.sample(result.logits, [s.request for s in result.sampled])
        t3 = time.perf_counter()
        outputs = self._update(sched, [s.request for s in result.sampled], sampled)
        self.last_fragmentation = measure(self.kv, self.scheduler.running, self.max_model_len)
        self.run_fragmentation.add(self.last_fragmentation)
        t4 = time.perf_counter()
        self.last_timings = StepTimings(t1 - t0, t2 - t1, t3 - t2, t4 - t3)
        self._emit_step(sched)
        self.events.step = self.scheduler.num_steps  # what happens next belongs to the next step
        return outputs

    def _update(self, sched: SchedulerOutput, requests: list[Request],
                sampled: SamplerOutput) -> list[RequestOutput]:
        self.scheduler.update_after_step(sched)
        self.num_computed_tokens += sched.num_tokens
        now = time.monotonic()
        outputs = []
        for row, request in enumerate(requests):
            tracked = self._tracked[request.request_id]
            token = sampled.token_ids[row]
            request.append_output_token(token)
            self.num_generated_tokens += 1
            if request.first_token_time is None:
                request.first_token_time = now
            if tracked.logprobs is not None:
                tracked.logprobs.append(sampled.logprobs[row] or {})
                tracked.cumulative_logprob += sampled.sampled_logprobs[row] or 0.0
            text_before = len(tracked.detok.text) if tracked.detok else 0
            status = self._check_stop(request, tracked, token)
            if self.events.enabled:
                self._emit_token(tracked, token, text_before, sampled.sampled_logprobs[row])
            if status is not None:
                self.scheduler.finish(request, status)
                self.sampler.forget(request.request_id)
                self._tracked.pop(request.request_id)
                if self.events.enabled:
                    self.events.emit(RequestFinished(
                        request_id=request.request_id, reason=status.value,
                        num_output_tokens=request.num_output_tokens))
            outputs.append(self._output(tracked))
        return outputs

    def _check_stop(self, request: Request, tracked: _Tracked,
                    token: int) -> RequestStatus | None:
        """Decide whether the new token ends the request. Stops count only once
        min_tokens are out; a stop token's text is left out of the output unless
        include_stop_str_in_output (as in vLLM)."""
        params = request.sampling_params
        may_stop = request.num_output_tokens >= params.min_tokens
        stop_token = may_stop and (
            (not params.ignore_eos and token in self.eos_token_ids)
            or token in (params.stop_token_ids or ()))
        if tracked.detok is not None and (not stop_token or params.include_stop_str_in_output):
            stop = tracked.detok.append(token, check_stop=may_stop)
            if stop is not None:
                request.stop_reason = stop
                return RequestStatus.FINISHED_STOPPED
        if stop_token:
            if token not in self.eos_token_ids or params.ignore_eos:
                request.stop_reason = token
            return RequestStatus.FINISHED_STOPPED
        if params.max_tokens is not None and request.num_output_tokens >= params.max_tokens:
            return RequestStatus.FINISHED_LENGTH
        if request.num_tokens >= self.max_model_len:
            return RequestStatus.FINISHED_LENGTH
        return None

    def _output(self, tracked: _Tracked) -> RequestOutput:
        request = tracked.request
        finished = request.is_finished
        text = tracked.detok.visible_text(finished) if tracked.detok else ""
        completion = CompletionOutput(
            index=0, text=text, token_ids=list(request.output_token_ids),
            cumulative_logprob=tracked.cumulative_logprob, logprobs=tracked.logprobs,
            finish_reason=request.finish_reason, stop_reason=request.stop_reason)
        metrics = RequestMetrics(request.arrival_time, request.first_scheduled_time,
                                 request.first_token_time, request.finished_time,
                                 request.num_preemptions)
        return RequestOutput(request.request_id, request.prompt, request.prompt_token_ids,
                             [completion], finished, metrics)

    # -- introspection ------------------------------------------------------------

    def get_stats(self) -> dict[str, Any]:
        pool = self.kv.pool
        sched = self.scheduler
        queried = self.kv.num_queried_tokens
        return {
            "num_running": len(sched.running),
            "num_waiting": len(sched.waiting),
            "num_swapped": len(sched.swapped),
            "num_blocks": pool.num_blocks,
            "num_used_blocks": pool.num_used_blocks,
            "num_free_blocks": pool.num_free_blocks,
            "kv_cache_usage": pool.usage(),
            "num_preemptions": sched.num_preemptions,
            "num_swap_outs": sched.num_swap_outs,
            "num_swap_ins": sched.num_swap_ins,
            "num_swap_fallbacks": sched.num_swap_fallbacks,
            "num_free_swap_slots": self.kv.swap_slots.num_free,
            "prefix_cache_queries": queried,
            "prefix_cache_hits": self.kv.num_hit_tokens,
            "prefix_cache_hit_rate": self.kv.num_hit_tokens / queried if queried else 0.0,
            "num_cached_blocks": pool.num_cached_blocks,
            "num_evictions": pool.num_evictions,
            "num_steps": sched.num_steps,
            "num_shared_blocks": pool.num_shared_blocks,
            "paged_waste": self.run_fragmentation.paged_waste,
            "contiguous_waste": self.run_fragmentation.contiguous_waste,
            "contiguous_own_waste": self.run_fragmentation.contiguous_own_waste,
            "num_generated_tokens": self.num_generated_tokens,
            "num_computed_tokens": self.num_computed_tokens,
        }

    # -- events -------------------------------------------------------------------

    def describe(self) -> EngineStarted:
        """The engine's shape as an event (the first one of every recording)."""
        arch = self.loaded.arch
        config = self.config
        return EngineStarted(
            model=self.loaded.path.name, num_layers=arch.num_layers,
            num_kv_heads=arch.num_kv_heads, head_dim=arch.head_dim,
            dtype=str(config.dtype).removeprefix("torch."),
            kv_bytes_per_token=arch.kv_bytes_per_token(config.dtype.itemsize),
            block_size=self.kv.block_size, num_blocks=self.num_blocks,
            num_swap_slots=self.kv.swap_slots.num_slots,
            max_model_len=self.max_model_len, max_num_seqs=config.scheduler.max_num_seqs,
            max_num_batched_tokens=config.scheduler.max_num_batched_tokens,
            enable_prefix_caching=self.kv.enable_caching,
            preemption_mode=config.scheduler.preemption_mode, policy=config.scheduler.policy)

    def snapshot(self) -> Snapshot:
        """The whole KV and request state now, for a listener joining mid-run."""
        sched = self.scheduler
        requests = []
        for queue in (sched.running, sched.waiting, sched.swapped):
            for request in queue:
                requests.append({
                    "request_id": request.request_id, "status": request.status.value,
                    "prompt_token_ids": request.prompt_token_ids,
                    "output_token_ids": request.output_token_ids,
                    "num_computed_tokens": request.num_computed_tokens,
                    "priority": request.priority})
        return Snapshot(
            step=sched.num_steps, time=self.events.elapsed(),
            engine=self.describe().to_dict(),
            blocks=[[b.ref_cnt, b.block_hash.hex() if b.block_hash else None]
                    for b in self.kv.pool.blocks],
            tables=self.kv.all_block_ids(),
            swapped=self.kv.swapped_slots(), requests=requests,
            counters={"prefix_cache_queries": self.kv.num_queried_tokens,
                      "prefix_cache_hits": self.kv.num_hit_tokens,
                      "num_preemptions": sched.num_preemptions,
                      "num_evictions": self.kv.pool.num_evictions,
                      "num_steps": sched.num_steps})

    def _emit_token(self, tracked: _Tracked, token: int, text_before: int,
                    logprob: float | None) -> None:
        text = tracked.detok.text[text_before:] if tracked.detok else ""
        self.events.emit(TokenEmitted(request_id=tracked.request.request_id, token_id=token,
                                      text=text, logprob=logprob))

    def _emit_step(self, sched: SchedulerOutput) -> None:
        if not self.events.enabled:
            return
        t = self.last_timings
        self.events.emit(StepEnd(
            batch=[ScheduledChunk(request_id=s.request.request_id, start=s.start,
                                  num_tokens=s.num_tokens,
                                  phase="decode" if s.is_decode else "prefill")
                   for s in sched.scheduled],
            num_tokens=sched.num_tokens, schedule_ms=round(t.schedule_s * 1e3, 3),
            forward_ms=round(t.forward_s * 1e3, 3), sample_ms=round(t.sample_s * 1e3, 3),
            update_ms=round(t.update_s * 1e3, 3), num_free_blocks=self.kv.num_free_blocks,
            num_running=len(self.scheduler.running), num_waiting=len(self.scheduler.waiting),
            num_swapped=len(self.scheduler.swapped),
            fragmentation=self.last_fragmentation.as_dict()))


def _resolve_max_model_len(requested: int | None, model_limit: int) -> int:
    if requested is None:
        return min(model_limit, MAX_DEFAULT_MODEL_LEN)
    if requested > model_limit:
        raise ConfigError(
            f"max_model_len {requested} exceeds the model's context length {model_limit}")
    return requested


def _num_blocks(budget: int, bytes_per_block: int, max_model_len: int, block_size: int) -> int:
    num_blocks = budget // bytes_per_block
    needed = blocks_needed(max_model_len, block_size)
    if num_blocks < needed:
        raise ConfigError(
            f"kv_cache_memory of {budget} bytes holds {num_blocks} blocks of {block_size} "
            f"tokens ({bytes_per_block} bytes each), but one request of max_model_len "
            f"{max_model_len} needs {needed} blocks ({needed * bytes_per_block} bytes); "
            "raise kv_cache_memory or lower max_model_len")
    return num_blocks


def _eos_ids(model_eos: tuple[int, ...], tokenizer: Any) -> list[int]:
    ids = set(model_eos)
    if getattr(tokenizer, "eos_token_id", None) is not None:
        ids.add(tokenizer.eos_token_id)
    return sorted(ids)
