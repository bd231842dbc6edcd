"""A linear layer whose weight stays quantized (`model/quant.py`): the C++ kernels read
the packed integers and widen them in registers; without the kernels the weight is
dequantized on each call (correct, slow)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from kvscope.kernels.build import cpu_kernels
from kvscope.model.quant import QuantizedTensor


class QuantizedLinear(nn.Module):
    def __init__(self, weight: QuantizedTensor, bias: torch.Tensor | None = None) -> None:
        super().__init__()
        self.weight = weight
        self.bias = None if bias is None else bias.float().contiguous()
        self.out_features, self.in_features = weight.shape

    def forward(self, x: torch.Tensor, num_decode_rows: int = 0) -> torch.Tensor:
        """x W^T + b; every row is computed the same whatever the rows around it, so
        `num_decode_rows` needs no special path."""
        kernels = cpu_kernels()
        shape = x.shape
        x2 = x.reshape(-1, shape[-1]).contiguous()
        w = self.weight
        if kernels is None:
            bias = None if self.bias is None else self.bias.to(x.dtype)
            out = F.linear(x2, w.dequantize().to(x.dtype), bias)
        elif w.fmt == "q4":
            out = kernels.q4_linear(x2, w.q, w.scales, w.offsets, w.zero, self.bias)
        else:
            out = kernels.q8_linear(x2, w.q, w.scales, self.bias)
        return out.view(*shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"fmt={self.weight.fmt}")
