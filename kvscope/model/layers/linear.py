"""Linear layers that pick their kernel by batch size and by what the CPU multiplies.

A float32 linear runs oneDNN on a copy of its weight pre-packed once into oneDNN's
blocked layout. Measured on a 2-core AVX2 Zen 3 at the bundled model's shapes, that is
faster than `F.linear` (the MKL GEMM, which re-lays the weight out on every call) from
4 rows up, 1.1-1.6x at 64 rows and 2x for the 49152-row output head, and at 1 row about
even (the head 1.6x); and unlike `F.linear` it gives a row the same bits whatever the
number of rows in the call (tests/test_row_invariant_linear.py), so a float32 decode
row is batch invariant too. The packed copy costs the weight's size again.

With few rows (decode) a bf16 linear is bound by reading its weights, and the C++
`small_gemm` streams them faster than the library GEMM. Where the CPU multiplies bf16
natively (AVX512-BF16), oneDNN's GEMM is faster with many rows (prefill); it runs on a
copy of the weight pre-packed once into its blocked layout, which saves the re-layout
it would otherwise do on every call (15-25% at 64 rows). The packed copy costs the
weight's size again. Where the CPU has no bf16 arithmetic (AVX2, AVX-512 without
BF16), oneDNN emulates it slowly (on a 2-core AVX-512 machine 18-54 GFLOP/s from 4 to
256 rows, on AVX2 well under 1) while `small_gemm` widens the bf16 weights to float32 in
registers (25-140 GFLOP/s there, 1.2-3x oneDNN's at every row count measured): it takes
every bf16 call, and no packed copy is made (benchmarks/row_invariant_linear.py).

Row invariance: `small_gemm` gives a row the same bits whatever the number of rows in
the call, and so does oneDNN among calls of 5+ rows, but the two round differently now
and then, which flips a greedy token once in a while. So every call of up to
ROW_INVARIANT_MAX_ROWS rows takes `small_gemm`, and in larger calls (steps that prefill)
the leading decode rows still do (`num_decode_rows`): a decode row, and a speculative
verification row, which is computed as a decode row, gets the same bits whatever else
is in the step. Greedy output with speculative decoding then equals plain greedy output
in bf16 too, on every CPU. On the 2-core AVX512-BF16 bench machine small_gemm is as
fast as oneDNN or faster up to about 16-32 rows and at most ~10% slower at 64.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from kvscope.kernels.build import cpu_kernels

# calls of up to this many rows use small_gemm (where it fits), larger ones oneDNN
ROW_INVARIANT_MAX_ROWS = 64
_PACK_BATCH_HINT = 64  # rows oneDNN should expect; any row count works with the result


def set_row_invariant(max_rows: int) -> int:
    """Send bf16 calls of up to `max_rows` rows to `small_gemm` (and larger ones, but for
    their decode rows, to oneDNN); returns the previous bound."""
    global ROW_INVARIANT_MAX_ROWS
    if max_rows < 0:
        raise ValueError(f"max_rows must be >= 0, got {max_rows}")
    previous, ROW_INVARIANT_MAX_ROWS = ROW_INVARIANT_MAX_ROWS, max_rows
    return previous


def _small_gemm_fits(x: torch.Tensor, weight: torch.Tensor) -> bool:
    return (cpu_kernels() is not None
            and x.dtype == torch.bfloat16 and weight.dtype == torch.bfloat16 and x.dim() == 2
            and x.is_contiguous() and weight.is_contiguous()
            and weight.shape[1] % 32 == 0 and weight.shape[0] % 8 == 0)


def small_gemm_takes_all() -> bool:
    """True where `small_gemm` takes every bf16 call: the CPU has no bf16 arithmetic."""
    kernels = cpu_kernels()
    return kernels is not None and not kernels.small_gemm_bf16_dot()


def pack_weight(weight: torch.Tensor) -> torch.Tensor | None:
    """oneDNN's blocked copy of a float32 weight, or of a bf16 one where the CPU
    multiplies bf16 natively; None where that is unavailable or would not be used."""
    if not torch.backends.mkldnn.is_available() or weight.dim() != 2:
        return None
    if weight.dtype == torch.bfloat16 and small_gemm_takes_all():
        return None
    if weight.dtype not in (torch.float32, torch.bfloat16):
        return None
    try:
        return torch.ops.mkldnn._reorder_linear_weight(weight, _PACK_BATCH_HINT)
    except (RuntimeError, AttributeError):
        return None


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
           packed: torch.Tensor | None = None, num_decode_rows: int = 0) -> torch.Tensor:
    """x Wᵀ + b; the first `num_decode_rows` rows of x are decode rows (see above)."""
    if not _small_gemm_fits(x, weight):
        return _library_linear(x, weight, bias, packed)
    small_gemm = cpu_kernels().small_gemm
    rows = x.shape[0]
    if rows <= ROW_INVARIANT_MAX_ROWS or num_decode_rows >= rows or small_gemm_takes_all():
        return small_gemm(x, weight, bias)
    if not num_decode_rows:
        return _library_linear(x, weight, bias, packed)
    out = torch.empty(rows, weight.shape[0], dtype=x.dtype)
    out[:num_decode_rows] = small_gemm(x[:num_decode_rows], weight, bias)
    out[num_decode_rows:] = _library_linear(x[num_decode_rows:], weight, bias, packed)
    return out


def _library_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                    packed: torch.Tensor | None) -> torch.Tensor:
    if packed is not None and x.dim() == 2 and x.dtype == packed.dtype:
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

    def forward(self, x: torch.Tensor, num_decode_rows: int = 0) -> torch.Tensor:
        return linear(x, self.weight, self.bias, self.packed, num_decode_rows)
