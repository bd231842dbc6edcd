"""Parallel sampling: one prompt, several sequences sharing its KV blocks.

A request with n > 1 (or best_of) is prefilled once, as an ordinary request. In the
step that computes its last prompt token the engine forks it: best_of - 1 new
sequences get the same block table (each block's refcount + 1, see
`KVCacheManager.fork`), and every sequence samples its first token from that one logits
row with its own seed (seed + i), so sequence i is exactly what a lone request with
seed + i produces. Full prompt blocks stay shared to the end; the last, partly filled
one is copied the first time a sequence writes into it (copy-on-write, in the KV
manager). With best_of > n the n sequences of highest cumulative log-probability are
returned.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from kvscope.engine.detokenizer import IncrementalDetokenizer
from kvscope.outputs import (
    CompletionOutput,
    Logprob,
    PromptLogprobs,
    RequestMetrics,
    RequestOutput,
)
from kvscope.request import Request
from kvscope.sampling_params import SamplingParams


@dataclass(slots=True, eq=False)
class TrackedRequest:
    """Engine-side state of one sequence that the scheduler does not need."""

    request: Request
    detok: IncrementalDetokenizer | None
    logprobs: list[dict[int, Logprob]] | None
    cumulative_logprob: float | None
    group: SequenceGroup | None = None
    index: int = 0  # its place in the group
    prompt_logprobs: PromptLogprobs | None = None  # grows chunk by chunk during prefill

    def completion(self) -> CompletionOutput:
        request = self.request
        text = self.detok.visible_text(request.is_finished) if self.detok else ""
        return CompletionOutput(
            index=self.index, text=text, token_ids=list(request.output_token_ids),
            cumulative_logprob=self.cumulative_logprob, logprobs=self.logprobs,
            finish_reason=request.finish_reason, stop_reason=request.stop_reason)


@dataclass(slots=True, eq=False)
class SequenceGroup:
    """The sequences of one request that asked for n > 1 or best_of."""

    params: SamplingParams
    members: list[TrackedRequest] = field(default_factory=list)  # [0]: the request itself
    forked: bool = False

    @property
    def root(self) -> Request:
        return self.members[0].request

    @property
    def finished(self) -> bool:
        return all(m.request.is_finished for m in self.members)

    def child_id(self, index: int) -> str:
        return f"{self.root.request_id}#{index}"

    def child_params(self, index: int) -> SamplingParams:
        """The parent's options with seed + index (n and best_of stay: they tell the
        sampler to keep cumulative log-probabilities for ranking); a child never
        reports prompt logprobs (the parent does)."""
        seed = None if self.params.seed is None else self.params.seed + index
        return dataclasses.replace(self.params, seed=seed, prompt_logprobs=None)

    def output(self) -> RequestOutput:
        """One output for the whole group: every sequence while running; at the end
        the n most likely (by cumulative log-probability) when best_of > n."""
        members = self.members
        if self.finished and len(members) > self.params.n:
            members = sorted(members, key=lambda m: m.cumulative_logprob or 0.0,
                             reverse=True)[:self.params.n]
        root = self.root
        metrics = RequestMetrics(root.arrival_time, root.first_scheduled_time,
                                 root.first_token_time, max_finished_time(self.members),
                                 sum(m.request.num_preemptions for m in self.members))
        return RequestOutput(root.request_id, root.prompt, root.prompt_token_ids,
                             [m.completion() for m in members], self.finished, metrics,
                             self.members[0].prompt_logprobs)


def max_finished_time(members: list[TrackedRequest]) -> float | None:
    times = [m.request.finished_time for m in members]
    return None if any(t is None for t in times) else max(times)  # type: ignore[type-var]
