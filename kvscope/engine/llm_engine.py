"""The step loop: schedule → execute → sample → update.

LLMEngine owns the scheduler, the KV cache manager, the model runner and the
sampler, and is the API the offline LLM class and the server drive:
add_request / step / abort_request / has_unfinished_requests / get_stats.
"""

from __future__ import annotations

import itertools
import time
import uuid
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from kvscope.config import EngineConfig
from kvscope.engine import reports
from kvscope.engine.beam_search import BeamSearches
from kvscope.engine.detokenizer import IncrementalDetokenizer
from kvscope.engine.sequence_group import SequenceGroup, TrackedRequest
from kvscope.engine.sizing import eos_ids, num_blocks, resolve_max_model_len
from kvscope.engine.speculation import Speculator, make_proposer
from kvscope.engine.stop import check_stop
from kvscope.engine.validation import (
    check_request_fields,
    check_sampling_limits,
    tokenize_prompt,
)
from kvscope.events import (
    DraftsVerified,
    Emitter,
    EngineStarted,
    EventSink,
    RequestAborted,
    RequestArrived,
    RequestFinished,
    Snapshot,
    StepBegin,
    TokenEmitted,
)
from kvscope.executor.factory import make_executor
from kvscope.kv.fragmentation import Fragmentation, measure
from kvscope.kv.kv_manager import KVCacheManager
from kvscope.kv_transfer import make_connector
from kvscope.kv_transfer.base import KVConnector
from kvscope.model.loader import LoadedModel, load_model
from kvscope.outputs import RequestMetrics, RequestOutput
from kvscope.request import Request, RequestError, RequestStatus
from kvscope.sample.sampler import Sampler, SamplerOutput, prompt_logprobs
from kvscope.sampling_params import BeamSearchParams, SamplingParams
from kvscope.sched.output import ModelRunnerOutput, PromptLogits
from kvscope.sched.scheduler import NewTokens, Schedule, Scheduler
from kvscope.speculative.proposer import Proposer


@dataclass(slots=True)
class InFlight:
    """A batch the pipeline is computing: its schedule, what scheduling it took, when it
    was submitted, and how many batches were in flight then (itself included)."""

    sched: Schedule
    schedule_s: float
    submitted: float
    depth: int


@dataclass(slots=True)
class StepTimings:
    schedule_s: float = 0.0
    forward_s: float = 0.0
    sample_s: float = 0.0
    update_s: float = 0.0


