"""The one-device executor: the model runner in the engine's own process."""

from __future__ import annotations

import torch

from kvscope.runner.model_runner import ModelRunner
from kvscope.sched.output import ModelRunnerOutput, SchedulerOutput


class UniprocExecutor:
    def __init__(self, runner: ModelRunner) -> None:
        self.runner = runner

    def execute(self, out: SchedulerOutput) -> ModelRunnerOutput:
        return self.runner.execute(out)

    def stage_times(self) -> list[tuple]:
        return []

    def forward_decode_rows(self, token_ids: list[int], positions: list[int],
                            block_tables: list[list[int]], num_layers: int) -> torch.Tensor:
        return self.runner.forward_decode_rows(token_ids, positions, block_tables, num_layers)

    def collective_stats(self) -> tuple[int, float]:
        return 0, 0.0

    def shutdown(self) -> None:
        pass
