"""Continuous batching with chunked prefill, one token budget per step.

There are no prefill and decode phases (as in vLLM v1): every step each scheduled
request gets tokens toward `num_computed_tokens == num_tokens`. Running requests
go first, then swapped-out ones come back, then waiting ones are admitted, while the
token budget, the sequence cap and the KV pool allow. Queues are kept in policy
order: arrival (`fcfs`) or (priority, arrival) (`priority`). When a running request
cannot grow, the last request in policy order is preempted: by recompute (its
blocks are freed and it waits to be prefilled again, from the prefix cache where it
can) or by swap (its K/V are copied to swap space and copied back later). Under the
priority policy a waiting request that outranks running ones may also preempt them
to get in.

With pipeline parallelism several steps are in flight at once; a request in a step not
yet finished (`in_flight`) is neither scheduled again nor preempted until that step's
results are in (the batch queue, as in vLLM v1). Each batch then takes at most its share
of the requests, 1 / `micro_batches` of them, so the next batch has requests to run
while this one is in the pipeline: otherwise the first decode batch would take every
request and leave the other stages idle.
"""

from __future__ import annotations

import bisect
import itertools
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from kvscope.config import SchedulerConfig
from kvscope.events import (
    Emitter,
    Preempted,
    PrefixCacheLookup,
    RequestScheduled,
    SwappedIn,
    SwappedOut,
)
from kvscope.kv.kv_manager import KVCacheManager
from kvscope.outputs import Logprob
from kvscope.request import Request, RequestStatus, fork_request
from kvscope.sampling_params import SamplingParams
from kvscope.sched.output import ScheduledTokens, SchedulerOutput


@dataclass(slots=True)
class ScheduledRequest:
    """One request's share of a step: tokens [start, start + num_tokens)."""

    request: Request
    start: int
    num_tokens: int  # known tokens plus draft tokens, all computed by this step
    block_ids: list[int]
    draft_token_ids: list[int] = field(default_factory=list)  # verified by this step

    @property
    def num_known_tokens(self) -> int:
        return self.num_tokens - len(self.draft_token_ids)

    @property
    def samples(self) -> bool:
        """True when this chunk reaches the last known token, so the step samples."""
        return self.start + self.num_known_tokens == self.request.num_tokens

    @property
    def is_decode(self) -> bool:
        """One known token after cached context (and maybe drafts): every row of the
        chunk is a single query against the cache."""
        return self.num_known_tokens == 1 and self.start > 0

    @property
    def num_sample_rows(self) -> int:
        """Rows with logits: the last known token's and one per draft token."""
        return 1 + len(self.draft_token_ids) if self.samples else 0

    def add_drafts(self, tokens: list[int], block_ids: list[int]) -> None:
        assert not self.draft_token_ids
        self.draft_token_ids = list(tokens)
        self.num_tokens += len(tokens)
        self.block_ids = block_ids

    def tokens(self) -> ScheduledTokens:
        """This share of the step as plain data for the runner."""
        request = self.request
        known = request.all_token_ids[self.start:self.start + self.num_known_tokens]
        prompt_rows = 0
        if request.sampling_params.prompt_logprobs is not None:
            prompt_rows = max(0, min(self.start + self.num_tokens,
                                     request.num_prompt_tokens - 1) - self.start)
        return ScheduledTokens(request.request_id, self.start, known + self.draft_token_ids,
                               list(self.block_ids), len(self.draft_token_ids), self.samples,
                               prompt_rows)


@dataclass(slots=True)
class NewTokens:
    """What a step gives one sequence: one sampled token, or, for a chunk that carried
    drafts (`verified`), the accepted drafts and the target's own token; with their
    logprobs where they were asked for."""

    request: Request
    token_ids: list[int]
    logprobs: list[dict[int, Logprob] | None]
    sampled_logprobs: list[float | None]
    verified: ScheduledRequest | None = None