class LLMEngine:
    def __init__(self, config: EngineConfig, sink: EventSink | None = None,
                 loaded: LoadedModel | None = None, load_progress: bool = False,
                 draft_loaded: LoadedModel | None = None) -> None:
        """`loaded` / `draft_loaded` reuse a target / draft model already in memory."""
        self.config = config
        self.events = Emitter(sink)
        self.loaded = loaded or load_model(config.model, config.dtype, load_progress,
                                           config.load_quantization(),
                                           config.quantized_activations)
        self.tokenizer = self.loaded.tokenizer
        arch = self.loaded.arch
        self.max_model_len = resolve_max_model_len(config.max_model_len,
                                                    arch.max_position_embeddings)
        block_size = config.cache.block_size
        bytes_per_block = arch.kv_bytes_per_token(config.dtype.itemsize) * block_size
        self.num_blocks = num_blocks(config.cache.budget_bytes(), bytes_per_block,
                                      self.max_model_len, block_size)
        num_swap_blocks = 0
        if config.scheduler.preemption_mode == "swap":
            num_swap_blocks = config.cache.swap_space // bytes_per_block
        self.kv = KVCacheManager(self.num_blocks, block_size, config.cache.enable_prefix_caching,
                                 num_swap_blocks, self.events)
        self.scheduler = Scheduler(config.scheduler, self.kv, self.max_model_len, self.events)
        self.scheduler.micro_batches = config.pipeline_parallel_size
        self.executor, self.runner = make_executor(
            config, self.loaded, self.num_blocks, self.max_model_len, num_swap_blocks,
            load_progress)  # the runner: this process's, at tp=1
        self.connector = self._connector()  # disaggregated prefill/decode, or None
        self._held: dict[str, Request] = {}  # finished, blocks kept for a consumer
        self.eos_token_ids = eos_ids(arch.eos_token_ids, self.tokenizer)
        self.sampler = Sampler(config.seed, self.eos_token_ids)
        self.beams = BeamSearches(self.kv, self.scheduler, self.events, self.eos_token_ids,
                                  lambda ids: self.tokenizer.decode(ids, skip_special_tokens=True))
        self.speculator: Speculator | None = None
        if config.speculative is not None:
            self.speculator = Speculator(config.speculative, self._proposer(draft_loaded),
                                         self.sampler, self.max_model_len)
        self._tracked: dict[str, TrackedRequest] = {}
        self._in_flight: deque[InFlight] = deque()  # pipelined batches not yet collected
        self._ids = itertools.count()
        self.last_timings = StepTimings()
        self._step_time = 0.0  # monotonic time of the current step's update
        self.num_generated_tokens = 0
        self.num_computed_tokens = 0  # every token the model processed, recomputes included
        self.num_computed_prompt_tokens = 0  # of those, prompt tokens (a consumer's: none)
        self.last_fragmentation = Fragmentation()  # after the latest step
        self.run_fragmentation = Fragmentation()  # summed over steps (slot-steps)
        if self.events.enabled:
            self.events.emit(self.describe())

    def shutdown(self) -> None:
        """Stop the executor's worker processes (tensor parallelism) and the KV
        connector's server; idempotent."""
        self.executor.shutdown()
        if self.connector is not None:
            self.connector.shutdown()

    # -- disaggregated prefill/decode ---------------------------------------------------

    def _connector(self) -> KVConnector | None:
        if self.config.kv_transfer is None:
            return None
        assert self.runner is not None  # the config allows one process only
        connector = make_connector(self.config.kv_transfer, uuid.uuid4().hex[:12], self.events)
        connector.register_kv_caches(self.runner.kv_pool)
        self.scheduler.hold_blocks = self._hold_for_transfer
        return connector

    def _hold_for_transfer(self, request: Request) -> bool:
        """A finished request: let the connector save (or hold) its K/V for a consumer."""
        assert self.connector is not None
        if request.status == RequestStatus.FINISHED_ABORTED:
            return False
        hold, result = self.connector.request_finished(
            request, self.kv.block_ids(request.request_id))
        request.kv_transfer_result = result
        if hold:
            self._held[request.request_id] = request
        return hold

    def kv_transfer_pending(self) -> bool:
        """Whether blocks wait for a consumer (the server then keeps calling
        `release_transferred` while idle)."""
        return self.connector is not None and self.connector.has_held

    def release_transferred(self) -> None:
        """Free the blocks of held requests that a consumer took or nobody took in time."""
        if self.connector is not None:
            for request_id in self.connector.get_finished():
                self.kv.free(self._held.pop(request_id))

    def _admit_remote_prefills(self) -> list[RequestOutput]:
        """Load the K/V of waiting requests whose prompts a producer computed, in queue
        order while the pool has room; each starts with the producer's first token."""
        assert self.connector is not None
        outputs = []
        for request in [r for r in self.scheduler.waiting if r.awaits_remote_kv]:
            first = (request.kv_transfer_params or {}).get("first_token_id")
            if not isinstance(first, int) or not 0 <= first < self.loaded.arch.vocab_size:
                self.connector.refuse(request, f"first_token_id {first!r} is not a token id")
                continue
            if self.connector.get_num_new_matched_tokens(request, 0) == 0:
                continue  # refused (another prompt): an ordinary request now
            outcome = self.scheduler.admit_remote(request, self.connector.start_load_kv)
            if outcome == "no_room":
                break
            if outcome == "admitted":
                outputs.append(self._first_token(request, first))
        return outputs

    def _first_token(self, request: Request, token: int) -> RequestOutput:
        """The producer's sampled token, as if this engine had sampled it."""
        self._step_time = time.monotonic()
        tracked = self._tracked[request.request_id]
        request.append_output_token(token)
        status = self._on_token(NewTokens(request, [token], [None], [None]), 0)
        if status is not None:
            self.scheduler.finish(request, status)
            self._finished(request)
        return self._output(tracked)

    # -- speculative decoding -----------------------------------------------------

    def _proposer(self, draft_loaded: LoadedModel | None) -> Proposer:
        assert self.config.speculative is not None
        return make_proposer(self.config.speculative, self.loaded, self.config.dtype,
                             self.executor, self.kv, self.sampler, self.max_model_len,
                             self.config.seed, draft_loaded)

    def _propose(self) -> None:
        """Draft tokens for the running requests that may have them, before the step is
        scheduled: none for sequences of a group or a beam search (they share blocks
        and pick tokens together)."""
        assert self.speculator is not None
        self.speculator.begin_step(len(self.scheduler.running))
        self.speculator.propose([r for r in self.scheduler.running
                                 if (t := self._tracked.get(r.request_id)) is not None
                                 and t.group is None])

    # -- requests -----------------------------------------------------------------

    def tokenize(self, prompt: str | Sequence[int]) -> tuple[str | None, list[int]]:
        return tokenize_prompt(self.tokenizer, self.loaded.arch.vocab_size, prompt)

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
        check_sampling_limits(params, self.loaded.arch.vocab_size)
        if params.bad_words:
            params.resolve_bad_words(self.tokenizer)
        text, ids = self.tokenize(prompt)
        check_request_fields(len(ids), self.max_model_len, priority, cache_salt)
        request = Request(request_id, ids, params, prompt=text,
                          arrival_time=time.monotonic() if arrival_time is None
                          else arrival_time, priority=priority, cache_salt=cache_salt,
                          kv_transfer_params=params.kv_transfer_params)
        if request.kv_transfer_params is not None and (
                self.connector is None or params.num_sequences > 1):
            raise RequestError("kv_transfer_params need a server started with "
                               "--kv-transfer-config, and a single sequence (n = 1)")
        tracked = self._track(request)
        if params.prompt_logprobs is not None:
            tracked.prompt_logprobs = [None]  # the first token has nothing before it
        if params.num_sequences > 1:
            tracked.group = SequenceGroup(params, [tracked])
        self.scheduler.add_request(request)
        if self.events.enabled:
            self.events.emit(RequestArrived(request_id=request_id, prompt_token_ids=ids,
                                            prompt=text, max_tokens=params.max_tokens,
                                            priority=priority))
        return request_id

    def add_beam_request(self, request_id: str | None, prompt: str | Sequence[int],
                         params: BeamSearchParams) -> str:
        """Queue a beam search; its one output (the finished beams, best first) comes
        from `step()` when the search ends."""
        request_id = str(next(self._ids)) if request_id is None else request_id
        if request_id in self._tracked or request_id in self.beams.groups:
            raise RequestError(f"request_id {request_id!r} is already in use")
        text, ids = self.tokenize(prompt)
        if len(ids) + params.max_tokens > self.max_model_len:
            raise RequestError(f"prompt ({len(ids)} tokens) + max_tokens ({params.max_tokens}) "
                               f"exceeds max_model_len {self.max_model_len}")
        # the group picks every token; this request only carries the beam's KV
        root = Request(request_id, ids, SamplingParams(temperature=0.0, max_tokens=None,
                                                       ignore_eos=True, detokenize=False),
                       prompt=text)
        self.scheduler.add_request(root)
        self.beams.add(root, params)
        if self.events.enabled:
            self.events.emit(RequestArrived(request_id=request_id, prompt_token_ids=ids,
                                            prompt=text, max_tokens=params.max_tokens))
        return request_id

    def _track(self, request: Request) -> TrackedRequest:
        params = request.sampling_params
        detok = None
        if params.detokenize:
            detok = IncrementalDetokenizer(self.tokenizer, request.all_token_ids,
                                           params.skip_special_tokens, params.stop_strings,
                                           params.include_stop_str_in_output)
        wants_logprobs = params.logprobs is not None
        ranks = params.num_sequences > params.n  # best_of ranks by cumulative logprob
        tracked = TrackedRequest(request, detok, [] if wants_logprobs else None,
                                 0.0 if wants_logprobs or ranks else None)
        self._tracked[request.request_id] = tracked
        return tracked

    def abort_request(self, request_ids: str | Sequence[str]) -> list[str]:
        """Abort these requests (unknown or finished ids are ignored); returns the ids
        that were still unfinished and are now aborted."""
        ids = [request_ids] if isinstance(request_ids, str) else list(request_ids)
        aborted = []
        for request_id in ids:
            if self.beams.abort(request_id):
                aborted.append(request_id)
                continue
            tracked = self._tracked.get(request_id) or self._unfinished_member_of(request_id)
            if tracked is None:
                continue
            members = tracked.group.members if tracked.group else [tracked]
            for member in members:
                self._abort_one(member.request)
            aborted.append(request_id)
        return aborted

    def _unfinished_member_of(self, request_id: str) -> TrackedRequest | None:
        """A running sequence of the group `request_id` (its first sequence may have
        finished before the others)."""
        return next((t for t in self._tracked.values()
                     if t.group is not None and t.group.root.request_id == request_id), None)

    def unfinished_request_ids(self) -> list[str]:
        """The ids `add_request` and `add_beam_request` gave that have not finished."""
        roots = {t.group.root.request_id if t.group else request_id: None
                 for request_id, t in self._tracked.items()}
        return [*roots, *self.beams.groups]

    def _abort_one(self, request: Request) -> None:
        self._tracked.pop(request.request_id, None)
        if request.is_finished:
            return
        self.scheduler.finish(request, RequestStatus.FINISHED_ABORTED)
        self._forget(request.request_id)
        if self.events.enabled:
            self.events.emit(RequestAborted(request_id=request.request_id))

    def _forget(self, request_id: str) -> None:
        self.sampler.forget(request_id)
        if self.speculator is not None:
            self.speculator.forget(request_id)

    def has_unfinished_requests(self) -> bool:
        return self.scheduler.has_unfinished_requests() or bool(self._in_flight)

    def reset_prefix_cache(self) -> int:
        """Forget every cached prefix block; returns how many were dropped."""
        return self.kv.reset_prefix_cache()

    # -- one step -----------------------------------------------------------------

    def step(self) -> list[RequestOutput]:
        """Run one engine step; returns outputs of the requests that made progress.
        With pipeline stages a step may only start a batch (the outputs come when the
        pipeline hands its oldest batch back, up to `pipeline_parallel_size` later).
        With a KV connector, blocks a consumer took are freed and waiting requests
        whose prompts a producer computed are loaded first."""
        if self.connector is not None:
            self.release_transferred()
            loaded = self._admit_remote_prefills()
            return loaded + self._step()
        if self.config.pipeline_parallel_size > 1:
            return self._pipelined_step()
        return self._step()

    def _step(self) -> list[RequestOutput]:
        t0 = time.perf_counter()
        sched = self._schedule()
        t1 = time.perf_counter()
        if not sched.has_work:
            self.events.step = self.scheduler.num_steps
            return []
        result = self.executor.execute(sched.output())
        return self._finish_step(sched, result, t1 - t0, t1)

    def _schedule(self) -> Schedule:
        self.events.step = self.scheduler.num_steps
        if self.events.enabled:
            self.events.emit(StepBegin())
        if self.speculator is not None:
            self._propose()
        return self.scheduler.schedule()

    def _pipelined_step(self) -> list[RequestOutput]:
        """The batch queue: schedule a batch of requests in no unfinished batch and
        start it; collect the oldest batch once the pipeline is full, or when nothing
        new could start."""
        t0 = time.perf_counter()
        sched = self._schedule()
        t1 = time.perf_counter()
        if sched.has_work:
            self.executor.submit(sched.output())
            self.scheduler.in_flight.update(s.request.request_id for s in sched.scheduled)
            self._in_flight.append(InFlight(sched, t1 - t0, t1, len(self._in_flight) + 1))
        if not self._in_flight or (
                sched.has_work and len(self._in_flight) < self.config.pipeline_parallel_size):
            self.events.step = self.scheduler.num_steps
            return []
        batch = self._in_flight.popleft()
        result = self.executor.collect()
        self.scheduler.in_flight.difference_update(
            s.request.request_id for s in batch.sched.scheduled)
        return self._finish_step(batch.sched, result, batch.schedule_s, batch.submitted,
                                 batch.depth)

    def _finish_step(self, sched: Schedule, result: ModelRunnerOutput, schedule_s: float,
                     submitted: float, in_flight: int = 1) -> list[RequestOutput]:
        """Sample from a step's logits and apply its results; its events carry its step."""
        self.events.step = sched.step
        t2 = time.perf_counter()
        self._record_prompt_logprobs(result.prompt_logits)
        logits, requests, verified = self._route_rows(sched, result)
        sampled = self.sampler.sample(logits, requests) if requests else SamplerOutput([], [], [])
        t3 = time.perf_counter()
        new_tokens = [NewTokens(r, [t], [lp], [slp]) for r, t, lp, slp in zip(
            requests, sampled.token_ids, sampled.logprobs, sampled.sampled_logprobs, strict=True)]
        outputs = self._update(sched, new_tokens + verified)
        outputs += self.beams.advance_ready()
        self.last_fragmentation = measure(self.kv, self.scheduler.running, self.max_model_len)
        self.run_fragmentation.add(self.last_fragmentation)
        t4 = time.perf_counter()
        self.last_timings = StepTimings(schedule_s, t2 - submitted, t3 - t2, t4 - t3)
        if self.events.enabled:
            self.events.emit(reports.step_end(self, sched, in_flight))
        self.events.step = self.scheduler.num_steps  # what happens next belongs to the next step
        return outputs

    def _route_rows(self, sched: Schedule, result: ModelRunnerOutput
                    ) -> tuple[torch.Tensor, list[Request], list[NewTokens]]:
        """Send each sampled request's logits rows where they go, in one pass: a chunk
        that carried drafts is verified on its rows; a beam's row goes to its search
        (which picks the tokens of all its beams together); every other row is sampled,
        once per sequence of a group whose prompt this step finished (forked here)."""
        by_id = {s.request.request_id: s for s in sched.scheduled}
        keep: list[int] = []
        requests: list[Request] = []
        verified: list[NewTokens] = []
        row = 0
        for request_id in result.sampled:
            item = by_id[request_id]
            if item.request.is_finished:  # aborted while its batch was in the pipeline
                pass
            elif item.draft_token_ids:
                assert self.speculator is not None
                v = self.speculator.verify(item, result.logits[row:row + item.num_sample_rows])
                verified.append(NewTokens(item.request, v.token_ids, v.logprobs,
                                          v.sampled_logprobs, item))
            elif self.beams.owns(request_id):
                self.beams.stash(item.request, result.logits[row])
            else:
                sequences = self._fork(item.request)
                keep += [row] * len(sequences)
                requests += sequences
            row += item.num_sample_rows
        if len(keep) == row:
            return result.logits, requests, verified
        return result.logits[torch.tensor(keep, dtype=torch.long)], requests, verified

    def _fork(self, request: Request) -> list[Request]:
        """The sequences sampled from this request's row: itself, and the rest of its
        group the first time (they share the prompt's blocks, see `Scheduler.fork`)."""
        group = self._tracked[request.request_id].group
        if group is None or group.forked:
            return [request]
        group.forked = True
        sequences = [request]
        for index in range(1, group.params.num_sequences):
            child = self.scheduler.fork(request, group.child_id(index), group.child_params(index))
            tracked = self._track(child)
            tracked.group, tracked.index = group, index
            group.members.append(tracked)
            sequences.append(child)
        return sequences

    def _update(self, sched: Schedule, new_tokens: list[NewTokens]) -> list[RequestOutput]:
        self.num_computed_tokens += sched.num_tokens
        self._step_time = time.monotonic()
        tracked = [self._tracked[new.request.request_id] for new in new_tokens]
        self.num_computed_prompt_tokens += sum(
            max(0, min(s.start + s.num_known_tokens, s.request.num_prompt_tokens) - s.start)
            for s in sched.scheduled)
        for request in self.scheduler.update_from_output(sched, new_tokens, self._on_token):
            self._finished(request)
        outputs = [self._output(t) for t in tracked if t.group is None]
        groups = dict.fromkeys(t.group for t in tracked if t.group is not None)
        return outputs + [group.output() for group in groups]  # one per group

    def _finished(self, request: Request) -> None:
        self._forget(request.request_id)
        self._tracked.pop(request.request_id)
        if self.events.enabled:
            self.events.emit(RequestFinished(request_id=request.request_id,
                                             reason=request.status.value,
                                             num_output_tokens=request.num_output_tokens))

    def _on_token(self, new: NewTokens, index: int) -> RequestStatus | None:
        """Record one new token of a sequence (logprobs, text, events); whether it
        finished the sequence."""
        tracked = self._tracked[new.request.request_id]
        if index == 0 and new.verified is not None and self.events.enabled:
            self._emit_verified(new)
        request, token = new.request, new.token_ids[index]
        self.num_generated_tokens += 1
        if request.first_token_time is None:
            request.first_token_time = self._step_time
        if tracked.logprobs is not None:
            tracked.logprobs.append(new.logprobs[index] or {})
        if tracked.cumulative_logprob is not None:
            tracked.cumulative_logprob += new.sampled_logprobs[index] or 0.0
        text_before = len(tracked.detok.text) if tracked.detok else 0
        status = check_stop(tracked, token, self.eos_token_ids, self.max_model_len)
        if self.events.enabled:
            text = tracked.detok.text[text_before:] if tracked.detok else ""
            self.events.emit(TokenEmitted(request_id=request.request_id, token_id=token,
                                          text=text, logprob=new.sampled_logprobs[index]))
        return status

    def _output(self, tracked: TrackedRequest) -> RequestOutput:
        request = tracked.request
        metrics = RequestMetrics(request.arrival_time, request.first_scheduled_time,
                                 request.first_token_time, request.finished_time,
                                 request.num_preemptions, request.num_draft_tokens,
                                 request.num_accepted_tokens)
        return RequestOutput(request.request_id, request.prompt, request.prompt_token_ids,
                             [tracked.completion()], request.is_finished, metrics,
                             tracked.prompt_logprobs, request.kv_transfer_result)

    def _record_prompt_logprobs(self, chunks: list[PromptLogits]) -> None:
        """Extend each request's prompt logprobs with this step's chunk. Rows already
        recorded (the prompt computed again after a preemption) are skipped."""
        for chunk in chunks:
            tracked = self._tracked.get(chunk.request_id)
            if tracked is None or tracked.prompt_logprobs is None:
                continue
            request = tracked.request
            recorded = tracked.prompt_logprobs
            first = chunk.start + 1  # the prompt token that the chunk's first row predicts
            skip = len(recorded) - first
            assert skip >= 0, "prompt logprobs must be computed in order"
            end = first + chunk.logits.shape[0]
            if first + skip < end:
                recorded.extend(prompt_logprobs(
                    chunk.logits[skip:], request.prompt_token_ids[first + skip:end],
                    request.sampling_params.prompt_logprobs or 0))

    # -- introspection ------------------------------------------------------------

    def get_stats(self) -> dict[str, Any]:
        """Counters of the whole run so far (the spec_* ones with speculative decoding)."""
        stats = reports.core_stats(self)
        if self.speculator is not None:
            stats.update(self.speculator.stats.as_dict())
        if self.connector is not None:
            stats.update(self.connector.stats.as_dict())
        return stats

    # -- events -------------------------------------------------------------------

    def describe(self) -> EngineStarted:
        """The engine's shape as an event (the first one of every recording)."""
        return reports.describe(self)

    def snapshot(self) -> Snapshot:
        """The whole KV and request state now, for a listener joining mid-run."""
        return reports.snapshot(self)

    def _emit_verified(self, new: NewTokens) -> None:
        assert new.verified is not None and self.config.speculative is not None
        self.events.emit(DraftsVerified(
            request_id=new.request.request_id, method=self.config.speculative.method,
            draft_token_ids=list(new.verified.draft_token_ids),
            num_accepted=len(new.token_ids) - 1, token_ids=list(new.token_ids)))
