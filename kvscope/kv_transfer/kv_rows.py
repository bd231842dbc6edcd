"""A request's K/V as token rows: read out of the paged pool and written into another
pool's blocks, whatever the two pools' block sizes (each token's slot is its block's
id × block size + its offset, as the attention kernels address it)."""

from __future__ import annotations

import hashlib

import torch


def token_slots(block_ids: list[int], block_size: int, start: int, stop: int) -> torch.Tensor:
    return torch.tensor([block_ids[p // block_size] * block_size + p % block_size
                         for p in range(start, stop)], dtype=torch.long)


def read_rows(pool: torch.Tensor, block_ids: list[int], start: int, stop: int) -> torch.Tensor:
    """Positions [start, stop) of a request: [layers, 2, stop - start, kv heads, head dim]."""
    layers, kv, num_blocks, block_size, *rest = pool.shape
    flat = pool.view(layers, kv, num_blocks * block_size, *rest)
    return flat.index_select(2, token_slots(block_ids, block_size, start, stop)).contiguous()


def write_rows(pool: torch.Tensor, block_ids: list[int], start: int, rows: torch.Tensor) -> None:
    """Put rows (as read_rows gives them) at positions start, start + 1, ... of the
    request whose blocks are `block_ids`."""
    layers, kv, num_blocks, block_size, *rest = pool.shape
    if tuple(rows.shape[:2]) != (layers, kv) or tuple(rows.shape[3:]) != tuple(rest):
        raise ValueError(f"K/V rows of shape {list(rows.shape)} do not fit a pool of "
                         f"shape {list(pool.shape)}")
    flat = pool.view(layers, kv, num_blocks * block_size, *rest)
    slots = token_slots(block_ids, block_size, start, start + rows.shape[2])
    flat.index_copy_(2, slots, rows.to(pool.dtype))


def prompt_key(token_ids: list[int]) -> str:
    """A name for a prompt's K/V (the same tokens give the same name on every server)."""
    return hashlib.sha256(repr(list(token_ids)).encode()).hexdigest()[:32]
