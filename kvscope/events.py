"""What the engine decides, as typed records sent to one EventSink.

Every picture the scope draws is folded from these events, so they carry enough to
rebuild the engine's bookkeeping exactly: which blocks each request's table holds, each
block's refcount, which blocks are in the prefix cache, and what each step ran.

Components do not talk to the sink directly but through an `Emitter`, which stamps each
event with the engine step and the time. With no listener (`NullSink`, or a broadcaster
with no subscriber) `Emitter.enabled` is False and call sites skip building the event:
`if self.events.enabled: self.events.emit(...)`. benchmarks/events_overhead.py measures
what that and a recorder cost.

Event order follows the engine's own order: an event is emitted right after the change
it reports, so at any point the events so far describe the engine's state exactly
(tests/test_events_reducer.py checks this against the engine after every event).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import IO, Any, ClassVar

# -- the schema ---------------------------------------------------------------------------


@dataclass(slots=True, kw_only=True)
class Event:
    """Base of every event: `step` is the engine step it happened in (steps count from
    0; events between steps carry the number of the next step) and `time` the seconds
    since the engine started."""

    kind: ClassVar[str] = "event"
    step: int = 0
    time: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": self.kind}
        for name in _field_names(type(self)):
            value = getattr(self, name)
            if isinstance(value, list) and value and hasattr(value[0], "to_dict"):
                value = [item.to_dict() for item in value]
            out[name] = value
        return out


_FIELDS: dict[type, tuple[str, ...]] = {}


def _field_names(cls: type) -> tuple[str, ...]:
    names = _FIELDS.get(cls)
    if names is None:
        names = _FIELDS[cls] = tuple(f.name for f in fields(cls))
    return names


@dataclass(slots=True, kw_only=True)
class EngineStarted(Event):
    """The engine's shape: what every picture of the KV pool needs to know."""

    kind: ClassVar[str] = "engine_started"
    model: str
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    dtype: str
    kv_bytes_per_token: int
    block_size: int
    num_blocks: int
    num_swap_slots: int
    max_model_len: int
    max_num_seqs: int
    max_num_batched_tokens: int
    enable_prefix_caching: bool
    preemption_mode: str
    policy: str
    tensor_parallel_size: int = 1
    pipeline_parallel_size: int = 1
    # with tensor parallelism, what each rank holds: its query/KV head, MLP neuron and
    # vocabulary ranges [start, stop), its weight shapes and its KV pool's shape
    ranks: list[dict[str, Any]] = field(default_factory=list)
    weights: str = "dense"  # how the linear weights are stored, e.g. "q4 (120), q8 (1)"
    kernels: str = ""  # the instruction set the C++ kernels were built for ("" if none)


@dataclass(slots=True, kw_only=True)
class RequestArrived(Event):
    kind: ClassVar[str] = "request_arrived"
    request_id: str
    prompt_token_ids: list[int]
    prompt: str | None
    max_tokens: int | None
    priority: int = 0


@dataclass(slots=True, kw_only=True)
class RequestScheduled(Event):
    """The request joined the running batch: first admission, or back after a
    preemption. `num_computed_tokens` are already in the cache (prefix hits)."""

    kind: ClassVar[str] = "request_scheduled"
    request_id: str
    num_computed_tokens: int
    resumed: bool


@dataclass(slots=True, kw_only=True)
class RequestFinished(Event):
    kind: ClassVar[str] = "request_finished"
    request_id: str
    reason: str  # "stop" | "length"
    num_output_tokens: int


@dataclass(slots=True, kw_only=True)
class RequestAborted(Event):
    kind: ClassVar[str] = "request_aborted"
    request_id: str


@dataclass(slots=True, kw_only=True)
class StepBegin(Event):
    kind: ClassVar[str] = "step_begin"


@dataclass(slots=True, kw_only=True)
class ScheduledChunk:
    """One request's share of a step: tokens [start, start + num_tokens)."""

    request_id: str
    start: int
    num_tokens: int
    phase: str  # "prefill" | "decode" | "verify" (a decode with draft tokens)
    num_draft_tokens: int = 0  # of num_tokens, the drafts being verified

    def to_dict(self) -> dict[str, Any]:
        return {"request_id": self.request_id, "start": self.start,
                "num_tokens": self.num_tokens, "phase": self.phase,
                "num_draft_tokens": self.num_draft_tokens}


@dataclass(slots=True, kw_only=True)
class StageTime:
    """One pipeline stage's part of a step."""

    stage: int
    start: float
    end: float
    num_collectives: int = 0
    collective_ms: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"stage": self.stage, "start": self.start, "end": self.end,
                "num_collectives": self.num_collectives, "collective_ms": self.collective_ms}


