"""Per-request block tables over the block pool. The only owner of block ids.

A request's block table lists, in logical order, the physical blocks holding its
K/V. A block is allocated only when the request's tokens reach into it.
"""

from __future__ import annotations

from kvscope.kv.block_pool import BlockPool, KVBlock
from kvscope.request import Request


def blocks_needed(num_tokens: int, block_size: int) -> int:
    return -(-num_tokens // block_size)


class KVCacheManager:
    def __init__(self, num_blocks: int, block_size: int) -> None:
        self.block_size = block_size
        self.pool = BlockPool(num_blocks)
        self._tables: dict[str, list[KVBlock]] = {}

    @property
    def num_free_blocks(self) -> int:
        return self.pool.num_free_blocks

    def block_ids(self, request_id: str) -> list[int]:
        return [block.block_id for block in self._tables.get(request_id, ())]

    def num_new_blocks_needed(self, request: Request, num_new_tokens: int) -> int:
        table = self._tables.get(request.request_id, ())
        total = blocks_needed(request.num_computed_tokens + num_new_tokens, self.block_size)
        return max(0, total - len(table))

    def allocate_slots(self, request: Request, num_new_tokens: int) -> bool:
        """Make room for `num_new_tokens` more K/V entries; False (and no change) if
        the pool cannot hold them."""
        needed = self.num_new_blocks_needed(request, num_new_tokens)
        if needed > self.pool.num_free_blocks:
            return False
        table = self._tables.setdefault(request.request_id, [])
        if needed:
            table.extend(self.pool.allocate(needed))
        return True

    def free(self, request: Request) -> list[int]:
        """Give back every block of the request; returns the freed block ids.

        Blocks go back tail first, so the request's last blocks are reused first and
        its leading blocks stay untouched longest (the seam for prefix caching).
        """
        table = self._tables.pop(request.request_id, [])
        self.pool.release(reversed(table))
        return [block.block_id for block in table]

    def has_table(self, request_id: str) -> bool:
        return request_id in self._tables

    def num_tables(self) -> int:
        return len(self._tables)
