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

import torch

from kvscope.config import EngineConfig
from kvscope.engine import reports
from kvscope.engine.beam_search import BeamSearches
from kvscope.engine.detokenizer import IncrementalDetokenizer
from kvscope.engine.sequence_group import SequenceGroup, TrackedRequest
from kvscope.engine.sizing import eos_ids, num_blocks, resolve_max_model_len
from kvscope.engine.speculation import Speculator, make_proposer
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
from kvscope.model.loader import LoadedModel, load_model
from kvscope.outputs import Logprob, RequestMetrics, RequestOutput
from kvscope.request import Request, RequestError, RequestStatus
from kvscope.sample.sampler import Sampler, SamplerOutput, prompt_logprobs
from kvscope.sampling_params import BeamSearchParams, SamplingParams
from kvscope.sched.output import ModelRunnerOutput, PromptLogits
from kvscope.sched.scheduler import Schedule, ScheduledRequest, Scheduler
from kvscope.speculative.proposer import Proposer

MAX_LOGPROBS = 20  # most alternatives returned per token (vLLM's default cap)


@dataclass(slots=True)
class Emission:
    """Tokens a step gives one sequence: one sampled token, or, for a chunk that
    carried drafts (`verified`), the accepted drafts and the target's own token."""

    request: Request
    token_ids: list[int]
    logprobs: list[dict[int, Logprob] | None]
    sampled_logprobs: list[float | None]
    verified: ScheduledRequest | None


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
        self.loaded = loaded or load_model(config.model, config.dtype, load_progress)
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
        self.executor, self.runner = make_executor(
            config, self.loaded, self.num_blocks, self.max_model_len, num_swap_blocks,
            load_progress)  # the runner: this process's, at tp=1
        self.eos_token_ids = eos_ids(arch.eos_token_ids, self.tokenizer)
        self.sampler = Sampler(config.seed, self.eos_token_ids)
        self.beams = BeamSearches(self.kv, self.scheduler, self.events, self.eos_token_ids,
                                  lambda ids: self.tokenizer.decode(ids, skip_special_tokens=True))
        self.speculator: Speculator | None = None
        if config.speculative is not None:
            self.speculator = Speculator(config.speculative, self._proposer(draft_loaded),
                                         self.sampler, self.max_model_len)
            self.scheduler.lookahead = self._lookahead
        self._tracked: dict[str, TrackedRequest] = {}
        self._ids = itertools.count()
        self.last_timings = StepTimings()
        self.num_generated_tokens = 0
        self.num_computed_tokens = 0  # every token the model processed, recomputes included
        self.last_fragmentation = Fragmentation()  # after the latest step
        self.run_fragmentation = Fragmentation()  # summed over steps (slot-steps)
        if self.events.enabled:
            self.events.emit(self.describe())

    def shutdown(self) -> None:
        """Stop the executor's worker processes (tensor parallelism); idempotent."""
        self.executor.shutdown()

    # -- speculative decoding -----------------------------------------------------

    def _proposer(self, draft_loaded: LoadedModel | None) -> Proposer:
        assert self.config.speculative is not None
        return make_proposer(self.config.speculative, self.loaded, self.config.dtype,
                             self.executor, self.sampler, self.kv.block_size,
                             self.max_model_len, self.config.seed, draft_loaded)

    def _propose(self, sched: Schedule) -> None:
        """Fill the reserved draft slots; blocks reserved for drafts the proposer did
        not come up with go back before the forward pass."""
        assert self.speculator is not None
        self.speculator.propose(sched)
        for item in sched.scheduled:
            if len(item.draft_token_ids) < item.num_draft_slots:
                self.kv.trim(item.request, item.start + item.num_tokens)
                item.block_ids = self.kv.block_ids(item.request.request_id)

    def _lookahead(self, request: Request) -> int:
        """Draft slots for a decoding request: none for sequences of a group or a beam
        search (they share blocks and pick tokens together)."""
        assert self.speculator is not None
        tracked = self._tracked.get(request.request_id)
        if tracked is None or tracked.group is not None:
            return 0
        return self.speculator.lookahead(request)

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
        for i, t in enumerate(ids):
            if not isinstance(t, int) or not 0 <= t < vocab:
                raise RequestError(f"prompt token {i} is {t!r}: token ids must be integers "
                                   f"in [0, {vocab})")
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
        if params.bad_words:
            params.resolve_bad_words(self.tokenizer)
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

    def _check_vocab_limits(self, params: SamplingParams) -> None:
        vocab = self.loaded.arch.vocab_size
        for name, ids in (("stop_token_ids", params.stop_token_ids),
                          ("logit_bias", list(params.logit_bias or ())),
                          ("allowed_token_ids", params.allowed_token_ids)):
            bad = [t for t in ids or () if t >= vocab]
            if bad:
                raise RequestError(f"{name} {bad} are outside the vocabulary [0, {vocab})",
                                   param=name)
        for name in ("logprobs", "prompt_logprobs"):
            value = getattr(params, name)
            if value is not None and value > MAX_LOGPROBS:
                raise RequestError(f"{name} must be <= {MAX_LOGPROBS}; got {value}", param=name)

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
        if self.speculator is not None:
            self.speculator.begin_step(len(self.scheduler.running))
        sched = self.scheduler.schedule()
        if self.speculator is not None:
            self._propose(sched)
        t1 = time.perf_counter()
        if sched.is_empty:
            self.events.step = self.scheduler.num_steps
            return []
        result = self.executor.execute(sched.output())
        t2 = time.perf_counter()
        self._record_prompt_logprobs(result.prompt_logits)
        logits, requests, verified = self._verify_drafts(sched, result)
        logits, requests = self._take_beam_rows(logits, requests)
        logits, requests = self._fork_groups(logits, requests)
        sampled = self.sampler.sample(logits, requests) if requests else SamplerOutput([], [], [])
        t3 = time.perf_counter()
        emitted = [Emission(r, [t], [lp], [slp], None) for r, t, lp, slp in zip(
            requests, sampled.token_ids, sampled.logprobs, sampled.sampled_logprobs, strict=True)]
        outputs = self._update(sched, emitted + verified)
        outputs += self.beams.advance_ready()
        self.last_fragmentation = measure(self.kv, self.scheduler.running, self.max_model_len)
        self.run_fragmentation.add(self.last_fragmentation)
        t4 = time.perf_counter()
        self.last_timings = StepTimings(t1 - t0, t2 - t1, t3 - t2, t4 - t3)
        self._emit_step(sched)
        self.events.step = self.scheduler.num_steps  # what happens next belongs to the next step
        return outputs

    def _verify_drafts(self, sched: Schedule, result: ModelRunnerOutput
                       ) -> tuple[torch.Tensor, list[Request], list[Emission]]:
        """Verify the chunks that carried draft tokens (several rows each); the rows of
        the rest, one per request, go on to be sampled."""
        by_id = {s.request.request_id: s for s in sched.scheduled}
        sampled = [by_id[request_id] for request_id in result.sampled]
        requests = [s.request for s in sampled]
        if not any(s.draft_token_ids for s in sampled):
            return result.logits, requests, []
        assert self.speculator is not None
        keep: list[int] = []
        kept: list[Request] = []
        verified: list[Emission] = []
        row = 0
        for item in sampled:
            rows = item.num_sample_rows
            if item.draft_token_ids:
                v = self.speculator.verify(item, result.logits[row:row + rows])
                verified.append(Emission(item.request, v.token_ids, v.logprobs,
                                         v.sampled_logprobs, item))
            else:
                keep.append(row)
                kept.append(item.request)
            row += rows
        return result.logits[torch.tensor(keep, dtype=torch.long)], kept, verified

    def _take_beam_rows(self, logits: torch.Tensor, requests: list[Request]
                        ) -> tuple[torch.Tensor, list[Request]]:
        """Hand the logits of beam-search sequences to their groups (they choose their
        tokens together); the other rows are sampled as usual."""
        if not self.beams.groups:
            return logits, requests
        keep = []
        for row, request in enumerate(requests):
            if self.beams.owns(request.request_id):
                self.beams.stash(request, logits[row])
            else:
                keep.append(row)
        if len(keep) == len(requests):
            return logits, requests
        return logits[torch.tensor(keep, dtype=torch.long)], [requests[i] for i in keep]

    def _fork_groups(self, logits: torch.Tensor, requests: list[Request]
                     ) -> tuple[torch.Tensor, list[Request]]:
        """Fork every group whose prompt this step finished: its new sequences share the
        prompt's blocks and sample their first token from the same logits row."""
        rows: list[int] = []
        expanded: list[Request] = []
        for row, request in enumerate(requests):
            rows.append(row)
            expanded.append(request)
            group = self._tracked[request.request_id].group
            if group is None or group.forked:
                continue
            group.forked = True
            for index in range(1, group.params.num_sequences):
                child = self.scheduler.fork(request, group.child_id(index),
                                            group.child_params(index))
                tracked = self._track(child)
                tracked.group, tracked.index = group, index
                group.members.append(tracked)
                rows.append(row)
                expanded.append(child)
        if len(expanded) == len(requests):
            return logits, requests
        return logits[torch.tensor(rows)], expanded

    def _update(self, sched: Schedule, emitted: list[Emission]) -> list[RequestOutput]:
        self.scheduler.update_after_step(sched)
        self.num_computed_tokens += sched.num_tokens
        now = time.monotonic()
        outputs = []
        groups: list[SequenceGroup] = []  # one output per group, however many rows it had
        for emission in emitted:
            request = emission.request
            tracked = self._tracked[request.request_id]
            if emission.verified is not None and self.events.enabled:
                self._emit_verified(emission)
            appended = 0
            for token, entry, logprob in zip(emission.token_ids, emission.logprobs,
                                             emission.sampled_logprobs, strict=True):
                appended += 1
                if self._append_token(tracked, token, entry, logprob, now):
                    break
            if emission.verified is not None and not request.is_finished:
                # the accepted drafts' K/V were computed by this pass; the last token's not
                self.scheduler.accept_drafts(request, appended - 1)
            if tracked.group is None:
                outputs.append(self._output(tracked))
            elif tracked.group not in groups:
                groups.append(tracked.group)
        return outputs + [group.output() for group in groups]

    def _append_token(self, tracked: TrackedRequest, token: int,
                      logprobs: dict[int, Logprob] | None, logprob: float | None,
                      now: float) -> bool:
        """Add one generated token to a sequence; True if that finished it."""
        request = tracked.request
        request.append_output_token(token)
        self.num_generated_tokens += 1
        if request.first_token_time is None:
            request.first_token_time = now
        if tracked.logprobs is not None:
            tracked.logprobs.append(logprobs or {})
        if tracked.cumulative_logprob is not None:
            tracked.cumulative_logprob += logprob or 0.0
        text_before = len(tracked.detok.text) if tracked.detok else 0
        status = self._check_stop(request, tracked, token)
        if self.events.enabled:
            self._emit_token(tracked, token, text_before, logprob)
        if status is None:
            return False
        self.scheduler.finish(request, status)
        self._forget(request.request_id)
        self._tracked.pop(request.request_id)
        if self.events.enabled:
            self.events.emit(RequestFinished(request_id=request.request_id, reason=status.value,
                                             num_output_tokens=request.num_output_tokens))
        return True

    def _check_stop(self, request: Request, tracked: TrackedRequest,
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

    def _output(self, tracked: TrackedRequest) -> RequestOutput:
        request = tracked.request
        metrics = RequestMetrics(request.arrival_time, request.first_scheduled_time,
                                 request.first_token_time, request.finished_time,
                                 request.num_preemptions, request.num_draft_tokens,
                                 request.num_accepted_tokens)
        return RequestOutput(request.request_id, request.prompt, request.prompt_token_ids,
                             [tracked.completion()], request.is_finished, metrics,
                             tracked.prompt_logprobs)

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
        return stats

    # -- events -------------------------------------------------------------------

    def describe(self) -> EngineStarted:
        """The engine's shape as an event (the first one of every recording)."""
        return reports.describe(self)

    def snapshot(self) -> Snapshot:
        """The whole KV and request state now, for a listener joining mid-run."""
        return reports.snapshot(self)

    def _emit_step(self, sched: Schedule) -> None:
        if self.events.enabled:
            self.events.emit(reports.step_end(self, sched))

    def _emit_token(self, tracked: TrackedRequest, token: int, text_before: int,
                    logprob: float | None) -> None:
        text = tracked.detok.text[text_before:] if tracked.detok else ""
        self.events.emit(TokenEmitted(request_id=tracked.request.request_id, token_id=token,
                                      text=text, logprob=logprob))

    def _emit_verified(self, emission: Emission) -> None:
        assert emission.verified is not None and self.config.speculative is not None
        drafts = emission.verified.draft_token_ids
        self.events.emit(DraftsVerified(
            request_id=emission.request.request_id, method=self.config.speculative.method,
            draft_token_ids=list(drafts), num_accepted=len(emission.token_ids) - 1,
            token_ids=list(emission.token_ids)))