@dataclass(slots=True, kw_only=True)
class StepEnd(Event):
    """What one step ran and what each part took (milliseconds)."""

    kind: ClassVar[str] = "step_end"
    batch: list[ScheduledChunk]
    num_tokens: int
    schedule_ms: float
    forward_ms: float
    sample_ms: float
    update_ms: float
    num_free_blocks: int
    num_running: int
    num_waiting: int
    num_swapped: int
    fragmentation: dict[str, int] = field(default_factory=dict)
    num_collectives: int = 0  # tensor parallelism: all-reduces and gathers rank 0 made
    collective_ms: float = 0.0  # and the time it spent in them (part of forward_ms)
    # pipeline parallelism: batches in the pipeline when this one started (itself
    # included), and each stage's compute of this batch, in seconds on the run's clock
    # (`time`; a stage on another machine has its own clock: only its duration counts)
    batches_in_flight: int = 1
    stages: list[StageTime] = field(default_factory=list)


@dataclass(slots=True, kw_only=True)
class BlocksAllocated(Event):
    """Fresh blocks (refcount 1) appended to the request's table; `evicted` lists those
    that were taken from the prefix cache's evictable queue (their cached content is
    gone)."""

    kind: ClassVar[str] = "blocks_allocated"
    request_id: str
    block_ids: list[int]
    evicted: list[int]


@dataclass(slots=True, kw_only=True)
class BlocksShared(Event):
    """Cached blocks appended to the request's table (refcount + 1 each; a block at
    refcount 0 comes back out of the evictable queue)."""

    kind: ClassVar[str] = "blocks_shared"
    request_id: str
    block_ids: list[int]


@dataclass(slots=True, kw_only=True)
class BlocksTrimmed(Event):
    """The request's table let go of its last blocks (the slots of rejected draft
    tokens): they leave the end of the table, refcount - 1 each, in this order."""

    kind: ClassVar[str] = "blocks_trimmed"
    request_id: str
    block_ids: list[int]


@dataclass(slots=True, kw_only=True)
class BlocksFreed(Event):
    """The request's table let go of these blocks, in this order (refcount - 1 each;
    at 0 a block is free, or evictable if it is cached)."""

    kind: ClassVar[str] = "blocks_freed"
    request_id: str
    block_ids: list[int]


@dataclass(slots=True, kw_only=True)
class BlocksCached(Event):
    """Full blocks of the request registered in the prefix cache under their chained
    hashes (hex); `first_index` is the logical index of the first one."""

    kind: ClassVar[str] = "blocks_cached"
    request_id: str
    block_ids: list[int]
    hashes: list[str]
    first_index: int


@dataclass(slots=True, kw_only=True)
class CacheReset(Event):
    kind: ClassVar[str] = "cache_reset"
    num_blocks: int


@dataclass(slots=True, kw_only=True)
class CopyOnWrite(Event):
    """A shared block about to be written was copied into a fresh block of the writer's
    own, which replaces it in the writer's table (the shared one: refcount - 1);
    `evicted` is [dst] if the fresh block was taken from the prefix cache."""

    kind: ClassVar[str] = "copy_on_write"
    request_id: str
    src_block_id: int
    dst_block_id: int
    evicted: list[int] = field(default_factory=list)


@dataclass(slots=True, kw_only=True)
class SequenceForked(Event):
    """A new sequence (parallel sample or beam) starts from its parent's blocks: its
    table is `block_ids`, each block's refcount + 1."""

    kind: ClassVar[str] = "sequence_forked"
    request_id: str
    parent_id: str
    block_ids: list[int]
    num_computed_tokens: int


@dataclass(slots=True, kw_only=True)
class BeamStepped(Event):
    """One beam-search step of a group: the beams that go on (each continuing
    `parent_id` with `token_id`, cumulative log-probability `score`), the finished
    list so far (best first), and whether the search is over."""

    kind: ClassVar[str] = "beam_step"
    request_id: str
    beams: list[dict[str, Any]]
    finished: list[dict[str, Any]]
    done: bool


@dataclass(slots=True, kw_only=True)
class PrefixCacheLookup(Event):
    """An admitted request looked its prompt up in the prefix cache."""

    kind: ClassVar[str] = "prefix_cache_lookup"
    request_id: str
    queried_tokens: int
    hit_tokens: int
    block_ids: list[int]
    hashes: list[str]


@dataclass(slots=True, kw_only=True)
class Preempted(Event):
    kind: ClassVar[str] = "preempted"
    request_id: str
    mode: str  # "recompute" | "swap"
    fallback: bool = False  # swap was asked for but the swap space was full


@dataclass(slots=True, kw_only=True)
class SwappedOut(Event):
    kind: ClassVar[str] = "swapped_out"
    request_id: str
    copies: list[tuple[int, int]]  # (block id, swap slot)


@dataclass(slots=True, kw_only=True)
class SwappedIn(Event):
    kind: ClassVar[str] = "swapped_in"
    request_id: str
    copies: list[tuple[int, int]]  # (swap slot, block id)


@dataclass(slots=True, kw_only=True)
class TokenEmitted(Event):
    kind: ClassVar[str] = "token_emitted"
    request_id: str
    token_id: int
    text: str  # the text this token completed (may be empty mid-character)
    logprob: float | None


