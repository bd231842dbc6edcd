"""Swap space: where a preempted request's K/V wait, so it resumes without recompute.

On a GPU this is host memory and a swap is a device↔host copy; here the pool is
already in RAM, so it is a second RAM tensor, but the mechanism (and the scheduling
it allows) is the same. `SwapSlots` does the bookkeeping (which slots hold what);
the tensor and the copies belong to the model runner.
"""

from __future__ import annotations


class SwapSlots:
    """A stack of free swap-slot ids: O(1) take and give back."""

    def __init__(self, num_slots: int) -> None:
        self.num_slots = num_slots
        self._free = list(range(num_slots - 1, -1, -1))

    @property
    def num_free(self) -> int:
        return len(self._free)

    def take(self, count: int) -> list[int] | None:
        """`count` slots, or None (and nothing taken) if fewer are free."""
        if count > len(self._free):
            return None
        return [self._free.pop() for _ in range(count)]

    def give_back(self, slots: list[int]) -> None:
        self._free.extend(reversed(slots))
