"""The physical KV blocks: ids, refcounts and an O(1) free list.

A block with refcount 0 sits in the free queue, a doubly linked list threaded
through the blocks themselves (as in vLLM v1), so taking from the head, returning to
the tail and removing from the middle (a later prefix-cache hit) are all O(1).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


class BlockPoolError(RuntimeError):
    """An operation would break a block-pool invariant (a bug, never user input)."""


@dataclass(slots=True, eq=False)
class KVBlock:
    block_id: int
    ref_cnt: int = 0
    prev_free: KVBlock | None = None
    next_free: KVBlock | None = None

    def __repr__(self) -> str:
        return f"KVBlock(id={self.block_id}, ref={self.ref_cnt})"


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
    """Owns every physical block; hands them out and takes them back by refcount."""

    def __init__(self, num_blocks: int) -> None:
        if num_blocks < 1:
            raise BlockPoolError("a block pool needs at least one block")
        self.blocks = [KVBlock(i) for i in range(num_blocks)]
        self.free_queue = FreeBlockQueue(self.blocks)

    @property
    def num_blocks(self) -> int:
        return len(self.blocks)

    @property
    def num_free_blocks(self) -> int:
        return self.free_queue.num_free

    @property
    def num_used_blocks(self) -> int:
        return self.num_blocks - self.num_free_blocks

    def allocate(self, count: int) -> list[KVBlock]:
        """Take `count` blocks from the head of the free queue, each with refcount 1."""
        if count > self.num_free_blocks:
            raise BlockPoolError(f"asked for {count} blocks, only {self.num_free_blocks} free")
        taken = []
        for _ in range(count):
            block = self.free_queue.popleft()
            block.ref_cnt = 1
            taken.append(block)
        return taken

    def share(self, blocks: Iterable[KVBlock]) -> None:
        """One more block table now holds each of these blocks."""
        for block in blocks:
            if block.ref_cnt < 1:
                raise BlockPoolError(f"cannot share free block {block.block_id}")
            block.ref_cnt += 1

    def release(self, blocks: Iterable[KVBlock]) -> None:
        """One block table let go of these blocks; a block at refcount 0 becomes free.

        Pass blocks in eviction order: the first ones freed are the first reused.
        """
        for block in blocks:
            if block.ref_cnt < 1:
                raise BlockPoolError(f"block {block.block_id} released more often than held")
            block.ref_cnt -= 1
            if block.ref_cnt == 0:
                self.free_queue.append(block)

    def usage(self) -> float:
        return self.num_used_blocks / self.num_blocks
