"""A linear layer whose weight stays quantized (`model/quant.py`): the C++ kernels read
the packed integers and widen them in registers; without the kernels the weight is
dequantized on each call (correct, slow). With `int8_activations` (the default) a
4-bit layer's kernel rows are rounded to int8 in groups of 32 and multiplied in
integers (`kernels/int8_gemm.cpp`, llama.cpp's arithmetic); 8-bit layers always
multiply float activations. The int8 kernel reads its weights interleaved 16 rows at a
time (`quant.interleave`, done here at load); a 4-bit layer whose rows are not a multiple
of 16 multiplies float activations instead.

Steps of more than `linear.ROW_INVARIANT_MAX_ROWS` rows (prefill) are compute-bound.
The int8 kernel does 32 integer multiply-adds an instruction (`maddubs`; 64 with VNNI)
where a float32 FMA does 8 (16 on AVX-512), so it outruns the library's float32 GEMM
there too (on a 2-core Zen 3 with AVX2, 170-210 against 120-140 GOP/s at 64-2048 rows):
it takes every row of such a layer, and every row gets the same bits alone or in any
batch. Where the CPU has no bf16 arithmetic, every kernel takes every row of a bf16
step (the library would emulate bf16: under 1 GFLOP/s on AVX2). Only where the CPU
multiplies bf16 natively (AVX512-BF16) is the library's bf16 GEMM on dense weights
faster with many rows; there, and for the float-activation kernels on float32, a big
step's prompt rows go to the library, on a copy of the weight in the activations'
dtype made for the call (GGUF's own formula, so the same weights), and only its decode
rows to the kernels. As with the bf16 linears, a decode (and a speculative
verification) row thus gets the same bits whatever else is in the step.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from kvscope.kernels.build import cpu_kernels
from kvscope.model.layers import linear
from kvscope.model.quant import INTERLEAVE, QuantizedTensor, interleave


class QuantizedLinear(nn.Module):
    def __init__(self, weight: QuantizedTensor, bias: torch.Tensor | None = None,
                 int8_activations: bool = True) -> None:
        super().__init__()
        if weight.fmt != "q4" or weight.shape[0] % INTERLEAVE:
            int8_activations = False
        self.weight = interleave(weight) if int8_activations else weight
        self.int8_activations = int8_activations
        self.bias = None if bias is None else bias.float().contiguous()
        self.out_features, self.in_features = weight.shape

    def forward(self, x: torch.Tensor, num_decode_rows: int = 0) -> torch.Tensor:
        """x W^T + b; the first `num_decode_rows` rows of x are decode rows."""
        kernels = cpu_kernels()
        shape = x.shape
        x2 = x.reshape(-1, shape[-1]).contiguous()
        rows = x2.shape[0]
        if kernels is None:
            out = self._library(x2, self.weight.dequantize())
        elif (rows <= linear.ROW_INVARIANT_MAX_ROWS or num_decode_rows >= rows
              or self.kernel_takes_every_row(x.dtype)):
            out = self._kernel(kernels, x2)
        else:
            out = torch.empty(rows, self.out_features, dtype=x.dtype)
            if num_decode_rows:
                out[:num_decode_rows] = self._kernel(kernels, x2[:num_decode_rows])
            out[num_decode_rows:] = self._library(x2[num_decode_rows:],
                                                  self._dequantized(kernels, x.dtype))
        return out.view(*shape[:-1], self.out_features)

    def kernel_takes_every_row(self, dtype: torch.dtype) -> bool:
        """True where this layer's kernel also takes a big step's prompt rows (see the
        module docstring)."""
        if dtype == torch.bfloat16:  # without bf16 arithmetic the library emulates it
            return linear.small_gemm_takes_all()
        return self.weight.interleaved

    def _kernel(self, kernels: Any, x: torch.Tensor) -> torch.Tensor:
        w = self.weight
        if w.interleaved:
            return kernels.q4_linear_i8(x, w.q, w.scales, w.offsets, w.zero, self.bias)
        if w.fmt == "q4":
            return kernels.q4_linear(x, w.q, w.scales, w.offsets, w.zero, self.bias)
        return kernels.q8_linear(x, w.q, w.scales, self.bias)

    def _dequantized(self, kernels: Any, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The weight dense in `dtype` (float32 or bf16)."""
        w = self.weight
        if w.interleaved:
            return kernels.q4_interleaved_dequantize(w.q, w.scales, w.offsets, w.zero,
                                                     dtype == torch.bfloat16)
        if w.fmt == "q4":
            return kernels.q4_dequantize(w.q, w.scales, w.offsets, w.zero)
        return kernels.q8_dequantize(w.q, w.scales)

    def _library(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        bias = None if self.bias is None else self.bias.to(x.dtype)
        return F.linear(x, weight.to(x.dtype), bias)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"fmt={self.weight.fmt}")
