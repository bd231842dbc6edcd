"""The step contract between the scheduler and the model runner, as plain data.

`SchedulerOutput` says what one forward pass computes: for each scheduled request its
id, the tokens to feed, where they go (positions from `start`, slots from the block
table), whether the step samples it, and the swap and copy-on-write lists. It holds
ids and numbers only, no `Request`, so it pickles small and the same step can be sent
to every tensor-parallel worker. `ModelRunnerOutput` comes back with the logits rows
by request id. (The shape follows vLLM v1's scheduler output; the code is our own.)
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass(slots=True)
class ScheduledTokens:
    """One request's rows of the step: `token_ids` at positions start, start + 1, ...
    (its known tokens, then `num_draft_tokens` draft tokens to verify)."""

    request_id: str
    start: int
    token_ids: list[int]
    block_ids: list[int]  # the request's whole block table
    num_draft_tokens: int = 0
    samples: bool = False  # the chunk reaches the last known token: its rows give logits
    num_prompt_logit_rows: int = 0  # leading rows whose logits give prompt logprobs

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def is_decode(self) -> bool:
        """One known token after cached context (and maybe drafts): every row is a
        single query against the cache."""
        return self.num_tokens - self.num_draft_tokens == 1 and self.start > 0

    @property
    def num_sample_rows(self) -> int:
        """Rows with logits: the last known token's and one per draft token."""
        return 1 + self.num_draft_tokens if self.samples else 0


@dataclass(slots=True)
class SchedulerOutput:
    step: int
    scheduled: list[ScheduledTokens] = field(default_factory=list)
    swap_out: list[tuple[int, int]] = field(default_factory=list)  # (block id, slot)
    swap_in: list[tuple[int, int]] = field(default_factory=list)  # (slot, block id)
    block_copies: list[tuple[int, int]] = field(default_factory=list)  # copy-on-write (src, dst)

    @property
    def num_tokens(self) -> int:
        return sum(s.num_tokens for s in self.scheduled)


@dataclass(slots=True)
class PromptLogits:
    """Logits of one request's prompt rows in this step: row i is at position
    start + i and predicts prompt token start + i + 1."""

    request_id: str
    start: int
    logits: torch.Tensor  # [rows, vocab] float32


@dataclass(slots=True)
class ModelRunnerOutput:
    logits: torch.Tensor  # [rows, vocab] float32: `num_sample_rows` per sampled request
    sampled: list[str]  # the request ids those rows belong to, in row order
    prompt_logits: list[PromptLogits] = field(default_factory=list)
