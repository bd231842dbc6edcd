"""The C++ CPU kernels equal their torch twins (the reference each replaces)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from kvscope.kernels.build import cpu_kernels
from kvscope.model.layers.linear import pack_weight
from kvscope.model.layers.norm import rms_norm_torch
from kvscope.model.layers.rotary import apply_rope, rope_tables

kernels = cpu_kernels()
pytestmark = pytest.mark.skipif(kernels is None, reason="C++ kernels could not be built here")

DTYPES = [torch.float32, torch.bfloat16]


def tolerance(dtype: torch.dtype) -> dict[str, float]:
    return {"atol": 1e-5, "rtol": 1e-5} if dtype == torch.float32 else {"atol": 2e-2, "rtol": 2e-2}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rows", [1, 7, 100])
def test_rms_norm_and_fused_residual_add(dtype: torch.dtype, rows: int):
    gen = torch.Generator().manual_seed(rows)
    x = torch.randn(rows, 576, generator=gen).to(dtype)
    residual = torch.randn(rows, 576, generator=gen).to(dtype)
    weight = torch.rand(576, generator=gen).to(dtype) + 0.5
    torch.testing.assert_close(kernels.rms_norm(x, weight, 1e-5),
                               rms_norm_torch(x, weight, 1e-5), **tolerance(dtype))
    expected_residual = residual + x
    expected = rms_norm_torch(expected_residual, weight, 1e-5)
    mine = residual.clone()
    out = kernels.add_rms_norm(x, mine, weight, 1e-5)
    assert torch.equal(mine, expected_residual)  # the residual stream is updated in place
    torch.testing.assert_close(out, expected, **tolerance(dtype))


@pytest.mark.parametrize("dtype", DTYPES)
def test_silu_and_mul(dtype: torch.dtype):
    gate_up = (torch.randn(33, 2 * 1536, generator=torch.Generator().manual_seed(1)) * 4).to(dtype)
    gate, up = gate_up.chunk(2, dim=-1)
    torch.testing.assert_close(kernels.silu_and_mul(gate_up), F.silu(gate) * up,
                               **tolerance(dtype))


@pytest.mark.parametrize("dtype", DTYPES)
def test_rope_rotates_q_and_k_heads_only(dtype: torch.dtype):
    heads, kv_heads, dim, tokens = 9, 3, 64, 20
    cos, sin = rope_tables(dim, 64, 100000.0)
    positions = torch.randint(0, 64, (tokens,), generator=torch.Generator().manual_seed(2))
    cos, sin = cos[positions].to(dtype), sin[positions].to(dtype)
    qkv = torch.randn(tokens, (heads + 2 * kv_heads) * dim).to(dtype)
    rotated = heads + kv_heads
    expected = qkv.clone()
    qk = expected[:, :rotated * dim].view(tokens, rotated, dim)
    qk.copy_(apply_rope(qk, cos.unsqueeze(1), sin.unsqueeze(1)))
    kernels.rope_inplace(qkv, cos, sin, rotated, dim)
    torch.testing.assert_close(qkv, expected, **tolerance(dtype))
    assert torch.equal(qkv[:, rotated * dim:], expected[:, rotated * dim:])  # v untouched


@pytest.mark.skipif(kernels is None or not kernels.small_gemm_supported(),
                    reason="needs AVX512-BF16")
@pytest.mark.parametrize("rows", [1, 2, 3, 4])
@pytest.mark.parametrize("with_bias", [False, True])
def test_small_gemm_matches_linear(rows: int, with_bias: bool):
    gen = torch.Generator().manual_seed(rows)
    x = torch.randn(rows, 576, generator=gen).bfloat16()
    weight = torch.randn(1152, 576, generator=gen).bfloat16()
    bias = torch.randn(1152, generator=gen).bfloat16() if with_bias else None
    expected = F.linear(x.float(), weight.float(), None if bias is None else bias.float())
    torch.testing.assert_close(kernels.small_gemm(x, weight, bias).float(), expected,
                               atol=0.1, rtol=1e-2)


def test_packed_weight_gives_identical_linear():
    weight = torch.randn(960, 576, generator=torch.Generator().manual_seed(3)).bfloat16()
    packed = pack_weight(weight)
    if packed is None:
        pytest.skip("oneDNN weight packing is not available here")
    for rows in (5, 64, 300):
        x = torch.randn(rows, 576).bfloat16()
        out = torch.ops.mkldnn._linear_pointwise(x, packed, None, "none", [], "")
        assert torch.equal(out, F.linear(x, weight))
    assert pack_weight(weight.float()) is None  # float32 weights stay unpacked