@dataclass(slots=True, kw_only=True)
class DraftsVerified(Event):
    """Speculative decoding: the target checked a request's draft tokens in this step's
    pass, accepted the first `num_accepted`, and gives `token_ids` (those plus its own
    correction or bonus token). token_emitted events follow for each, up to the first
    that ends the request (the rest are dropped)."""

    kind: ClassVar[str] = "drafts_verified"
    request_id: str
    method: str
    draft_token_ids: list[int]
    num_accepted: int
    token_ids: list[int]


@dataclass(slots=True, kw_only=True)
class Snapshot(Event):
    """The whole state at a step boundary, for a listener that joins a running engine:
    `engine` is an engine_started record, `blocks` [refcount, cached hash or None] per
    block id, `tables` each request's block ids, `requests` their status and sizes."""

    kind: ClassVar[str] = "snapshot"
    engine: dict[str, Any]
    blocks: list[list[Any]]
    tables: dict[str, list[int]]
    swapped: dict[str, list[int]]
    requests: list[dict[str, Any]]
    counters: dict[str, int]


@dataclass(slots=True, kw_only=True)
class KVTransferred(Event):
    """Disaggregated prefill/decode (kv_transfer/): a request's K/V saved by a producer
    ("save": to shared storage), taken from it by a consumer ("send"), loaded by a
    consumer ("load"; ok False: the load failed and the prompt is computed here), or
    released by a producer ("release": its held blocks freed; reason "taken" or
    "timeout")."""

    kind: ClassVar[str] = "kv_transferred"
    request_id: str
    direction: str
    num_tokens: int
    num_bytes: int
    seconds: float
    ok: bool = True
    reason: str = ""


EVENT_TYPES: dict[str, type[Event]] = {cls.kind: cls for cls in (
    EngineStarted, RequestArrived, RequestScheduled, RequestFinished, RequestAborted,
    StepBegin, StepEnd, BlocksAllocated, BlocksShared, BlocksFreed, BlocksCached,
    CacheReset, CopyOnWrite, SequenceForked, BeamStepped, PrefixCacheLookup, Preempted,
    SwappedOut, SwappedIn, TokenEmitted, Snapshot, BlocksTrimmed, DraftsVerified,
    KVTransferred)}


# -- sinks --------------------------------------------------------------------------------


class EventSink:
    enabled = True

    def emit(self, event: Event) -> None:
        raise NotImplementedError


class NullSink(EventSink):
    enabled = False

    def emit(self, event: Event) -> None:
        return None


class ListSink(EventSink):
    """Keeps every event in memory (tests, short recordings, lesson runs)."""

    def __init__(self) -> None:
        self.events: list[Event] = []

    def emit(self, event: Event) -> None:
        self.events.append(event)

    def of_kind(self, kind: str) -> list[Event]:
        return [event for event in self.events if event.kind == kind]

    def dicts(self) -> list[dict[str, Any]]:
        return [event.to_dict() for event in self.events]


class JsonlRecorder(EventSink):
    """Writes one JSON object per event to a file (`kvscope scope --replay` reads it)."""

    def __init__(self, path: str | Path) -> None:
        self._file: IO[str] = open(path, "w", encoding="utf-8")  # noqa: SIM115
        self._lock = threading.Lock()

    def emit(self, event: Event) -> None:
        line = json.dumps(event.to_dict(), separators=(",", ":"))
        with self._lock:
            self._file.write(line + "\n")

    def close(self) -> None:
        with self._lock:
            self._file.close()


class FanOutSink(EventSink):
    """Sends each event to several sinks; enabled while any of them is."""

    def __init__(self, sinks: Iterable[EventSink]) -> None:
        self.sinks = list(sinks)

    @property
    def enabled(self) -> bool:  # type: ignore[override]
        return any(sink.enabled for sink in self.sinks)

    def emit(self, event: Event) -> None:
        for sink in self.sinks:
            if sink.enabled:
                sink.emit(event)


class CallbackSink(EventSink):
    """Calls a function with each event's dict (a live stream's subscribers)."""

    def __init__(self, callback: Callable[[dict[str, Any]], None]) -> None:
        self.callback = callback

    def emit(self, event: Event) -> None:
        self.callback(event.to_dict())


class Emitter:
    """What the engine's parts emit through: stamps the step and the time."""

    def __init__(self, sink: EventSink | None = None) -> None:
        self.sink = sink or NullSink()
        self.step = 0
        self._start = time.perf_counter()

    @property
    def enabled(self) -> bool:
        return self.sink.enabled

    def elapsed(self) -> float:
        return self.on_run_clock(time.perf_counter())

    def on_run_clock(self, perf_counter_time: float) -> float:
        """A time.perf_counter() value as seconds since the run began (the `time` of
        events); a worker on this machine reads the same clock."""
        return round(perf_counter_time - self._start, 6)

    def emit(self, event: Event) -> None:
        event.step = self.step
        event.time = self.elapsed()
        self.sink.emit(event)


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """The events of a recorded run, as dicts (blank lines skipped)."""
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]
