"""The physical KV blocks: ids, refcounts, O(1) free lists and the prefix cache.

A block with refcount 0 is in one of two queues, doubly linked lists threaded
through the blocks themselves (as in vLLM v1), so taking from the head, returning to
the tail and removing from the middle are all O(1):

- `free`: blocks holding nothing worth keeping;
- `evictable`: full blocks whose content is still in the prefix cache (their hash is
  in `cached`), least recently released first. A cache hit takes such a block out of
  the middle of the queue; allocation evicts from its head only when `free` is empty.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from kvscope.kv.hashing import BlockHash


class BlockPoolError(RuntimeError):
    """An operation would break a block-pool invariant (a bug, never user input)."""


@dataclass(slots=True, eq=False)
class KVBlock:
    block_id: int
    ref_cnt: int = 0
    prev_free: KVBlock | None = None
    next_free: KVBlock | None = None
    block_hash: BlockHash | None = None  # set while the block is in the prefix cache
    token_ids: tuple[int, ...] | None = None  # its tokens, to verify a cache hit

    def __repr__(self) -> str:
        cached = ", cached" if self.block_hash is not None else ""
        return f"KVBlock(id={self.block_id}, ref={self.ref_cnt}{cached})"


class FreeBlockQueue:
    """Doubly linked list of free blocks with sentinel head and tail."""

    def __init__(self, blocks: Iterable[KVBlock]) -> None:
        self._head = KVBlock(-1)
        self._tail = KVBlock(-2)
        self._head.next_free = self._tail
        self._tail.prev_free = self._head
        self.num_free = 0
        for block in blocks:
            self.append(block)

    def popleft(self) -> KVBlock:
        block = self._head.next_free
        if block is self._tail or block is None:
            raise BlockPoolError("no free block left")
        self.remove(block)
        return block

    def append(self, block: KVBlock) -> None:
        last = self._tail.prev_free
        assert last is not None
        last.next_free = block
        block.prev_free = last
        block.next_free = self._tail
        self._tail.prev_free = block
        self.num_free += 1

    def remove(self, block: KVBlock) -> None:
        if block.prev_free is None or block.next_free is None:
            raise BlockPoolError(f"block {block.block_id} is not in the free queue")
        block.prev_free.next_free = block.next_free
        block.next_free.prev_free = block.prev_free
        block.prev_free = block.next_free = None
        self.num_free -= 1

    def block_ids(self) -> list[int]:
        ids = []
        node = self._head.next_free
        while node is not None and node is not self._tail:
            ids.append(node.block_id)
            node = node.next_free
        return ids


class BlockPool:
    """Owns every physical block; hands them out and takes them back by refcount, and
    keeps released full blocks findable by content hash until they are evicted."""

    def __init__(self, num_blocks: int, enable_caching: bool = True) -> None:
        if num_blocks < 1:
            raise BlockPoolError("a block pool needs at least one block")
        self.blocks = [KVBlock(i) for i in range(num_blocks)]
        self.free = FreeBlockQueue(self.blocks)
        self.evictable = FreeBlockQueue(())
        self.cached: dict[BlockHash, KVBlock] = {}
        self.enable_caching = enable_caching
        self.num_evictions = 0
        self.num_shared_blocks = 0  # blocks with refcount > 1
        self.num_extra_refs = 0  # sum over blocks of max(0, refcount - 1)

    @property
    def num_blocks(self) -> int:
        return len(self.blocks)

    @property
    def num_free_blocks(self) -> int:
        """Blocks an allocation may take: free ones plus evictable cached ones."""
        return self.free.num_free + self.evictable.num_free

    @property
    def num_used_blocks(self) -> int:
        return self.num_blocks - self.num_free_blocks

    @property
    def num_cached_blocks(self) -> int:
        return len(self.cached)

    def allocate(self, count: int, evicted: list[int] | None = None) -> list[KVBlock]:
        """Take `count` blocks, each with refcount 1: free ones first, then the least
        recently used cached ones (evicting them from the cache; their ids are appended
        to `evicted` when given)."""
        if count > self.num_free_blocks:
            raise BlockPoolError(f"asked for {count} blocks, only {self.num_free_blocks} free")
        taken = []
        for _ in range(count):
            if self.free.num_free:
                block = self.free.popleft()
            else:
                block = self.evictable.popleft()
                self._uncache(block)
                self.num_evictions += 1
                if evicted is not None:
                    evicted.append(block.block_id)
            block.ref_cnt = 1
            taken.append(block)
        return taken

    def share(self, blocks: Iterable[KVBlock]) -> None:
        """One more block table now holds each of these blocks; a cached block at
        refcount 0 comes back out of the evictable queue."""
        for block in blocks:
            if block.ref_cnt == 0:
                if block.block_hash is None:
                    raise BlockPoolError(f"cannot share free block {block.block_id}")
                self.evictable.remove(block)
            block.ref_cnt += 1
            if block.ref_cnt > 1:
                self.num_extra_refs += 1
                self.num_shared_blocks += block.ref_cnt == 2

    def release(self, blocks: Iterable[KVBlock]) -> None:
        """One block table let go of these blocks; at refcount 0 a block becomes free,
        or evictable if it is cached.

        Pass blocks in eviction order: the first ones released are the first reused.
        """
        for block in blocks:
            if block.ref_cnt < 1:
                raise BlockPoolError(f"block {block.block_id} released more often than held")
            if block.ref_cnt > 1:
                self.num_extra_refs -= 1
                self.num_shared_blocks -= block.ref_cnt == 2
            block.ref_cnt -= 1
            if block.ref_cnt == 0:
                queue = self.free if block.block_hash is None else self.evictable
                queue.append(block)

    # -- the prefix cache ---------------------------------------------------------------

    def lookup(self, block_hash: BlockHash, token_ids: Sequence[int]) -> KVBlock | None:
        """The cached block with this hash, if it really holds these tokens."""
        block = self.cached.get(block_hash)
        if block is None or block.token_ids != tuple(token_ids):
            return None
        return block

    def cache(self, block: KVBlock, block_hash: BlockHash, token_ids: Sequence[int]) -> bool:
        """Register a full, computed block under its hash. A block already cached, or a
        hash already held by another block (two requests computed the same content),
        is left as it is; returns whether the block was added."""
        if not self.enable_caching or block.block_hash is not None or block_hash in self.cached:
            return False
        block.block_hash = block_hash
        block.token_ids = tuple(token_ids)
        self.cached[block_hash] = block
        return True

    def reset_prefix_cache(self) -> int:
        """Forget every cached block (evictable ones become free); returns how many."""
        count = len(self.cached)
        for block in list(self.cached.values()):
            if block.ref_cnt == 0:
                self.evictable.remove(block)
                self.free.append(block)
            self._uncache(block)
        return count

    def _uncache(self, block: KVBlock) -> None:
        if block.block_hash is not None:
            del self.cached[block.block_hash]
        block.block_hash = None
        block.token_ids = None

    def usage(self) -> float:
        return self.num_used_blocks / self.num_blocks

    def check_invariants(self) -> None:
        """Raise BlockPoolError if the bookkeeping disagrees with itself (for tests)."""
        free_ids = set(self.free.block_ids())
        evictable_ids = set(self.evictable.block_ids())
        for block in self.blocks:
            if block.ref_cnt < 0:
                raise BlockPoolError(f"{block} has a negative refcount")
            in_free, in_evictable = block.block_id in free_ids, block.block_id in evictable_ids
            if block.ref_cnt == 0 and in_free == in_evictable:
                raise BlockPoolError(f"{block} is unused but not in exactly one queue")
            if block.ref_cnt > 0 and (in_free or in_evictable):
                raise BlockPoolError(f"{block} is in use and queued as free")
            if in_evictable and block.block_hash is None:
                raise BlockPoolError(f"{block} is evictable but not cached")
            if in_free and block.block_hash is not None:
                raise BlockPoolError(f"{block} is cached but in the free queue")
            if block.block_hash is not None and self.cached.get(block.block_hash) is not block:
                raise BlockPoolError(f"{block} has a hash the cache does not map to it")
        if self.num_shared_blocks != sum(b.ref_cnt > 1 for b in self.blocks) or \
                self.num_extra_refs != sum(max(0, b.ref_cnt - 1) for b in self.blocks):
            raise BlockPoolError("the shared-block counters disagree with the refcounts")
        if len(free_ids) != self.free.num_free or len(evictable_ids) != self.evictable.num_free:
            raise BlockPoolError("a queue's count disagrees with its length")
