"""Linear layers that pick their kernel by batch size.

With one to four rows (small-batch decode) a bf16 linear is bound by reading its
weights, and the C++ `small_gemm` streams them about twice as fast as the library
GEMM; from five rows on the library GEMM's blocking wins, so it takes over.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from kvscope.kernels.build import cpu_kernels

SMALL_GEMM_MAX_ROWS = 4


def _small_gemm_fits(x: torch.Tensor, weight: torch.Tensor) -> bool:
    return (x.dtype == torch.bfloat16 and x.dim() == 2 and x.shape[0] <= SMALL_GEMM_MAX_ROWS
            and x.is_contiguous() and weight.shape[1] % 32 == 0 and weight.shape[0] % 8 == 0)


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None
           ) -> torch.Tensor:
    kernels = cpu_kernels()
    if kernels is not None and kernels.small_gemm_supported() and _small_gemm_fits(x, weight):
        return kernels.small_gemm(x, weight, bias)
    return F.linear(x, weight, bias)
