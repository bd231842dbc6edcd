"""Beam search inside the engine: the beams of one request share KV blocks as a tree.

Each live beam is a sequence the scheduler runs like any other (they sit next to each
other in its queue and decode in the same steps). When every live beam of a group has
the logits for its next token, `BeamGroup.advance` makes one beam step the way Hugging
Face transformers does (and is tested against it, token for token): add each beam's
log-probabilities to its running score, take the top 2 x width continuations over
all beams, let those that end (EOS among the top width, or the length limit) compete
for the finished list, and keep the best width that go on. The engine then applies
the step to the KV cache: a beam continued by several new beams is forked (they share
its blocks, refcount + 1; the shared last block is copied when first written), and a
beam nobody continues is pruned at once, its blocks freed on that step.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from kvscope.events import BeamStepped, Emitter, RequestFinished
from kvscope.kv.kv_manager import KVCacheManager
from kvscope.outputs import CompletionOutput, RequestOutput
from kvscope.request import Request, RequestStatus
from kvscope.sampling_params import BeamSearchParams
from kvscope.sched.scheduler import Scheduler

NEG_INF = -1.0e9  # what HF adds to rule a candidate out (kept for identical arithmetic)


@dataclass(slots=True)
class Hypothesis:
    """A finished beam."""

    token_ids: list[int]
    score: float  # cumulative log-probability / generated length ** length_penalty
    cumulative_logprob: float
    finish_reason: str  # "stop" (ended with EOS) or "length"


@dataclass(slots=True)
class NewBeam:
    parent: int  # index into the group's live beams
    token_id: int
    score: float  # cumulative log-probability after this token


@dataclass(slots=True, eq=False)
class BeamGroup:
    request_id: str
    params: BeamSearchParams
    eos_token_ids: list[int]
    beams: list[Request]  # live beams, best first
    scores: list[float] = field(default_factory=lambda: [0.0])
    finished: list[Hypothesis] = field(default_factory=list)  # best first, at most width
    pending: dict[str, torch.Tensor] = field(default_factory=dict)  # beam id → logprobs
    improvable: bool = True
    done: bool = False

    def ready(self) -> bool:
        """Every live beam has the log-probabilities of its next token."""
        return all(beam.request_id in self.pending for beam in self.beams)

    def advance(self) -> list[NewBeam]:
        """One beam step; returns the beams that go on (best first, parents by index).
        Sets `done` when the search is over."""
        width = self.params.beam_width
        logprobs = torch.stack([self.pending.pop(b.request_id) for b in self.beams])
        vocab = logprobs.shape[-1]
        running = torch.tensor(self.scores, dtype=torch.float32)
        total = (logprobs + running[:, None]).reshape(-1)
        keep = max(2, 1 + len(self.eos_token_ids)) * width
        top_scores, top_index = total.topk(min(keep, total.numel()))
        parents = (top_index // vocab).tolist()
        tokens = (top_index % vocab).tolist()
        length = self.beams[0].num_output_tokens + 1  # generated tokens, this one included
        at_limit = length >= self.params.max_tokens
        ends = torch.tensor([at_limit or self._is_eos(t) for t in tokens])
        self._collect_finished(top_scores, parents, tokens, ends, length)
        go_on = (top_scores + ends.float() * NEG_INF).topk(min(width, len(tokens)))
        new_beams = [NewBeam(parents[i], tokens[i], v)
                     for v, i in zip(go_on.values.tolist(), go_on.indices.tolist(), strict=True)]
        self.scores = [b.score for b in new_beams]
        self._update_stop(length, bool(ends.all()))
        return new_beams

    def _is_eos(self, token: int) -> bool:
        return not self.params.ignore_eos and token in self.eos_token_ids

    def _collect_finished(self, top_scores: torch.Tensor, parents: list[int],
                          tokens: list[int], ends: torch.Tensor, length: int) -> None:
        """Candidates among the best `width` that end compete for the finished list."""
        width = self.params.beam_width
        full = len(self.finished) == width and self.params.early_stopping is True
        if full or not self.improvable:
            return
        penalised = top_scores / (length ** self.params.length_penalty)
        for i in range(min(width, len(tokens))):
            if not ends[i]:
                continue
            beam = self.beams[parents[i]]
            self.finished.append(Hypothesis(
                [*beam.output_token_ids, tokens[i]], penalised[i].item(), top_scores[i].item(),
                "stop" if self._is_eos(tokens[i]) else "length"))
        self.finished.sort(key=lambda h: h.score, reverse=True)
        del self.finished[width:]

    def _update_stop(self, length: int, all_ended: bool) -> None:
        """HF's stopping rule: stop when no running beam can still beat the worst
        finished one, when early_stopping is True and width beams have finished, or
        when every candidate ended (the length limit)."""
        width = self.params.beam_width
        p = self.params
        best_length = p.max_tokens if p.early_stopping == "never" and p.length_penalty > 0 \
            else length
        best_possible = torch.tensor(self.scores[0], dtype=torch.float32) / \
            (best_length ** p.length_penalty)
        if len(self.finished) == width:
            worst = torch.tensor(self.finished[-1].score, dtype=torch.float32)
            self.improvable = self.improvable and bool(best_possible > worst)
        all_finished = len(self.finished) == width and p.early_stopping is True
        self.done = not self.improvable or all_finished or all_ended


class BeamSearches:
    """The engine's beam-search groups: stashes each beam's next-token log-probabilities
    as steps produce them, advances a group once all its beams have theirs, and applies
    the result to the scheduler and the KV cache (fork, prune, append)."""

    def __init__(self, kv: KVCacheManager, scheduler: Scheduler, events: Emitter,
                 eos_token_ids: list[int], decode: Callable[[list[int]], str]) -> None:
        self.kv = kv
        self.scheduler = scheduler
        self.events = events
        self.eos_token_ids = eos_token_ids
        self.decode = decode
        self.groups: dict[str, BeamGroup] = {}
        self._group_of: dict[str, BeamGroup] = {}  # beam request id → its group
        self._ids = itertools.count(1)

    def add(self, root: Request, params: BeamSearchParams) -> None:
        group = BeamGroup(root.request_id, params, self.eos_token_ids, [root])
        self.groups[root.request_id] = group
        self._group_of[root.request_id] = group

    def owns(self, request_id: str) -> bool:
        return request_id in self._group_of

    def stash(self, request: Request, logits: torch.Tensor) -> None:
        self._group_of[request.request_id].pending[request.request_id] = \
            torch.log_softmax(logits.float(), dim=-1)

    def advance_ready(self) -> list[RequestOutput]:
        """Advance every group whose beams all have their logits; outputs of the
        groups that finished."""
        outputs = []
        for group in [g for g in self.groups.values() if g.ready()]:
            parents = [beam.request_id for beam in group.beams]
            new_beams = group.advance()
            if not group.done:
                self._apply(group, new_beams)
            if self.events.enabled:
                self._emit_step(group, parents, new_beams)
            if group.done:
                outputs.append(self._finish(group))
        return outputs

    def _emit_step(self, group: BeamGroup, parents: list[str], new_beams: list[NewBeam]) -> None:
        beams = [] if group.done else [
            {"request_id": beam.request_id, "parent_id": parents[new.parent],
             "token_id": new.token_id, "score": new.score}
            for beam, new in zip(group.beams, new_beams, strict=True)]
        finished = [{"token_ids": h.token_ids, "score": h.score,
                     "finish_reason": h.finish_reason} for h in group.finished]
        self.events.emit(BeamStepped(request_id=group.request_id, beams=beams,
                                     finished=finished, done=group.done))

    def abort(self, group_id: str) -> bool:
        group = self.groups.get(group_id)
        if group is None:
            return False
        self._end(group, RequestStatus.FINISHED_ABORTED, "abort")
        return True

    def _apply(self, group: BeamGroup, new_beams: list[NewBeam]) -> None:
        """Fork parents continued more than once, prune those continued by no one (their
        blocks go back on this step), then append each new beam's token."""
        used: set[int] = set()
        beams = []
        for new in new_beams:
            parent = group.beams[new.parent]
            if new.parent in used:
                child = self.scheduler.fork(parent, f"{group.request_id}~{next(self._ids)}",
                                            parent.sampling_params)
                self._group_of[child.request_id] = group
                beams.append(child)
            else:
                used.add(new.parent)
                beams.append(parent)
        for index, parent in enumerate(group.beams):
            if index not in used:
                self._retire(parent, RequestStatus.FINISHED_ABORTED, "pruned")
        for beam, new in zip(beams, new_beams, strict=True):
            beam.append_output_token(new.token_id)
        group.beams = beams

    def _finish(self, group: BeamGroup) -> RequestOutput:
        self._end(group, RequestStatus.FINISHED_STOPPED, "beam_search_done")
        root = group.beams[0] if group.beams else None
        completions = [CompletionOutput(index=i, text=self.decode(h.token_ids),
                                        token_ids=h.token_ids,
                                        cumulative_logprob=h.cumulative_logprob, logprobs=None,
                                        finish_reason=h.finish_reason)
                       for i, h in enumerate(group.finished)]
        prompt_ids = root.prompt_token_ids if root else []
        prompt = root.prompt if root else None
        return RequestOutput(group.request_id, prompt, prompt_ids, completions, True)

    def _end(self, group: BeamGroup, status: RequestStatus, reason: str) -> None:
        for beam in group.beams:
            self._retire(beam, status, reason)
        del self.groups[group.request_id]

    def _retire(self, beam: Request, status: RequestStatus, reason: str) -> None:
        self._group_of.pop(beam.request_id, None)
        if beam.is_finished:
            return
        self.scheduler.finish(beam, status)
        if self.events.enabled:
            self.events.emit(RequestFinished(request_id=beam.request_id, reason=reason,
                                             num_output_tokens=beam.num_output_tokens))
