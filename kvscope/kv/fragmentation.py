"""Memory fragmentation, measured from the real allocations after every step.

Paged allocation wastes only the unfilled tail of each request's last block
(internal fragmentation). A contiguous allocator must reserve a request's whole
possible length up front: `max_model_len` slots, or at best its own
`prompt + max_tokens`. On the same requests at the same moment we count all three,
so the saving is measured, not derived from a formula.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass, fields

from kvscope.kv.kv_manager import KVCacheManager
from kvscope.request import Request


@dataclass(slots=True)
class Fragmentation:
    """Slot counts at one moment (or summed over steps, in slot-steps)."""

    allocated_slots: int = 0  # slots of blocks held by requests (each physical block once)
    filled_slots: int = 0  # of those, slots holding a computed token's K/V
    shared_blocks: int = 0  # blocks held by more than one request
    cached_blocks: int = 0  # blocks registered in the prefix cache (held or evictable)
    reserved_max_model_len: int = 0  # a contiguous allocator reserving max_model_len each
    reserved_own_length: int = 0  # ... reserving each request's prompt + max_tokens
    tokens_held: int = 0  # computed tokens summed over requests (shared ones counted per owner)

    @property
    def paged_waste(self) -> float:
        return _waste(self.allocated_slots, self.filled_slots)

    @property
    def contiguous_waste(self) -> float:
        return _waste(self.reserved_max_model_len, self.tokens_held)

    @property
    def contiguous_own_waste(self) -> float:
        return _waste(self.reserved_own_length, self.tokens_held)

    def add(self, other: Fragmentation) -> None:
        for f in fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))

    def as_dict(self) -> dict[str, float]:
        return {**asdict(self), "paged_waste": self.paged_waste,
                "contiguous_waste": self.contiguous_waste,
                "contiguous_own_waste": self.contiguous_own_waste}


def measure(kv: KVCacheManager, holders: Iterable[Request], max_model_len: int) -> Fragmentation:
    """Fragmentation of the blocks the given requests (those with a block table) hold.

    Only full blocks are ever shared, and each sharer has computed all of a shared
    block, so the physical slots holding tokens are the tokens summed over requests,
    less one block's worth for every extra holder of a shared block."""
    pool = kv.pool
    frag = Fragmentation(shared_blocks=pool.num_shared_blocks,
                         cached_blocks=pool.num_cached_blocks)
    for request in holders:
        frag.tokens_held += request.num_computed_tokens
        frag.reserved_max_model_len += max_model_len
        own = request.num_prompt_tokens + (request.sampling_params.max_tokens or max_model_len)
        frag.reserved_own_length += min(own, max_model_len)
    frag.allocated_slots = pool.num_used_blocks * kv.block_size
    frag.filled_slots = frag.tokens_held - pool.num_extra_refs * kv.block_size
    return frag


def _waste(reserved: int, used: int) -> float:
    return 1.0 - used / reserved if reserved else 0.0
