"""RMSNorm, computed in float32 whatever the model dtype (as the reference does).

`forward(x, residual)` fuses the residual add into the norm: the residual stream is
updated in place (residual += x) and the normalised residual returned, so a decoder
layer is add-norm, attention, add-norm, MLP.
"""

from __future__ import annotations

import torch
from torch import nn

from kvscope.kernels.build import cpu_kernels


def rms_norm_torch(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    x32 = x.float()
    x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)
    return weight * x32.to(x.dtype)


class RMSNorm(nn.Module):
    def __init__(self, size: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size), requires_grad=False)
        self.eps = eps

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        kernels = cpu_kernels()
        if residual is None:
            if kernels is not None and x.is_contiguous():
                return kernels.rms_norm(x, self.weight, self.eps)
            return rms_norm_torch(x, self.weight, self.eps)
        if kernels is not None:
            return kernels.add_rms_norm(x, residual, self.weight, self.eps)
        residual.add_(x)
        return rms_norm_torch(residual, self.weight, self.eps)
