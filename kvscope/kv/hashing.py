"""Content hashes of full KV blocks, chained so that a hash names a whole prefix.

A full block's hash covers its parent block's hash, its own token ids and extra keys
(the request's `cache_salt`, in the first block only, since the chain carries it on).
Two requests whose prompts agree on the first k full blocks therefore get the same
first k hashes, and can share those blocks (block hashing as in vLLM's prefix cache).
The hash is a 128-bit BLAKE2b digest; a hit also compares the block's token ids, so
even a collision cannot hand out the K/V of other tokens.
"""

from __future__ import annotations

import hashlib
from array import array
from collections.abc import Sequence

BlockHash = bytes


def hash_block(parent: BlockHash | None, token_ids: Sequence[int],
               extra: str | None = None) -> BlockHash:
    digest = hashlib.blake2b(digest_size=16)
    digest.update(parent or b"root")
    digest.update(array("q", token_ids).tobytes())
    if extra is not None:
        digest.update(b"salt:" + extra.encode("utf-8"))
    return digest.digest()


def extend_block_hashes(hashes: list[BlockHash], token_ids: Sequence[int], block_size: int,
                        salt: str | None = None) -> list[BlockHash]:
    """Append the hashes of every full block of `token_ids` not hashed yet (in place)."""
    for index in range(len(hashes), len(token_ids) // block_size):
        begin = index * block_size
        parent = hashes[-1] if hashes else None
        hashes.append(hash_block(parent, token_ids[begin:begin + block_size],
                                 salt if index == 0 else None))
    return hashes
