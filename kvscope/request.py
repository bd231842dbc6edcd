"""A request's state as the scheduler sees it: token ids and progress, no tensors.

Life cycle: WAITING → RUNNING → ((PREEMPTED | SWAPPED) → RUNNING)* → FINISHED_*.
"""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass, field
from typing import Any

from kvscope.sampling_params import SamplingParams


class RequestError(ValueError):
    """A request is invalid (empty prompt, too long, duplicate id, ...); `param` names
    the offending field when there is one."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


class RequestStatus(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    PREEMPTED = "preempted"  # K/V dropped; waits to be recomputed
    SWAPPED = "swapped"  # K/V copied to swap space; waits to be copied back
    FINISHED_STOPPED = "stop"
    FINISHED_LENGTH = "length"
    FINISHED_ABORTED = "abort"

    @property
    def is_finished(self) -> bool:
        return self.value in ("stop", "length", "abort")


@dataclass(slots=True, eq=False)
class Request:
    """One prompt being completed.

    `num_computed_tokens` counts the leading tokens whose K/V are in the cache. Each
    step the scheduler gives the request tokens toward `num_tokens`; when all known
    tokens are computed the sampler appends one more.
    """

    request_id: str
    prompt_token_ids: list[int]
    sampling_params: SamplingParams
    arrival_time: float = field(default_factory=time.monotonic)
    prompt: str | None = None
    output_token_ids: list[int] = field(default_factory=list)
    all_token_ids: list[int] = field(default_factory=list)
    num_computed_tokens: int = 0
    status: RequestStatus = RequestStatus.WAITING
    stop_reason: int | str | None = None
    num_preemptions: int = 0
    first_scheduled_time: float | None = None
    first_token_time: float | None = None
    finished_time: float | None = None
    priority: int = 0  # with the priority policy, lower runs first
    arrival_index: int = 0  # set by the scheduler: ties broken by order of arrival
    cache_salt: str | None = None  # requests with different salts never share blocks
    block_hashes: list[bytes] = field(default_factory=list)  # of its full blocks
    # speculative decoding: tokens proposed to follow the last known one, waiting for
    # the scheduler to give them slots in the next step (it takes them off the request)
    spec_token_ids: list[int] = field(default_factory=list)
    num_draft_tokens: int = 0  # speculative decoding: drafts verified for it
    num_accepted_tokens: int = 0  # ... and accepted
    # disaggregated prefill/decode (kv_transfer/): what the caller sent (a producer's
    # {"do_remote_decode": true}, or a consumer's where-to-find-the-K/V), and what this
    # engine answers when the request finishes (for the caller to hand to a consumer)
    kv_transfer_params: dict[str, Any] | None = None
    kv_transfer_result: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        self.all_token_ids = [*self.prompt_token_ids, *self.output_token_ids]

    @property
    def awaits_remote_kv(self) -> bool:
        """A consumer's request whose prompt K/V a producer computed, not yet loaded."""
        params = self.kv_transfer_params
        return bool(params and params.get("do_remote_prefill")) and not self.output_token_ids

    @property
    def num_prompt_tokens(self) -> int:
        return len(self.prompt_token_ids)

    @property
    def num_output_tokens(self) -> int:
        return len(self.output_token_ids)

    @property
    def num_tokens(self) -> int:
        return len(self.all_token_ids)

    @property
    def num_uncomputed_tokens(self) -> int:
        return self.num_tokens - self.num_computed_tokens

    @property
    def is_finished(self) -> bool:
        return self.status.is_finished

    def append_output_token(self, token_id: int) -> None:
        self.output_token_ids.append(token_id)
        self.all_token_ids.append(token_id)

    @property
    def finish_reason(self) -> str | None:
        return self.status.value if self.is_finished else None


def fork_request(parent: Request, child_id: str, params: SamplingParams) -> Request:
    """A new sequence with the parent's tokens, all of them computed (see
    Scheduler.fork, the one place sequences fork)."""
    child = Request(child_id, list(parent.prompt_token_ids), params, prompt=parent.prompt,
                    arrival_time=parent.arrival_time, priority=parent.priority,
                    cache_salt=parent.cache_salt)
    for token in parent.output_token_ids:
        child.append_output_token(token)
    child.num_computed_tokens = parent.num_tokens
    child.block_hashes = list(parent.block_hashes)
    child.first_token_time = parent.first_token_time
    return child
