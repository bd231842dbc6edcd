"""A separate, smaller draft model with its own paged KV cache.

The draft keeps a shadow of each request it drafts for: a Request with the target's
tokens and its own `num_computed_tokens` in the draft's pool. Each round it catches
up on the tokens it has not seen (the whole prompt the first time, afterwards the
verified tokens) in one batched pass that also drafts the first token, then runs
k - 1 single-token passes. Rejected drafts are rolled back by lowering the shadow's
`num_computed_tokens` to the tokens it shares with the target, and its table is cut
to match; the stale K/V beyond are overwritten later.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import torch

from kvscope.config import ConfigError
from kvscope.kv.kv_manager import KVCacheManager
from kvscope.model.loader import LoadedModel
from kvscope.request import Request
from kvscope.runner.model_runner import ModelRunner
from kvscope.sample.sampler import Sampler
from kvscope.sched.scheduler import Schedule, ScheduledRequest
from kvscope.speculative.proposer import Draft, choose_draft_tokens, stack_probs


class DraftModelProposer:
    def __init__(self, draft: LoadedModel, target_vocab_size: int, kv_memory: int,
                 block_size: int, max_model_len: int, sampler: Sampler, seed: int) -> None:
        arch = draft.arch
        if arch.vocab_size != target_vocab_size:
            raise ConfigError(f"draft model vocabulary ({arch.vocab_size}) differs from the "
                              f"target's ({target_vocab_size}); they must share a tokenizer")
        bytes_per_block = arch.kv_bytes_per_token(draft.dtype.itemsize) * block_size
        num_blocks = kv_memory // bytes_per_block
        if num_blocks < 2:
            raise ConfigError(f"draft_kv_cache_memory {kv_memory} holds fewer than 2 blocks")
        self.kv = KVCacheManager(num_blocks, block_size, enable_caching=False)
        self.runner = ModelRunner(draft.model, num_blocks, block_size, max_model_len,
                                  draft.dtype)
        self.sampler = sampler
        self.generator = torch.Generator().manual_seed(seed)
        self.shadows: dict[str, Request] = {}

    def propose(self, requests: Sequence[Request], limits: Sequence[int]) -> list[Draft]:
        drafts = [Draft([]) for _ in requests]
        active = [i for i in range(len(requests)) if self._make_room(requests, limits, i)]
        probs: dict[int, list[torch.Tensor | None]] = {i: [] for i in active}
        step = 0
        while active:
            chunks = [self._chunk(self.shadows[requests[i].request_id]) for i in active]
            result = self.runner.execute(Schedule(step=step, scheduled=chunks).output())
            index = {c.request.request_id: (i, c) for c, i in zip(chunks, active, strict=True)}
            rows = [index[request_id][0] for request_id in result.sampled]
            sampled = [index[request_id][1] for request_id in result.sampled]
            shadows = [self.shadows[requests[i].request_id] for i in rows]
            chosen, q = choose_draft_tokens(self.sampler, result.logits,
                                            [requests[i] for i in rows], self.generator)
            for i, shadow, chunk, token, row_q in zip(rows, shadows, sampled, chosen, q,
                                                      strict=True):
                shadow.num_computed_tokens += chunk.num_tokens
                shadow.append_output_token(token)
                drafts[i].token_ids.append(token)
                probs[i].append(row_q)
            active = [i for i in rows if len(drafts[i].token_ids) < limits[i]]
            step += 1
        for i, rows_q in probs.items():
            drafts[i].probs = stack_probs(rows_q)
        return drafts

    def forget(self, request_id: str) -> None:
        shadow = self.shadows.pop(request_id, None)
        if shadow is not None:
            self.kv.free(shadow)

    def _make_room(self, requests: Sequence[Request], limits: Sequence[int],
                   index: int) -> bool:
        """Sync the request's shadow with the target and reserve slots for its catch-up
        and all its drafts; when the pool is full, shadows of requests not drafting
        now go first; False if there is still no room (it gets no drafts)."""
        shadow = self._sync(requests[index])
        needed = shadow.num_uncomputed_tokens + limits[index] - 1
        if self.kv.allocate_slots(shadow, needed):
            return True
        drafting = {request.request_id for request in requests}
        for request_id in [r for r in self.shadows if r not in drafting]:
            self.forget(request_id)
        return self.kv.allocate_slots(shadow, needed)

    def _sync(self, request: Request) -> Request:
        """The shadow of `request`, holding its tokens, computed up to what they share."""
        shadow = self.shadows.get(request.request_id)
        if shadow is None:
            params = dataclasses.replace(request.sampling_params, prompt_logprobs=None)
            shadow = Request(request.request_id, list(request.prompt_token_ids), params)
            self.shadows[request.request_id] = shadow
        shared = _common_prefix(shadow.all_token_ids, request.all_token_ids)
        # the last known token is always computed again: its logits give the first draft
        shadow.num_computed_tokens = min(shadow.num_computed_tokens, shared,
                                         request.num_tokens - 1)
        shadow.output_token_ids = list(request.output_token_ids)
        shadow.all_token_ids = list(request.all_token_ids)
        self.kv.trim(shadow)
        return shadow

    def _chunk(self, shadow: Request) -> ScheduledRequest:
        start = shadow.num_computed_tokens
        return ScheduledRequest(shadow, start, shadow.num_tokens - start,
                                self.kv.block_ids(shadow.request_id))


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n
