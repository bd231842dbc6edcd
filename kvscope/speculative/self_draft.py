"""Early-exit self-draft: the target's own first L layers, final norm and head.

No second model and no second cache: the first L layers' K/V of every token the target
has verified are already in the target's pool, exactly as the draft would compute
them. Each draft token runs those L layers once, writing its K/V into scratch slots
the proposer borrows from the target's pool after the request's computed tokens and
gives back before the step is scheduled (the verifying pass computes every layer of
those positions again), so k drafts cost about k·L/N of a full decode step.
The idea is LayerSkip's self-speculation, here without the early-exit training, so
acceptance depends on how much the model has settled by layer L.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from kvscope.executor.base import Executor
from kvscope.kv.kv_manager import KVCacheManager
from kvscope.request import Request
from kvscope.sample.sampler import Sampler
from kvscope.speculative.proposer import Draft, choose_draft_tokens, stack_probs


class SelfDraftProposer:
    def __init__(self, runner: Executor, kv: KVCacheManager, num_layers: int,
                 sampler: Sampler, seed: int) -> None:
        self.runner = runner
        self.kv = kv
        self.num_layers = num_layers
        self.sampler = sampler
        self.generator = torch.Generator().manual_seed(seed)

    def propose(self, requests: Sequence[Request], limits: Sequence[int]) -> list[Draft]:
        # scratch slots for the last known token and the drafts; none when the pool is full
        limits = [k if self.kv.allocate_slots(request, k) else 0
                  for request, k in zip(requests, limits, strict=True)]
        try:
            return self._draft(requests, limits)
        finally:
            for request in requests:
                self.kv.trim(request)

    def _draft(self, requests: Sequence[Request], limits: Sequence[int]) -> list[Draft]:
        tokens: list[list[int]] = [[] for _ in requests]
        probs: list[list[torch.Tensor | None]] = [[] for _ in requests]
        tables = [self.kv.block_ids(request.request_id) for request in requests]
        for j in range(max(limits, default=0)):
            rows = [i for i, k in enumerate(limits) if j < k]
            inputs = [tokens[i][-1] if j else requests[i].all_token_ids[-1] for i in rows]
            logits = self.runner.forward_decode_rows(
                inputs, [requests[i].num_computed_tokens + j for i in rows],
                [tables[i] for i in rows], self.num_layers)
            chosen, q = choose_draft_tokens(self.sampler, logits,
                                            [requests[i] for i in rows], self.generator)
            for i, token, row_q in zip(rows, chosen, q, strict=True):
                tokens[i].append(token)
                probs[i].append(row_q)
        return [Draft(t, stack_probs(p)) for t, p in zip(tokens, probs, strict=True)]

    def forget(self, request_id: str) -> None:
        pass
