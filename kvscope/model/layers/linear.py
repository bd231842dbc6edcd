"""Linear layers that pick their kernel by batch size.

With one to four rows (small-batch decode) a bf16 linear is bound by reading its
weights, and the C++ `small_gemm` streams them about twice as fast as the library
GEMM. From five rows on, oneDNN's GEMM wins; in bf16 it runs on a copy of the weight
pre-packed once into its blocked layout, which saves the re-layout it would otherwise
do on every call (15-25% at 64 rows). The packed copy costs the weight's size again.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from kvscope.kernels.build import cpu_kernels

SMALL_GEMM_MAX_ROWS = 4
_PACK_BATCH_HINT = 64  # rows oneDNN should expect; any row count works with the result


def _small_gemm_fits(x: torch.Tensor, weight: torch.Tensor) -> bool:
    return (x.dtype == torch.bfloat16 and x.dim() == 2 and x.shape[0] <= SMALL_GEMM_MAX_ROWS
            and x.is_contiguous() and weight.shape[1] % 32 == 0 and weight.shape[0] % 8 == 0)


def pack_weight(weight: torch.Tensor) -> torch.Tensor | None:
    """oneDNN's blocked copy of a bf16 weight, or None where that is unavailable."""
    if weight.dtype != torch.bfloat16 or not torch.backends.mkldnn.is_available():
        return None
    try:
        return torch.ops.mkldnn._reorder_linear_weight(weight, _PACK_BATCH_HINT)
    except (RuntimeError, AttributeError):
        return None


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
           packed: torch.Tensor | None = None) -> torch.Tensor:
    kernels = cpu_kernels()
    if kernels is not None and kernels.small_gemm_supported() and _small_gemm_fits(x, weight):
        return kernels.small_gemm(x, weight, bias)
    if packed is not None and x.dim() == 2:
        return torch.ops.mkldnn._linear_pointwise(x, packed, bias, "none", [], "")
    return F.linear(x, weight, bias)


class Linear(nn.Module):
    """y = x Wᵀ + b with the kernel choice above; call `pack()` once weights are loaded."""

    def __init__(self, in_features: int, out_features: int, bias: bool = False) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(out_features, in_features, device="meta"),
                                   requires_grad=False)
        self.bias = (nn.Parameter(torch.empty(out_features, device="meta"), requires_grad=False)
                     if bias else None)
        self.packed: torch.Tensor | None = None

    @classmethod
    def from_weight(cls, weight: torch.Tensor) -> Linear:
        layer = cls(weight.shape[1], weight.shape[0])
        layer.weight = nn.Parameter(weight, requires_grad=False)
        return layer

    def pack(self) -> None:
        self.packed = pack_weight(self.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(x, self.weight, self.bias, self.packed)
