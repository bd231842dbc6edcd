"""How well speculation is paying: acceptance overall and by draft position."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(slots=True)
class SpecStats:
    num_speculative_tokens: int
    num_rounds: int = 0  # request-steps that verified at least one draft token
    num_draft_tokens: int = 0
    num_accepted_tokens: int = 0
    num_emitted_tokens: int = 0  # accepted drafts + the target's own token, per round
    drafted_at: list[int] = field(default_factory=list)  # rounds with a draft at position i
    accepted_at: list[int] = field(default_factory=list)  # ... whose draft i was accepted
    num_skipped_large_batch: int = 0  # steps the batch-size switch turned speculation off

    def __post_init__(self) -> None:
        self.drafted_at = [0] * self.num_speculative_tokens
        self.accepted_at = [0] * self.num_speculative_tokens

    def record(self, num_drafted: int, num_accepted: int, num_emitted: int) -> None:
        if not num_drafted:
            return
        self.num_rounds += 1
        self.num_draft_tokens += num_drafted
        self.num_accepted_tokens += num_accepted
        self.num_emitted_tokens += num_emitted
        for i in range(num_drafted):
            self.drafted_at[i] += 1
        for i in range(num_accepted):
            self.accepted_at[i] += 1

    @property
    def acceptance_rate(self) -> float:
        return self.num_accepted_tokens / self.num_draft_tokens if self.num_draft_tokens else 0.0

    @property
    def mean_accepted_length(self) -> float:
        """Drafts accepted per verifying round."""
        return self.num_accepted_tokens / self.num_rounds if self.num_rounds else 0.0

    @property
    def tokens_per_round(self) -> float:
        """Tokens a request gains from one target pass that verifies its drafts."""
        return self.num_emitted_tokens / self.num_rounds if self.num_rounds else 0.0

    def acceptance_by_position(self) -> list[float]:
        return [a / d if d else 0.0 for a, d in zip(self.accepted_at, self.drafted_at,
                                                     strict=True)]

    def as_dict(self) -> dict[str, Any]:
        return {"spec_num_rounds": self.num_rounds,
                "spec_num_draft_tokens": self.num_draft_tokens,
                "spec_num_accepted_tokens": self.num_accepted_tokens,
                "spec_acceptance_rate": self.acceptance_rate,
                "spec_acceptance_by_position": self.acceptance_by_position(),
                "spec_mean_accepted_length": self.mean_accepted_length,
                "spec_tokens_per_round": self.tokens_per_round,
                "spec_num_skipped_large_batch": self.num_skipped_large_batch}
