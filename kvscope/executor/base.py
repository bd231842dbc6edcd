"""What the engine asks of an executor: run one step's forward pass (and the early-exit
passes of the self-draft proposer) and give back the logits, by request id."""

from __future__ import annotations

from typing import Protocol

import torch

from kvscope.sched.output import ModelRunnerOutput, SchedulerOutput


class ExecutorError(RuntimeError):
    """The model's workers cannot run steps any more (one died or failed)."""


class Executor(Protocol):
    def execute(self, out: SchedulerOutput) -> ModelRunnerOutput: ...

    def forward_decode_rows(self, token_ids: list[int], positions: list[int],
                            block_tables: list[list[int]], num_layers: int) -> torch.Tensor: ...

    def stage_times(self) -> list[tuple]:
        """Pipeline stages of the latest step: (stage, start, end, collectives,
        collective seconds) each; empty with one stage."""
        ...

    def collective_stats(self) -> tuple[int, float]:
        """(collectives, seconds in them) of the latest step."""
        ...

    def shutdown(self) -> None: ...
