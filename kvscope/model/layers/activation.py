"""SiLU-gated MLP activation over a fused gate/up projection."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from kvscope.kernels.build import cpu_kernels


def silu_and_mul(gate_up: torch.Tensor) -> torch.Tensor:
    """[T, 2I] → silu(gate) * up, [T, I]."""
    kernels = cpu_kernels()
    if kernels is not None:
        return kernels.silu_and_mul(gate_up)
    gate, up = gate_up.chunk(2, dim=-1)
    return F.silu(gate) * up
