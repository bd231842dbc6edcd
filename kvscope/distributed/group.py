"""The ranks of one tensor-parallel model and the collectives its layers need, over a
torch.distributed process group (gloo on CPU, NCCL on CUDA). Every collective is timed,
so the engine can report how many a step made and what they cost."""

from __future__ import annotations

import time

import torch
import torch.distributed as dist


class TPGroup:
    def __init__(self, rank: int, world_size: int,
                 process_group: dist.ProcessGroup | None = None) -> None:
        self.rank = rank
        self.world_size = world_size
        self.process_group = process_group
        self.num_collectives = 0
        self.collective_s = 0.0

    @classmethod
    def single(cls) -> TPGroup:
        """One rank: every collective is the identity."""
        return cls(0, 1)

    def all_reduce(self, x: torch.Tensor) -> torch.Tensor:
        """Sum `x` over the ranks, in place; returns it."""
        if self.world_size > 1:
            start = time.perf_counter()
            dist.all_reduce(x, group=self.process_group)
            self._count(start)
        return x

    def all_gather_last_dim(self, x: torch.Tensor, sizes: list[int]) -> torch.Tensor:
        """Concatenate every rank's `x` along its last dimension; rank r's has
        `sizes[r]` columns (uneven splits are padded for the collective)."""
        if self.world_size == 1:
            return x
        start = time.perf_counter()
        width = max(sizes)
        padded = x if x.shape[-1] == width else torch.nn.functional.pad(
            x, (0, width - x.shape[-1]))
        parts = [torch.empty_like(padded) for _ in range(self.world_size)]
        dist.all_gather(parts, padded.contiguous(), group=self.process_group)
        self._count(start)
        return torch.cat([p[..., :n] for p, n in zip(parts, sizes, strict=True)], dim=-1)

    def take_stats(self) -> tuple[int, float]:
        """(collectives, seconds in them) since the last call."""
        stats = (self.num_collectives, self.collective_s)
        self.num_collectives, self.collective_s = 0, 0.0
        return stats

    def _count(self, start: float) -> None:
        self.num_collectives += 1
        self.collective_s += time.perf_counter() - start
