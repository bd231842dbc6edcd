"""small_gemm is row-invariant: a row's output has the same bits whatever the number of
rows in the call (speculative verification relies on it), at the bundled model's shapes,
in every build (bf16 dot products with AVX512-BF16, float32 FMAs elsewhere) and for
bf16 or float32 activations and weights; and so is a float32 Linear on its packed weight."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from kvscope.kernels.build import cpu_kernels
from kvscope.model.layers import linear as linear_mod

ROWS = [1, 2, 3, 4, 5, 7, 8, 13, 16, 33, 64]
# SmolLM2-135M: (out, in) of qkv, o_proj, gate_up, down, lm_head
SHAPES = [(960, 576), (576, 576), (3072, 576), (576, 1536), (49152, 576)]


DTYPES = {"bf16": (torch.bfloat16, torch.bfloat16),
          "fp32-x-bf16-w": (torch.float32, torch.bfloat16),
          "fp32": (torch.float32, torch.float32)}


@pytest.mark.parametrize(("n_out", "k_in"), SHAPES)
@pytest.mark.parametrize("with_bias", [False, True])
@pytest.mark.parametrize("dtypes", DTYPES)
def test_rows_do_not_depend_on_the_batch(kernels, n_out: int, k_in: int, with_bias: bool,
                                         dtypes: str):
    if kernels.isa() == "generic" and n_out == 49152:
        pytest.skip("the plain-array build runs the same code at every shape; at the LM "
                    "head's it only costs CI time (10+ s per case)")
    x_dtype, w_dtype = DTYPES[dtypes]
    gen = torch.Generator().manual_seed(n_out + k_in)
    x = torch.randn(max(ROWS), k_in, generator=gen).to(x_dtype)
    weight = (torch.randn(n_out, k_in, generator=gen) * k_in ** -0.5).to(w_dtype)
    bias = torch.randn(n_out, generator=gen).to(w_dtype) if with_bias else None
    alone = torch.cat([kernels.small_gemm(x[i:i + 1], weight, bias) for i in range(len(x))])
    for m in ROWS:
        assert torch.equal(kernels.small_gemm(x[:m], weight, bias), alone[:m]), m
    # a batch whose rows start mid-way through x (other neighbours, other tile positions)
    assert torch.equal(kernels.small_gemm(x[3:40].contiguous(), weight, bias), alone[3:40])
    expected = F.linear(x.float(), weight.float(), None if bias is None else bias.float())
    torch.testing.assert_close(alone.float(), expected, atol=2e-2, rtol=1e-2)


def test_row_invariant_bound_routes_calls_to_small_gemm(monkeypatch: pytest.MonkeyPatch):
    kernels = cpu_kernels()
    if kernels is None:
        pytest.skip("C++ kernels could not be built here")
    gen = torch.Generator().manual_seed(0)
    weight = (torch.randn(960, 576, generator=gen) * 576 ** -0.5).bfloat16()
    packed = linear_mod.pack_weight(weight)
    x = torch.randn(16, 576, generator=gen).bfloat16()
    alone = kernels.small_gemm(x[:1], weight, None)
    monkeypatch.setattr(linear_mod, "ROW_INVARIANT_MAX_ROWS", 4)  # restored afterwards
    assert linear_mod.set_row_invariant(64) == 4
    for m in (1, 5, 16):
        assert torch.equal(linear_mod.linear(x[:m], weight, None, packed)[:1], alone)
    linear_mod.set_row_invariant(4)
    out = linear_mod.linear(x, weight, None, packed)  # 16 rows: oneDNN (or F.linear)
    if linear_mod.small_gemm_takes_all():  # no bf16 arithmetic: small_gemm all the same
        assert packed is None and torch.equal(out, kernels.small_gemm(x, weight, None))
    torch.testing.assert_close(out.float(), F.linear(x.float(), weight.float()),
                               atol=2e-2, rtol=1e-2)
    with pytest.raises(ValueError):
        linear_mod.set_row_invariant(-1)


@pytest.mark.parametrize(("n_out", "k_in"), SHAPES)
@pytest.mark.parametrize("with_bias", [False, True])
def test_float32_linear_rows_do_not_depend_on_the_batch(n_out: int, k_in: int,
                                                        with_bias: bool):
    """A float32 Linear multiplies on oneDNN's packed copy of its weight, which gives a
    row the same bits in a call of any size (F.linear does not: MKL's GEMM changes its
    blocking with the row count), so float32 decode rows are batch invariant too."""
    assert torch.backends.mkldnn.is_available(), "torch's CPU wheel ships oneDNN"
    gen = torch.Generator().manual_seed(n_out + k_in)
    module = linear_mod.Linear.from_weight(torch.randn(n_out, k_in, generator=gen) * k_in ** -0.5)
    if with_bias:
        module.bias = torch.nn.Parameter(torch.randn(n_out, generator=gen), requires_grad=False)
    module.pack()
    assert module.packed is not None
    x = torch.randn(300, k_in, generator=gen)
    alone = torch.cat([module(x[i:i + 1]) for i in range(max(ROWS))])
    for m in ROWS:
        assert torch.equal(module(x[:m]), alone[:m]), m
    assert torch.equal(module(x[3:40].contiguous()), alone[3:40])
    assert torch.equal(module(x)[:max(ROWS)], alone)  # a prefill-sized call
    expected = F.linear(x[:max(ROWS)], module.weight, module.bias)
    torch.testing.assert_close(alone, expected, atol=1e-4, rtol=1e-4)
