"""The attention backend: the one seam through which the model reads and writes the
paged KV pool. A backend takes the step's q [T, H, d] and new k/v [T, kvh, d], one
layer's K and V pools and the step's AttentionMetadata, writes the new K/V by slot
mapping before any read, and returns the attention output [T, H, d]. "cpu" (C++
kernels first, torch twins where they cannot be built) is the one there is; a GPU
backend (Triton, FlashAttention) registers beside it.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from kvscope.attention import cpu_backend
from kvscope.attention.metadata import AttentionMetadata

AttentionBackend = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor,
                             torch.Tensor, AttentionMetadata], torch.Tensor]

BACKENDS: dict[str, AttentionBackend] = {"cpu": cpu_backend.paged_attention}
DEFAULT_BACKEND = "cpu"


def attention_backend(name: str = DEFAULT_BACKEND) -> AttentionBackend:
    try:
        return BACKENDS[name]
    except KeyError:
        raise ValueError(f"unknown attention backend {name!r}; known: {sorted(BACKENDS)}") \
            from None
