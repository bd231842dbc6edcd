"""The CPU attention backend: paged attention by C++ kernels, with torch twins.

The KV pool of one layer is a pair of tensors [num_blocks, block_size, kv_heads,
head_dim]. New K/V are written by slot mapping in one indexed copy. Decodes are
handled together: by the C++ kernel, which reads K/V in place through the block
tables, or (without a compiler) by gathering each sequence's blocks into a padded
copy and masking. Prefill chunks are likewise handled all together by a C++ kernel
that reads each chunk's context through its block table (the chunk's own K/V are
written first); without it, each chunk gets its own SDPA call: a chunk that starts at
position 0 attends to its own fresh K/V without touching the pool, a later one
gathers its context and masks by position.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from kvscope.attention.metadata import AttentionMetadata
from kvscope.kernels.build import cpu_kernels


def write_kv(k_cache: torch.Tensor, v_cache: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
             slot_mapping: torch.Tensor) -> None:
    kernel = cpu_kernels()
    if kernel is not None:
        kernel.write_kv(k_cache, v_cache, k, v, slot_mapping)
        return
    write_kv_torch(k_cache, v_cache, k, v, slot_mapping)


def write_kv_torch(k_cache: torch.Tensor, v_cache: torch.Tensor, k: torch.Tensor,
                   v: torch.Tensor, slot_mapping: torch.Tensor) -> None:
    kv_heads, head_dim = k_cache.shape[-2:]
    k_cache.view(-1, kv_heads, head_dim).index_copy_(0, slot_mapping, k)
    v_cache.view(-1, kv_heads, head_dim).index_copy_(0, slot_mapping, v)


def gather_context(cache: torch.Tensor, block_table: torch.Tensor) -> torch.Tensor:
    """[..., blocks] table → [..., blocks * block_size, kv_heads, head_dim] (a copy)."""
    gathered = cache[block_table]  # [..., nb, bs, kvh, d]
    *lead, nb, bs, kvh, d = gathered.shape
    return gathered.view(*lead, nb * bs, kvh, d)


def decode_attention_torch(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                           block_tables: torch.Tensor, context_lens: torch.Tensor) -> torch.Tensor:
    """Reference decode attention: q [D, H, d] → [D, H, d], gathering and masking."""
    num, heads, dim = q.shape
    kv_heads = k_cache.shape[2]
    keys = gather_context(k_cache, block_tables)  # [D, L, kvh, d]
    values = gather_context(v_cache, block_tables)
    grouped = q.view(num, kv_heads, heads // kv_heads, dim)
    scores = torch.einsum("nkgd,nlkd->nkgl", grouped, keys).float() * dim ** -0.5
    visible = torch.arange(keys.shape[1])[None, :] < context_lens[:, None]
    scores.masked_fill_(~visible[:, None, None, :], float("-inf"))
    probs = torch.softmax(scores, dim=-1).to(q.dtype)
    return torch.einsum("nkgl,nlkd->nkgd", probs, values).reshape(num, heads, dim)


def decode_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                     block_tables: torch.Tensor, context_lens: torch.Tensor) -> torch.Tensor:
    kernel = cpu_kernels()
    if kernel is None:
        return decode_attention_torch(q, k_cache, v_cache, block_tables, context_lens)
    return kernel.paged_decode_attention(q.contiguous(), k_cache, v_cache, block_tables,
                                         context_lens, q.shape[-1] ** -0.5)


def paged_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                    k_cache: torch.Tensor, v_cache: torch.Tensor,
                    meta: AttentionMetadata) -> torch.Tensor:
    """q [T, H, d], k/v [T, kvh, d] for the step's tokens → output [T, H, d]."""
    write_kv(k_cache, v_cache, k, v, meta.slot_mapping)
    num_decodes = meta.num_decodes
    if num_decodes == q.shape[0]:  # a pure decode step: no copy of the output needed
        return _decodes(q, k_cache, v_cache, meta)
    kernel = cpu_kernels()
    if kernel is not None:
        batch = meta.prefill_batch()
        # the kernel writes the prefill rows; the decode rows in front come back zero
        out = kernel.paged_prefill_attention(q, k_cache, v_cache, batch.block_tables,
                                             batch.query_starts, batch.start_positions,
                                             q.shape[-1] ** -0.5)
        if num_decodes:
            out[:num_decodes] = _decodes(q[:num_decodes], k_cache, v_cache, meta)
        return out
    return _prefills_torch(q, k, v, k_cache, v_cache, meta)


def _prefills_torch(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                    k_cache: torch.Tensor, v_cache: torch.Tensor,
                    meta: AttentionMetadata) -> torch.Tensor:
    """The fallback: decodes together, then one SDPA call per prefill chunk."""
    num_decodes = meta.num_decodes
    out = torch.empty_like(q)
    if num_decodes:
        out[:num_decodes] = _decodes(q[:num_decodes], k_cache, v_cache, meta)
    for chunk in meta.prefills:
        queries = q[chunk.begin:chunk.end].transpose(0, 1).unsqueeze(0)  # [1, H, n, d]
        if chunk.mask is None:
            keys = k[chunk.begin:chunk.end].transpose(0, 1).unsqueeze(0)
            values = v[chunk.begin:chunk.end].transpose(0, 1).unsqueeze(0)
            result = F.scaled_dot_product_attention(queries, keys, values, is_causal=True,
                                                    enable_gqa=True)
        else:
            context = chunk.mask.shape[1]
            keys = gather_context(k_cache, chunk.block_table)[:context].transpose(0, 1)
            values = gather_context(v_cache, chunk.block_table)[:context].transpose(0, 1)
            result = F.scaled_dot_product_attention(queries, keys.unsqueeze(0),
                                                    values.unsqueeze(0), attn_mask=chunk.mask,
                                                    enable_gqa=True)
        out[chunk.begin:chunk.end] = result.squeeze(0).transpose(0, 1)
    return out


def _decodes(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
             meta: AttentionMetadata) -> torch.Tensor:
    assert meta.decode_block_tables is not None and meta.decode_context_lens is not None
    return decode_attention(q, k_cache, v_cache, meta.decode_block_tables,
                            meta.decode_context_lens)