@dataclass(slots=True)
class Schedule:
    """The scheduler's decisions for one step, with the requests themselves; the
    runner gets `output()`, the same step as plain data."""

    step: int
    scheduled: list[ScheduledRequest] = field(default_factory=list)
    preempted: list[str] = field(default_factory=list)
    swap_out: list[tuple[int, int]] = field(default_factory=list)  # (block id, slot)
    swap_in: list[tuple[int, int]] = field(default_factory=list)  # (slot, block id)
    block_copies: list[tuple[int, int]] = field(default_factory=list)  # copy-on-write (src, dst)

    @property
    def num_tokens(self) -> int:
        return sum(s.num_tokens for s in self.scheduled)

    @property
    def is_empty(self) -> bool:
        return not self.scheduled

    @property
    def has_work(self) -> bool:
        """Tokens to compute, or K/V to copy: a step whose only request swapped itself
        out (it could not grow while the others were in the pipeline) must still copy
        its blocks to swap space before anyone reuses them."""
        return bool(self.scheduled or self.swap_out or self.swap_in or self.block_copies)

    def output(self) -> SchedulerOutput:
        return SchedulerOutput(self.step, [s.tokens() for s in self.scheduled],
                               list(self.swap_out), list(self.swap_in), list(self.block_copies))


class Scheduler:
    def __init__(
        self,
        config: SchedulerConfig,
        kv: KVCacheManager,
        max_model_len: int,
        events: Emitter | None = None,
    ) -> None:
        self.config = config
        self.kv = kv
        self.max_model_len = max_model_len
        self.events = events or kv.events
        self.order_key: Callable[[Request], tuple[int, ...]] = (
            _priority_key if config.policy == "priority" else _fcfs_key)
        self.waiting: list[Request] = []  # policy order; preempted ones come back here
        self.swapped: list[Request] = []  # policy order
        self.running: list[Request] = []  # policy order: the last one is the next victim
        self.in_flight: set[str] = set()  # ids in steps the pipeline has not finished
        self.micro_batches = 1  # pipeline stages: batches in flight at once (see above)
        # disaggregated prefill/decode: asked when a request finishes whether its blocks
        # must stay until a consumer took its K/V (the engine frees them then)
        self.hold_blocks: Callable[[Request], bool] | None = None
        self._batch_cap = 0  # requests the step being scheduled may take
        self.static_batch: set[str] = set()  # batching="static": the unfinished batch
        self.static_batch_size = 0  # its seats, when it formed
        self.num_slot_steps = 0  # static: seats × steps while a batch runs
        self.num_idle_slot_steps = 0  # ... of those, seats with nothing to compute
        self._arrivals = itertools.count()
        self.num_steps = 0
        self.num_preemptions = 0
        self.num_swap_outs = 0
        self.num_swap_ins = 0
        self.num_swap_fallbacks = 0  # swap preemptions done by recompute: swap space full

    # -- queue management ---------------------------------------------------------

    def add_request(self, request: Request) -> None:
        request.status = RequestStatus.WAITING
        request.arrival_index = next(self._arrivals)
        self._insert(self.waiting, request)

    def _insert(self, queue: list[Request], request: Request) -> None:
        bisect.insort(queue, request, key=self.order_key)

    def finish(self, request: Request, status: RequestStatus) -> None:
        """Remove a request from the queues and free its blocks on this same step."""
        request.status = status
        request.finished_time = time.monotonic()
        self.static_batch.discard(request.request_id)
        for queue in (self.running, self.waiting, self.swapped):
            if request in queue:
                queue.remove(request)
                break
        if self.hold_blocks is None or not self.hold_blocks(request):
            self.kv.free(request)
        self.kv.drop_swapped(request)

    def fork(self, parent: Request, child_id: str, params: SamplingParams) -> Request:
        """A new sequence continuing `parent` (parallel sampling, beam search): it holds
        the parent's blocks by reference (the last, partly filled one is copied when
        first written) and runs beside it, or, when the parent's K/V are not in the pool
        (it was preempted), waits to be computed."""
        child = fork_request(parent, child_id, params)
        has_kv = self.kv.has_table(parent.request_id)
        if has_kv:
            self.kv.fork(parent, child)
        self._add_forked(child, parent, has_kv)
        return child

    def _add_forked(self, child: Request, parent: Request, has_kv: bool) -> None:
        if parent.request_id in self.static_batch:
            self.static_batch.add(child.request_id)
        child.arrival_index = parent.arrival_index
        child.first_scheduled_time = parent.first_scheduled_time
        if has_kv:
            child.status = RequestStatus.RUNNING
            self._insert(self.running, child)
        else:
            child.status = RequestStatus.PREEMPTED
            child.num_computed_tokens = 0
            self._insert(self.waiting, child)

    def has_unfinished_requests(self) -> bool:
        return bool(self.waiting or self.running or self.swapped)

    # -- one step -----------------------------------------------------------------

    def schedule(self) -> Schedule:
        out = Schedule(step=self.num_steps)
        self.num_steps += 1
        unfinished = len(self.running) + len(self.waiting) + len(self.swapped)
        self._batch_cap = -(-unfinished // self.micro_batches)  # ceiling
        if self.config.batching == "static" and not self.static_batch:
            self._form_static_batch()
        if self.config.policy == "priority":
            self._make_room_for_priority(out)
        budget = self.config.max_num_batched_tokens
        preempted_before = len(out.preempted)
        budget = self._schedule_running(out, budget)
        if len(out.preempted) == preempted_before:  # no admission when running could not grow
            if not out.swap_out:  # a slot freed this step may not be read back this step
                budget = self._schedule_swapped(out, budget)
            budget = self._schedule_waiting(out, budget)
        self._schedule_drafts(out, budget)
        out.block_copies = self.kv.take_copies()
        if self.static_batch:
            self.num_slot_steps += self.static_batch_size
            self.num_idle_slot_steps += self.static_batch_size - len(out.scheduled)
        return out

    def _form_static_batch(self) -> None:
        """The next static batch: the first max_num_seqs waiting requests."""
        members = self.waiting[:self.config.max_num_seqs]
        self.static_batch = {r.request_id for r in members}
        self.static_batch_size = len(members)

    def _chunk_size(self, request: Request, budget: int, num_computed: int | None = None) -> int:
        computed = request.num_computed_tokens if num_computed is None else num_computed
        n = min(request.num_tokens - computed, budget)
        threshold = self.config.long_prefill_token_threshold
        if threshold and n > 1:
            n = min(n, threshold)
        return n

    def _schedule_running(self, out: Schedule, budget: int) -> int:
        index = 0
        while index < len(self.running) and budget > 0 and self._has_room(out):
            request = self.running[index]
            n = self._chunk_size(request, budget)
            # n == 0, all computed: a beam waiting for its group to pick its token
            if n == 0 or request.request_id in self.in_flight:
                index += 1
                continue
            while not self.kv.allocate_slots(request, n):
                victim = self._victims()[-1]  # at worst the request itself
                self._preempt(victim, out)
                if victim is request:
                    return budget
            out.scheduled.append(self._scheduled(request, n))
            budget -= n
            index += 1
        return budget

    def _schedule_drafts(self, out: Schedule, budget: int) -> None:
        """Speculative decoding: give the draft tokens waiting on decoding requests KV
        slots from what the step leaves over, tokens and blocks (drafts never delay or
        preempt anyone; a step that had to preempt takes none). Each request's drafts
        are for this step only: they are taken off it either way."""
        for item in out.scheduled:
            request = item.request
            drafts, request.spec_token_ids = request.spec_token_ids, []
            drafts = drafts[:max(budget, 0)]
            if not drafts or not item.is_decode or out.preempted:
                continue
            if self.kv.allocate_slots(request, 1 + len(drafts)):
                item.add_drafts(drafts, self.kv.block_ids(request.request_id))
                budget -= len(drafts)

    def _schedule_swapped(self, out: Schedule, budget: int) -> int:
        while self.swapped and budget > 0 and len(self.running) < self.config.max_num_seqs \
                and self._has_room(out):
            request = self.swapped[0]
            n = self._chunk_size(request, budget)
            copies = self.kv.swap_in(request, n)
            if copies is None:
                if self._give_way(out):
                    continue
                break
            self.swapped.pop(0)
            out.swap_in.extend(copies)
            self.num_swap_ins += 1
            if self.events.enabled:
                self.events.emit(SwappedIn(request_id=request.request_id, copies=copies))
            self._start_running(request, out, n, resumed=True)
            budget -= n
        return budget

    def _schedule_waiting(self, out: Schedule, budget: int) -> int:
        while self.waiting and budget > 0 and self._has_room(out):
            if self.waiting[0].awaits_remote_kv:  # admitted by admit_remote, with room
                break
            if self.config.batching == "static" and \
                    self.waiting[0].request_id not in self.static_batch:
                break  # the next static batch forms once this one has finished
            if len(self.running) < self.config.max_num_seqs and \
                    self._admit(self.waiting[0], out, budget):
                budget -= out.scheduled[-1].num_tokens
                continue
            if not self._give_way(out):
                break
        return budget

    def _give_way(self, out: Schedule) -> bool:
        """Requests with nothing to compute (beams waiting for the rest of their group
        to get logits) would hold their blocks forever while the one they wait for
        cannot get in: drop the K/V of the last of them to make room (its next-token
        logits are kept). Always by recompute: a swapped-out one would come back first
        and take the room again. False if no running request is idle."""
        idle = [r for r in self._victims() if r.num_computed_tokens >= r.num_tokens]
        if not idle:
            return False
        self._preempt(idle[-1], out, by_swap=False)
        return True

    def admit_remote(self, request: Request,
                     load: Callable[[Request, list[int], int], bool]) -> str:
        """Admit a waiting request whose prompt K/V another engine computed: give it
        blocks for the whole prompt and its first output token (after its cached
        prefix), and `load(request, block ids, first position)` the rest of the prompt
        into them. "admitted" (its prompt counts as computed), "no_room" (it waits), or
        "failed" (the blocks are given back; it is now an ordinary request)."""
        if len(self.running) >= self.config.max_num_seqs:
            return "no_room"
        hits = self.kv.find_cached_prefix(request)
        hit_tokens = len(hits) * self.kv.block_size
        if not self.kv.allocate_slots(request, request.num_prompt_tokens - hit_tokens + 1, hits):
            return "no_room"
        if not load(request, self.kv.block_ids(request.request_id), hit_tokens):
            self.kv.free(request)
            return "failed"
        self.kv.record_lookup(request, hits)
        request.num_computed_tokens = request.num_prompt_tokens
        self.kv.cache_full_blocks(request, request.num_prompt_tokens)
        self.waiting.remove(request)
        request.status = RequestStatus.RUNNING
        request.first_scheduled_time = time.monotonic()
        self._insert(self.running, request)
        if self.events.enabled:
            self.events.emit(RequestScheduled(request_id=request.request_id, resumed=False,
                                              num_computed_tokens=request.num_computed_tokens))
        return "admitted"

    def _admit(self, request: Request, out: Schedule, budget: int) -> bool:
        """Start a waiting request from its cached prefix, if the pool has room."""
        hits = self.kv.find_cached_prefix(request)
        hit_tokens = len(hits) * self.kv.block_size
        n = self._chunk_size(request, budget, hit_tokens)
        if not self.kv.allocate_slots(request, n, hits):
            return False
        self.kv.record_lookup(request, hits)
        request.num_computed_tokens = hit_tokens
        self.waiting.remove(request)
        if self.events.enabled and self.kv.enable_caching:
            self.events.emit(PrefixCacheLookup(
                request_id=request.request_id, queried_tokens=request.num_tokens,
                hit_tokens=hit_tokens, block_ids=[b.block_id for b in hits],
                hashes=[h.hex() for h in request.block_hashes[:len(hits)]]))
        self._start_running(request, out, n, resumed=request.num_preemptions > 0)
        return True

    def _start_running(self, request: Request, out: Schedule, n: int,
                       resumed: bool) -> None:
        request.status = RequestStatus.RUNNING
        if request.first_scheduled_time is None:
            request.first_scheduled_time = time.monotonic()
        self._insert(self.running, request)
        if self.events.enabled:
            self.events.emit(RequestScheduled(
                request_id=request.request_id, resumed=resumed,
                num_computed_tokens=request.num_computed_tokens))
        out.scheduled.append(self._scheduled(request, n))

    def _make_room_for_priority(self, out: Schedule) -> None:
        """Preempt running requests that rank below the best waiting one, worst
        first, until that one's first chunk fits in the pool."""
        if not self.waiting:
            return
        best = self.waiting[0]
        budget = self.config.max_num_batched_tokens
        while (victims := self._victims()) and victims[-1].priority > best.priority:
            hits = self.kv.find_cached_prefix(best)
            n = self._chunk_size(best, budget, len(hits) * self.kv.block_size)
            needed = self.kv.num_new_blocks_needed(best, n, len(hits))
            fits = needed + sum(b.ref_cnt == 0 for b in hits) <= self.kv.num_free_blocks
            if fits and len(self.running) < self.config.max_num_seqs:
                return
            self._preempt(victims[-1], out)

    def _has_room(self, out: Schedule) -> bool:
        """Whether this batch may take one more request (always, with one stage)."""
        return self.micro_batches == 1 or len(out.scheduled) < self._batch_cap

    def _victims(self) -> list[Request]:
        """The running requests that may be preempted, in policy order: those in no
        unfinished step."""
        if not self.in_flight:
            return self.running
        return [r for r in self.running if r.request_id not in self.in_flight]

    def _scheduled(self, request: Request, n: int) -> ScheduledRequest:
        self.kv.cache_full_blocks(request, request.num_computed_tokens + n)
        return ScheduledRequest(request, request.num_computed_tokens, n,
                                self.kv.block_ids(request.request_id))

    def _preempt(self, victim: Request, out: Schedule, by_swap: bool = True) -> None:
        """Take the victim out of the running batch: swap its K/V out when the mode and
        the swap space allow (and `by_swap`), else drop them to be recomputed."""
        self.running.remove(victim)
        victim.spec_token_ids = []
        victim.num_preemptions += 1
        self.num_preemptions += 1
        out.preempted.append(victim.request_id)
        if by_swap and self.config.preemption_mode == "swap":
            copies = self.kv.swap_out(victim)
            if copies is not None:
                victim.status = RequestStatus.SWAPPED
                self._insert(self.swapped, victim)
                out.swap_out.extend(copies)
                self.num_swap_outs += 1
                if self.events.enabled:
                    self.events.emit(SwappedOut(request_id=victim.request_id, copies=copies))
                    self.events.emit(Preempted(request_id=victim.request_id, mode="swap"))
                return
            self.num_swap_fallbacks += 1
        self.kv.free(victim)
        victim.num_computed_tokens = 0
        victim.status = RequestStatus.PREEMPTED
        self._insert(self.waiting, victim)
        if self.events.enabled:
            self.events.emit(Preempted(request_id=victim.request_id, mode="recompute",
                                       fallback=by_swap and self.config.preemption_mode == "swap"))

    def update_from_output(self, out: Schedule, new_tokens: Sequence[NewTokens],
                           on_token: Callable[[NewTokens, int], RequestStatus | None]
                           ) -> list[Request]:
        """Apply one step's results (the one place requests advance): the known tokens
        the pass computed count as computed; each sampled sequence gets its new tokens
        one at a time, `on_token(new, i)` (the engine's bookkeeping and stop rules,
        which see the text) saying after each whether that finished it; a chunk that
        verified drafts keeps the K/V of the accepted ones and gives back the blocks
        holding only rejected ones. Returns the sequences that finished."""
        for item in out.scheduled:
            item.request.num_computed_tokens += item.num_known_tokens
        finished = []
        for new in new_tokens:
            request = new.request
            for index, token in enumerate(new.token_ids):
                request.append_output_token(token)
                status = on_token(new, index)
                if status is not None:
                    self.finish(request, status)
                    finished.append(request)
                    break
            else:
                if new.verified is not None:
                    # the accepted drafts' K/V were computed by this pass; the last token's not
                    request.num_computed_tokens += len(new.token_ids) - 1
                    self.kv.trim(request)
        return finished


def _fcfs_key(request: Request) -> tuple[int]:
    return (request.arrival_index,)


def _priority_key(request: Request) -> tuple[int, int]:
    return (request.priority, request.arrival_index)
