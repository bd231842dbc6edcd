"""Per-request block tables over the block pool. The only owner of block ids.

A request's block table lists, in logical order, the physical blocks holding its
K/V. A block is allocated only when the request's tokens reach into it. With prefix
caching, a new request first looks up its prompt's full blocks by hash chain and
starts from every block it finds; blocks it fills are registered in the cache in the
step that fills them.
"""

from __future__ import annotations

from collections.abc import Sequence

from kvscope.events import (
    BlocksAllocated,
    BlocksCached,
    BlocksFreed,
    BlocksShared,
    BlocksTrimmed,
    CacheReset,
    CopyOnWrite,
    Emitter,
    SequenceForked,
)
from kvscope.kv.block_pool import BlockPool, KVBlock
from kvscope.kv.hashing import extend_block_hashes
from kvscope.kv.swap import SwapSlots
from kvscope.request import Request


def blocks_needed(num_tokens: int, block_size: int) -> int:
    return -(-num_tokens // block_size)


class KVCacheManager:
    def __init__(self, num_blocks: int, block_size: int, enable_caching: bool = True,
                 num_swap_slots: int = 0, events: Emitter | None = None) -> None:
        self.block_size = block_size
        self.events = events or Emitter()
        self.pool = BlockPool(num_blocks, enable_caching)
        self.swap_slots = SwapSlots(num_swap_slots)
        self._swapped: dict[str, list[int]] = {}  # request id → its swap slots, in order
        self._tables: dict[str, list[KVBlock]] = {}
        self._num_cached: dict[str, int] = {}  # leading blocks of a table already cached
        self.num_queried_tokens = 0
        self.num_hit_tokens = 0
        self.pending_copies: list[tuple[int, int]] = []  # (src, dst) block copies to make
        self.num_copies_on_write = 0
        self.num_forks = 0

    @property
    def enable_caching(self) -> bool:
        return self.pool.enable_caching

    @property
    def num_free_blocks(self) -> int:
        return self.pool.num_free_blocks

    def all_block_ids(self) -> dict[str, list[int]]:
        """Every request's block table, as physical block ids."""
        return {rid: [block.block_id for block in table] for rid, table in self._tables.items()}

    def block_ids(self, request_id: str) -> list[int]:
        return [block.block_id for block in self._tables.get(request_id, ())]

    # -- the prefix cache ---------------------------------------------------------------

    def find_cached_prefix(self, request: Request) -> list[KVBlock]:
        """The longest run of the request's leading full blocks found in the cache.

        The last token is always left to compute (its logits are needed), so a prompt
        that is cached whole hits one block less."""
        if not self.enable_caching or request.sampling_params.prompt_logprobs is not None:
            return []  # prompt_logprobs need the logits of every prompt row
        tokens = request.all_token_ids
        extend_block_hashes(request.block_hashes, tokens, self.block_size, request.cache_salt)
        hits = []
        max_blocks = (len(tokens) - 1) // self.block_size
        for index, block_hash in enumerate(request.block_hashes[:max_blocks]):
            begin = index * self.block_size
            block = self.pool.lookup(block_hash, tokens[begin:begin + self.block_size])
            if block is None:
                break
            hits.append(block)
        return hits

    def record_lookup(self, request: Request, hits: Sequence[KVBlock]) -> None:
        """Count one admission's prefix-cache lookup (queried and hit tokens)."""
        if self.enable_caching:
            self.num_queried_tokens += request.num_tokens
            self.num_hit_tokens += len(hits) * self.block_size

    def cache_full_blocks(self, request: Request, num_tokens: int) -> None:
        """Register every block of the request that is full within its first
        `num_tokens` tokens (called when a step is scheduled, for the tokens it will
        compute: each layer writes the whole step's K/V before any attention reads,
        so a request admitted later in the same step can already share them)."""
        if not self.enable_caching:
            return
        table = self._tables.get(request.request_id)
        if table is None:
            return
        start = self._num_cached.get(request.request_id, 0)
        full = min(num_tokens // self.block_size, len(table))
        if full <= start:
            return
        tokens = request.all_token_ids
        hashes = extend_block_hashes(request.block_hashes, tokens[:full * self.block_size],
                                     self.block_size, request.cache_salt)
        added = []
        for index in range(start, full):
            begin = index * self.block_size
            if self.pool.cache(table[index], hashes[index], tokens[begin:begin + self.block_size]):
                added.append(index)
        self._num_cached[request.request_id] = full
        if added and self.events.enabled:
            self.events.emit(BlocksCached(
                request_id=request.request_id, block_ids=[table[i].block_id for i in added],
                hashes=[hashes[i].hex() for i in added], first_index=added[0]))

    def reset_prefix_cache(self) -> int:
        for request_id in self._num_cached:
            self._num_cached[request_id] = 0
        count = self.pool.reset_prefix_cache()
        if self.events.enabled:
            self.events.emit(CacheReset(num_blocks=count))
        return count

    # -- allocation ---------------------------------------------------------------------

    def num_new_blocks_needed(self, request: Request, num_new_tokens: int,
                              num_cached_blocks: int = 0) -> int:
        table = self._tables.get(request.request_id, ())
        computed = request.num_computed_tokens + num_cached_blocks * self.block_size
        total = blocks_needed(computed + num_new_tokens, self.block_size)
        return max(0, total - len(table) - num_cached_blocks)

    def allocate_slots(self, request: Request, num_new_tokens: int,
                       cached: Sequence[KVBlock] = ()) -> bool:
        """Make room for `num_new_tokens` more K/V entries after the request's computed
        tokens and the cache hits `cached` (which join its table first); False, and
        no change, if the pool cannot hold them. A block the new tokens will be written
        into that another sequence also holds is first copied (copy-on-write)."""
        needed = self.num_new_blocks_needed(request, num_new_tokens, len(cached))
        revived = sum(1 for block in cached if block.ref_cnt == 0)  # leave the free count
        shared = self._shared_write_block(request) if not cached else None
        if needed + revived + (shared is not None) > self.pool.num_free_blocks:
            return False
        if shared is not None:
            self._copy_on_write(request, shared)
        table = self._tables.setdefault(request.request_id, [])
        if cached:
            self.pool.share(cached)
            table.extend(cached)
            self._num_cached[request.request_id] = len(table)
            if self.events.enabled:
                self.events.emit(BlocksShared(request_id=request.request_id,
                                              block_ids=[b.block_id for b in cached]))
        if needed:
            self._grow(request.request_id, table, needed)
        return True

    # -- sharing between sequences ------------------------------------------------------

    def fork(self, parent: Request, child: Request) -> None:
        """Give `child` the parent's blocks (refcount + 1 each): a new sequence that
        continues from the parent's computed tokens without recomputing them."""
        table = list(self._tables[parent.request_id])
        self.pool.share(table)
        self.num_forks += 1
        self._tables[child.request_id] = table
        self._num_cached[child.request_id] = self._num_cached.get(parent.request_id, 0)
        if self.events.enabled:
            self.events.emit(SequenceForked(request_id=child.request_id,
                                            parent_id=parent.request_id,
                                            block_ids=[b.block_id for b in table],
                                            num_computed_tokens=child.num_computed_tokens))

    def _shared_write_block(self, request: Request) -> int | None:
        """Index in the request's table of the block its next token goes into, if
        another table holds that block too."""
        table = self._tables.get(request.request_id)
        index = request.num_computed_tokens // self.block_size
        if table is None or index >= len(table) or table[index].ref_cnt < 2:
            return None
        return index

    def _copy_on_write(self, request: Request, index: int) -> None:
        """Replace a shared block with a private copy before the request writes into
        it; the copy itself is made by the model runner (`pending_copies`)."""
        table = self._tables[request.request_id]
        src = table[index]
        evicted: list[int] = []
        (dst,) = self.pool.allocate(1, evicted)
        table[index] = dst
        self.pool.release([src])
        self.pending_copies.append((src.block_id, dst.block_id))
        self.num_copies_on_write += 1
        if self.events.enabled:
            self.events.emit(CopyOnWrite(request_id=request.request_id, src_block_id=src.block_id,
                                         dst_block_id=dst.block_id, evicted=evicted))

    def take_copies(self) -> list[tuple[int, int]]:
        copies, self.pending_copies = self.pending_copies, []
        return copies

    def _grow(self, request_id: str, table: list[KVBlock], count: int) -> None:
        """Append `count` fresh blocks to a table (and say so, evictions included)."""
        evicted: list[int] | None = [] if self.events.enabled else None
        blocks = self.pool.allocate(count, evicted)
        table.extend(blocks)
        if evicted is not None:
            self.events.emit(BlocksAllocated(request_id=request_id,
                                             block_ids=[b.block_id for b in blocks],
                                             evicted=evicted))

    def trim(self, request: Request, num_tokens: int | None = None) -> None:
        """Give back the blocks past the request's first `num_tokens` (default: its
        computed tokens): the slots of draft tokens that were rejected or never
        proposed (speculative decoding). Stale K/V left in kept blocks is never read:
        attention stops at the computed tokens and new tokens overwrite it."""
        table = self._tables.get(request.request_id)
        if table is None:
            return
        if num_tokens is None:
            num_tokens = request.num_computed_tokens
        keep = blocks_needed(num_tokens, self.block_size)
        if keep >= len(table):
            return
        dropped = table[keep:]
        del table[keep:]
        self._num_cached[request.request_id] = min(self._num_cached.get(request.request_id, 0),
                                                   keep)
        self.pool.release(reversed(dropped))
        if self.events.enabled:
            self.events.emit(BlocksTrimmed(request_id=request.request_id,
                                           block_ids=[b.block_id for b in reversed(dropped)]))

    def free(self, request: Request) -> list[int]:
        """Give back every block of the request; returns the freed block ids.

        Blocks go back tail first, so the request's last blocks are reused (or
        evicted) first and its leading blocks, the likeliest shared prefix, stay
        cached longest.
        """
        table = self._tables.pop(request.request_id, [])
        self._num_cached.pop(request.request_id, None)
        self.pool.release(reversed(table))
        if table and self.events.enabled:
            self.events.emit(BlocksFreed(request_id=request.request_id,
                                         block_ids=[b.block_id for b in reversed(table)]))
        return [block.block_id for block in table]

    # -- swap -------------------------------------------------------------------------

    def swap_out(self, request: Request) -> list[tuple[int, int]] | None:
        """Move the request's blocks to swap slots: returns (block id, slot) copies to
        make before the blocks are reused, or None if the swap space is too full."""
        table = self._tables.get(request.request_id, [])
        slots = self.swap_slots.take(len(table))
        if slots is None:
            return None
        copies = [(block.block_id, slot) for block, slot in zip(table, slots, strict=True)]
        self.free(request)
        self._swapped[request.request_id] = slots
        return copies

    def swap_in(self, request: Request, num_new_tokens: int) -> list[tuple[int, int]] | None:
        """Bring a swapped request back into fresh blocks, with room for its next
        `num_new_tokens`: returns (slot, block id) copies, or None (no change) if the
        pool cannot hold it yet."""
        slots = self._swapped[request.request_id]
        needed = blocks_needed(request.num_computed_tokens + num_new_tokens, self.block_size)
        if max(needed, len(slots)) > self.pool.num_free_blocks:
            return None
        table = self._tables[request.request_id] = []
        self._grow(request.request_id, table, max(needed, len(slots)))
        del self._swapped[request.request_id]
        self.swap_slots.give_back(slots)
        return [(slot, block.block_id) for slot, block in zip(slots, table, strict=False)]

    def drop_swapped(self, request: Request) -> None:
        """Forget a swapped request's slots (it finished or was aborted while out)."""
        slots = self._swapped.pop(request.request_id, None)
        if slots:
            self.swap_slots.give_back(slots)

    def swapped_slots(self) -> dict[str, list[int]]:
        """Each swapped-out request's swap slots, in its logical block order."""
        return {request_id: list(slots) for request_id, slots in self._swapped.items()}

    def is_swapped(self, request_id: str) -> bool:
        return request_id in self._swapped

    def has_table(self, request_id: str) -> bool:
        return request_id in self._tables

    def num_tables(self) -> int:
        return len(self._tables)
