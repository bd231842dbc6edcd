"""Paged attention on CPU in plain torch.

The KV pool of one layer is a pair of tensors [num_blocks, block_size, kv_heads,
head_dim]. New K/V are written by slot mapping in one indexed copy; each query
reads its context by gathering the blocks of its block table. Decodes are batched
into one SDPA call (padded to the longest context and masked); each prefill chunk
gets its own call, and a chunk that starts at position 0 attends to its own fresh
K/V without touching the pool.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from kvscope.attention.metadata import AttentionMetadata


def write_kv(k_cache: torch.Tensor, v_cache: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
             slot_mapping: torch.Tensor) -> None:
    kv_heads, head_dim = k_cache.shape[-2:]
    k_cache.view(-1, kv_heads, head_dim).index_copy_(0, slot_mapping, k)
    v_cache.view(-1, kv_heads, head_dim).index_copy_(0, slot_mapping, v)


def gather_context(cache: torch.Tensor, block_table: torch.Tensor) -> torch.Tensor:
    """[..., blocks] table → [..., kv_heads, blocks * block_size, head_dim]."""
    gathered = cache[block_table]  # [..., nb, bs, kvh, d]
    *lead, nb, bs, kvh, d = gathered.shape
    return gathered.view(*lead, nb * bs, kvh, d).transpose(-3, -2)


def paged_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                    k_cache: torch.Tensor, v_cache: torch.Tensor,
                    meta: AttentionMetadata) -> torch.Tensor:
    """q [T, H, d], k/v [T, kvh, d] for the step's tokens → output [T, H, d]."""
    write_kv(k_cache, v_cache, k, v, meta.slot_mapping)
    out = torch.empty_like(q)
    num_decodes = meta.num_decodes
    if num_decodes:
        assert meta.decode_block_tables is not None
        keys = gather_context(k_cache, meta.decode_block_tables)
        values = gather_context(v_cache, meta.decode_block_tables)
        queries = q[:num_decodes].unsqueeze(2)  # [D, H, 1, d]
        out[:num_decodes] = F.scaled_dot_product_attention(
            queries, keys, values, attn_mask=meta.decode_mask, enable_gqa=True).squeeze(2)
    for chunk in meta.prefills:
        queries = q[chunk.begin:chunk.end].transpose(0, 1).unsqueeze(0)  # [1, H, n, d]
        if chunk.mask is None:
            keys = k[chunk.begin:chunk.end].transpose(0, 1).unsqueeze(0)
            values = v[chunk.begin:chunk.end].transpose(0, 1).unsqueeze(0)
            result = F.scaled_dot_product_attention(queries, keys, values, is_causal=True,
                                                    enable_gqa=True)
        else:
            context = chunk.mask.shape[1]
            keys = gather_context(k_cache, chunk.block_table)[:, :context].unsqueeze(0)
            values = gather_context(v_cache, chunk.block_table)[:, :context].unsqueeze(0)
            result = F.scaled_dot_product_attention(queries, keys, values,
                                                    attn_mask=chunk.mask, enable_gqa=True)
        out[chunk.begin:chunk.end] = result.squeeze(0).transpose(0, 1)
    return out
