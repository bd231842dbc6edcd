"""What every proposer gives back, and how a model-based one picks its draft tokens."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import torch

from kvscope.request import Request
from kvscope.sample.sampler import Sampler


@dataclass(slots=True)
class Draft:
    """Tokens proposed to follow a request's last known token. `probs` [len, vocab] is
    the distribution each was drawn from (needed to verify a sampled request); None
    means a deterministic proposal (all mass on the token)."""

    token_ids: list[int]
    probs: torch.Tensor | None = None


class Proposer(Protocol):
    def propose(self, requests: Sequence[Request], limits: Sequence[int]) -> list[Draft]:
        """One draft per request in decode (all its known tokens but the last are
        computed), of at most `limits[i]` tokens (may be empty). Runs before the step is
        scheduled; the scheduler then gives the drafts their KV slots."""
        ...

    def forget(self, request_id: str) -> None:
        """The request is finished or aborted: drop whatever is kept for it."""
        ...


def choose_draft_tokens(sampler: Sampler, logits: torch.Tensor, requests: Sequence[Request],
                        generator: torch.Generator) -> tuple[list[int], list[torch.Tensor | None]]:
    """A draft model's next token for each row: the argmax for greedy requests, else a
    sample from the request's own sampling distribution (returned too, as q)."""
    sampler.process(logits, requests)
    tokens = logits.argmax(dim=-1).tolist()
    probs: list[torch.Tensor | None] = [None] * len(tokens)
    for row, request in enumerate(requests):
        params = request.sampling_params
        if params.is_greedy:
            continue
        q = sampler.probabilities(logits[row:row + 1], params)[0]
        tokens[row] = int(torch.multinomial(q, 1, generator=generator))
        probs[row] = q
    return tokens, probs


def stack_probs(rows: list[torch.Tensor | None]) -> torch.Tensor | None:
    return None if not rows or rows[0] is None else torch.stack(rows)  # type: ignore[arg-type]
