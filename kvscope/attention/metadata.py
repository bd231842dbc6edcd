"""Per-step attention metadata: the small index tensors built once per step and
read by every layer (one context object instead of arguments through every call)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass(slots=True)
class PrefillChunk:
    """A run of `end - begin` query tokens of one request, at positions
    [start_pos, start_pos + end - begin), attending to its whole context."""

    begin: int  # row range in the flat batch
    end: int
    start_pos: int
    block_table: torch.Tensor  # [num_blocks] long: the blocks covering the context
    mask: torch.Tensor | None  # [n, context] bool, None when start_pos == 0 (plain causal)


@dataclass(slots=True)
class AttentionMetadata:
    """The flat batch holds `num_decodes` single-token decodes first, then prefill chunks."""

    slot_mapping: torch.Tensor  # [T] long: pool slot (block_id * block_size + offset)
    cos: torch.Tensor  # [T, head_dim] rotary tables for each row's position
    sin: torch.Tensor
    num_decodes: int = 0
    decode_block_tables: torch.Tensor | None = None  # [D, max_blocks] long
    decode_context_lens: torch.Tensor | None = None  # [D] long
    prefills: list[PrefillChunk] = field(default_factory=list)
