"""The KV connector: how an engine gives a finished prefill's K/V away and how another
takes it instead of computing the prompt. The method names follow vLLM's v1 connector
API, so its users find their way; the code is our own, and smaller.

Scheduler side:
  get_num_new_matched_tokens(request, num_computed_tokens): how many more of the
      request's prompt tokens a producer computed (0: none, compute them here);
  request_finished(request, block_ids): called when a request ends; returns (hold,
      kv_transfer_params): whether its blocks must stay allocated until a consumer took
      them, and what the consumer needs to find them (returned to the API caller).
Worker side:
  register_kv_caches(kv_pool): the paged pool the rows are read from / written to;
  start_load_kv(request, block_ids, start): bring positions [start, prompt end) into
      the request's blocks; True once they are there (kvscope loads synchronously,
      between steps, where vLLM overlaps the load with other requests' steps);
  save_kv(request, block_ids): make a finished prefill's K/V available (kvscope runs
      every layer in one process, so it saves once, after the last layer, where vLLM
      saves layer by layer during the forward pass);
  get_finished(): the requests whose held blocks may be freed now (taken, or held past
      hold_timeout_s), the engine frees them.

A consumer whose load fails (the producer died, timed out, or the K/V does not match
the prompt) returns False: the engine then computes the prompt itself, counted and
logged, so no request is lost.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import torch

from kvscope.events import Emitter, KVTransferred
from kvscope.kv_transfer.config import KVTransferConfig
from kvscope.kv_transfer.kv_rows import prompt_key, read_rows, write_rows
from kvscope.request import Request

logger = logging.getLogger(__name__)


@dataclass(slots=True)
class TransferStats:
    num_saved: int = 0  # prefills whose K/V a producer made available
    num_sent: int = 0  # of those, taken by a consumer
    num_hold_timeouts: int = 0  # held blocks freed because nobody took them in time
    num_loaded: int = 0  # prompts a consumer took instead of computing
    num_load_failures: int = 0  # prompts a consumer computed itself after a failed load
    bytes_sent: int = 0
    bytes_loaded: int = 0
    load_s: float = 0.0

    def as_dict(self) -> dict[str, float]:
        return {f"kv_transfer_{name}": getattr(self, name) for name in self.__slots__}


@dataclass(slots=True)
class Held:
    """A producer's finished request whose blocks wait for a consumer."""

    request_id: str
    block_ids: list[int]
    num_tokens: int
    deadline: float


@dataclass(slots=True)
class LoadFailed(Exception):
    reason: str

    def __str__(self) -> str:
        return self.reason


