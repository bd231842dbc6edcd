"""Per-step attention metadata: the small index tensors built once per step and
read by every layer (one context object instead of arguments through every call)."""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import pairwise
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from kvscope.model.probe import ForwardProbe


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
class PrefillBatch:
    """All prefill chunks of a step as index tensors, for a kernel that takes every
    chunk in one call. Chunk c is rows [query_starts[c], query_starts[c + 1])."""

    block_tables: torch.Tensor  # [C, max_blocks] long, zero-padded
    query_starts: torch.Tensor  # [C + 1] long
    start_positions: torch.Tensor  # [C] long


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
    # set only in a step that computes the probed request's tokens (the scope's
    # lessons look inside the forward pass: model/probe.py)
    probe: ForwardProbe | None = None
    _prefill_batch: PrefillBatch | None = field(default=None, repr=False)

    def prefill_batch(self) -> PrefillBatch:
        """The prefill chunks as one batch: built on first use, then shared by every
        layer of the step. The chunks must be consecutive rows of the flat batch."""
        if self._prefill_batch is None:
            chunks = self.prefills
            assert chunks, "no prefill chunks in this step"
            assert all(a.end == b.begin for a, b in pairwise(chunks)), \
                "prefill chunks must be consecutive rows"
            tables = torch.nn.utils.rnn.pad_sequence([c.block_table for c in chunks],
                                                     batch_first=True)
            self._prefill_batch = PrefillBatch(
                block_tables=tables,
                query_starts=torch.tensor([c.begin for c in chunks] + [chunks[-1].end],
                                          dtype=torch.long),
                start_positions=torch.tensor([c.start_pos for c in chunks], dtype=torch.long))
        return self._prefill_batch
