"""Early-exit self-draft: the target's own first L layers, final norm and head.

No second model and no second cache: the first L layers' K/V of every token the target
has verified are already in the target's pool, exactly as the draft would compute
them. Each draft token runs those L layers once (writing its K/V into the slots the
scheduler reserved for the drafts), so k drafts cost about k·L/N of a full decode
step; the verifying pass then overwrites those slots with the full model's K/V.
The idea is LayerSkip's self-speculation, here without the early-exit training, so
acceptance depends on how much the model has settled by layer L.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from kvscope.executor.base import Executor
from kvscope.sample.sampler import Sampler
from kvscope.sched.scheduler import ScheduledRequest
from kvscope.speculative.proposer import Draft, choose_draft_tokens, stack_probs


class SelfDraftProposer:
    def __init__(self, runner: Executor, num_layers: int, sampler: Sampler,
                 seed: int) -> None:
        self.runner = runner
        self.num_layers = num_layers
        self.sampler = sampler
        self.generator = torch.Generator().manual_seed(seed)

    def propose(self, items: Sequence[ScheduledRequest]) -> list[Draft]:
        tokens: list[list[int]] = [[] for _ in items]
        probs: list[list[torch.Tensor | None]] = [[] for _ in items]
        for j in range(max((item.num_draft_slots for item in items), default=0)):
            rows = [i for i, item in enumerate(items) if j < item.num_draft_slots]
            inputs = [tokens[i][-1] if j else items[i].request.all_token_ids[-1] for i in rows]
            logits = self.runner.forward_decode_rows(
                inputs, [items[i].start + j for i in rows], [items[i].block_ids for i in rows],
                self.num_layers)
            chosen, q = choose_draft_tokens(self.sampler, logits,
                                            [items[i].request for i in rows], self.generator)
            for i, token, row_q in zip(rows, chosen, q, strict=True):
                tokens[i].append(token)
                probs[i].append(row_q)
        return [Draft(t, stack_probs(p)) for t, p in zip(tokens, probs, strict=True)]

    def forget(self, request_id: str) -> None:
        pass