@dataclass
class KVConnector:
    config: KVTransferConfig
    engine_id: str
    events: Emitter
    pool: torch.Tensor | None = None
    stats: TransferStats = field(default_factory=TransferStats)

    def __post_init__(self) -> None:
        self.load_timeout_s = float(self.config.option("load_timeout_s", 10.0))
        self.hold_timeout_s = float(self.config.option("hold_timeout_s", 60.0))
        self.lock = threading.Lock()  # the producer's held requests, shared with a server
        self.held: dict[str, Held] = {}
        self.taken: dict[str, tuple[int, int, float]] = {}  # id: (tokens, bytes, seconds)

    # -- worker side ------------------------------------------------------------------

    def register_kv_caches(self, kv_pool: torch.Tensor) -> None:
        self.pool = kv_pool

    # -- scheduler side -------------------------------------------------------------

    def get_num_new_matched_tokens(self, request: Request, num_computed_tokens: int) -> int:
        params = request.kv_transfer_params or {}
        if not self.config.is_consumer or not params.get("do_remote_prefill"):
            return 0
        if params.get("prompt_key") != prompt_key(request.prompt_token_ids) or \
                params.get("num_tokens") != request.num_prompt_tokens:
            self.refuse(request, "the producer's K/V is for another prompt")
            return 0
        return max(0, request.num_prompt_tokens - num_computed_tokens)

    def request_finished(self, request: Request, block_ids: list[int]
                         ) -> tuple[bool, dict[str, Any] | None]:
        params = request.kv_transfer_params or {}
        if not self.config.is_producer or not params.get("do_remote_decode") \
                or not request.output_token_ids:
            return False, None
        num_tokens = min(request.num_computed_tokens, request.num_prompt_tokens)
        if num_tokens < request.num_prompt_tokens:
            return False, None  # aborted or stopped before its prompt was computed
        hold, where = self.save_kv(request, block_ids[:], num_tokens)
        self.stats.num_saved += 1
        return hold, {"do_remote_prefill": True, "remote_engine_id": self.engine_id,
                      "remote_request_id": request.request_id, "num_tokens": num_tokens,
                      "prompt_key": prompt_key(request.prompt_token_ids),
                      "first_token_id": request.output_token_ids[0], **where}

    # -- the producer's half ------------------------------------------------------------

    def save_kv(self, request: Request, block_ids: list[int], num_tokens: int
                ) -> tuple[bool, dict[str, Any]]:
        """Make the request's first `num_tokens` rows available; (hold its blocks,
        where the consumer finds them)."""
        raise NotImplementedError

    def hold(self, request: Request, block_ids: list[int], num_tokens: int) -> None:
        with self.lock:
            self.held[request.request_id] = Held(request.request_id, block_ids, num_tokens,
                                                 time.monotonic() + self.hold_timeout_s)

    def take_held(self, request_id: str, start: int, stop: int) -> torch.Tensor | None:
        """The rows [start, stop) of a held request, for a consumer; the request's
        blocks may be freed once the rows are copied out (None: not held)."""
        began = time.perf_counter()
        with self.lock:
            held = self.held.pop(request_id, None)
            if held is None:
                return None
            assert self.pool is not None
            rows = read_rows(self.pool, held.block_ids, start, min(stop, held.num_tokens))
            self.taken[request_id] = (int(rows.shape[2]), rows.numel() * rows.element_size(),
                                      time.perf_counter() - began)
        return rows

    def get_finished(self) -> list[str]:
        """Held requests whose blocks may be freed now: taken, or past the deadline
        (called by the engine, between steps; it frees them)."""
        now = time.monotonic()
        with self.lock:
            expired = [h for h in self.held.values() if h.deadline <= now]
            for held in expired:
                del self.held[held.request_id]
            taken, self.taken = self.taken, {}
        for held in expired:
            logger.warning("K/V of request %s was not taken in %.0f s: its blocks are "
                           "freed", held.request_id, self.hold_timeout_s)
            self.stats.num_hold_timeouts += 1
            self._emit(held.request_id, "release", 0, 0, 0.0, reason="timeout")
        for request_id, (num_tokens, num_bytes, seconds) in taken.items():
            self.stats.num_sent += 1
            self.stats.bytes_sent += num_bytes
            self._emit(request_id, "send", num_tokens, num_bytes, seconds)
            self._emit(request_id, "release", 0, 0, 0.0, reason="taken")
        return [h.request_id for h in expired] + list(taken)

    @property
    def has_held(self) -> bool:
        with self.lock:
            return bool(self.held or self.taken)

    def _emit(self, request_id: str, direction: str, num_tokens: int, num_bytes: int,
              seconds: float, ok: bool = True, reason: str = "") -> None:
        if self.events.enabled:
            self.events.emit(KVTransferred(request_id=request_id, direction=direction,
                                           num_tokens=num_tokens, num_bytes=num_bytes,
                                           seconds=round(seconds, 6), ok=ok, reason=reason))

    # -- the consumer's half ------------------------------------------------------------

    def start_load_kv(self, request: Request, block_ids: list[int], start: int) -> bool:
        assert self.pool is not None
        params = request.kv_transfer_params or {}
        began = time.perf_counter()
        try:
            rows = self.fetch(params, start, request.num_prompt_tokens)
            if rows.shape[2] != request.num_prompt_tokens - start:
                raise LoadFailed(f"the producer sent {rows.shape[2]} rows, "
                                 f"{request.num_prompt_tokens - start} were asked for")
            write_rows(self.pool, block_ids, start, rows)
        except (LoadFailed, ValueError, OSError) as exc:
            self.refuse(request, str(exc))
            return False
        seconds = time.perf_counter() - began
        num_bytes = rows.numel() * rows.element_size()
        self.stats.num_loaded += 1
        self.stats.bytes_loaded += num_bytes
        self.stats.load_s += seconds
        self._emit(request.request_id, "load", int(rows.shape[2]), num_bytes, seconds)
        return True

    def fetch(self, params: dict[str, Any], start: int, stop: int) -> torch.Tensor:
        """Rows [start, stop) of the producer's request named in `params`."""
        raise NotImplementedError

    def refuse(self, request: Request, reason: str) -> None:
        """Give up on the producer's K/V for this request (counted, logged): from now on
        it is an ordinary request, prefilled here."""
        self.stats.num_load_failures += 1
        logger.warning("request %s: K/V load failed (%s); computing its prompt here",
                       request.request_id, reason)
        request.kv_transfer_params = None  # from now on an ordinary request
        self._emit(request.request_id, "load", 0, 0, 0.0, ok=False, reason=reason)

    def shutdown(self) -> None:
        pass
