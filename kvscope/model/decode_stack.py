"""A decode step's decoder layers in one C++ call (`kernels/decode_stack.cpp`).

At batch 1 on a 135M model a decode step's kernels take a few milliseconds, and the
Python around them (module calls, argument checks, a crossing into C++ for each of
~12 kernels a layer) adds a large share on top. For a step of decodes only, the stack
runs the same kernels in the same order from C++, so the output is bit for bit the
layer loop's, and the step pays for one crossing instead of hundreds: what capturing a
step in a CUDA graph buys on a GPU, done here by hand.

It is built on the first decode step from the model's own modules, and only where
every piece is one it knows: plain `Linear` / `QuantizedLinear` layers (tensor-parallel
linears reduce across ranks: not those), the CPU attention backend, the C++ kernels.
Any other step (prefill rows, a probe looking inside, a layer it does not know) runs
the Python loop. KVSCOPE_DECODE_STACK=0 turns it off.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

import torch

from kvscope.attention import cpu_backend
from kvscope.attention.metadata import AttentionMetadata
from kvscope.kernels.build import cpu_kernels
from kvscope.model.layers import activation, linear, norm, quantized_linear, rotary
from kvscope.model.layers.linear import Linear
from kvscope.model.layers.quantized_linear import QuantizedLinear

if TYPE_CHECKING:
    from kvscope.model.llama import DecoderLayer, LlamaModel

# the kinds of decode_stack.cpp's LinearKind
SMALL_GEMM, LIBRARY, Q4_INT8, Q4_FLOAT, Q8, PACKED = range(6)
_KERNEL_USERS = (cpu_backend, activation, linear, norm, quantized_linear, rotary)


class DecodeStack:
    """The model's decoder layers as one native object; `run` is one decode step."""

    def __init__(self, native: Any, layers: list[DecoderLayer]) -> None:
        self.native = native
        self.num_layers = len(layers)

    @classmethod
    def build(cls, model: LlamaModel) -> DecodeStack | None:
        """The stack of the model's layers, or None where some piece is not one the
        stack runs (then the Python loop does)."""
        kernels = cpu_kernels()
        if os.environ.get("KVSCOPE_DECODE_STACK") == "0" or kernels is None:
            return None
        layers = list(model.layers)
        attention = [layer.self_attn for layer in layers]
        if not layers or any(a.attend is not cpu_backend.paged_attention for a in attention):
            return None
        first = attention[0]
        arch = model.arch
        native = kernels.DecodeStack(first.num_heads, first.num_kv_heads, first.head_dim,
                                     arch.rms_norm_eps, first.head_dim ** -0.5)
        for layer in layers:
            linears = [layer.self_attn.qkv_proj, layer.self_attn.o_proj,
                       layer.mlp.gate_up_proj, layer.mlp.down_proj]
            specs = [_linear_spec(m) for m in linears]
            if any(s is None for s in specs) or not _plain_norms(layer, arch.rms_norm_eps):
                return None
            native.add_layer(layer.input_layernorm.weight, layer.post_attention_layernorm.weight,
                             [s[0] for s in specs], [s[1] for s in specs],  # type: ignore[index]
                             [s[2] for s in specs])  # type: ignore[index]
        return cls(native, layers)

    @staticmethod
    def takes(x: torch.Tensor, meta: AttentionMetadata) -> bool:
        """True for a step of decodes only, nobody looking inside, every kernel on."""
        return (meta.num_decodes == x.shape[0] > 0 and meta.probe is None
                and not meta.prefills and meta.decode_block_tables is not None
                and all(user.cpu_kernels() is not None for user in _KERNEL_USERS))

    def run(self, x: torch.Tensor, residual: torch.Tensor | None, meta: AttentionMetadata,
            kv_caches: list[tuple[torch.Tensor, torch.Tensor]]
            ) -> tuple[torch.Tensor, torch.Tensor]:
        """The first len(kv_caches) layers on the step: (last output, residual stream)."""
        return self.native.run(x, residual, [k for k, _ in kv_caches], [v for _, v in kv_caches],
                               meta.cos, meta.sin, meta.slot_mapping, meta.decode_block_tables,
                               meta.decode_context_lens, len(kv_caches))


def _plain_norms(layer: DecoderLayer, eps: float) -> bool:
    norms = (layer.input_layernorm, layer.post_attention_layernorm)
    return all(type(n) is norm.RMSNorm and n.eps == eps for n in norms)


def _linear_spec(module: Any) -> tuple[int, list[torch.Tensor | None], float] | None:
    """(kind, [weight, scales, offsets, bias], zero) as the module multiplies decode
    rows, or None for a module the stack does not run."""
    if type(module) is QuantizedLinear:
        w = module.weight
        if w.fmt == "q8":
            return Q8, [w.q, w.scales, None, module.bias], 0.0
        kind = Q4_INT8 if w.interleaved else Q4_FLOAT
        return kind, [w.q, w.scales, w.offsets, module.bias], w.zero
    if type(module) is not Linear:
        return None
    weight, bias = module.weight.data, None if module.bias is None else module.bias.data
    probe = torch.empty(1, weight.shape[1], dtype=weight.dtype)
    if linear._small_gemm_fits(probe, weight):
        return SMALL_GEMM, [weight, None, None, bias], 0.0
    if module.packed is not None:  # the library path runs oneDNN's packed weight
        return PACKED, [module.packed, None, None, bias], 0.0
    return LIBRARY, [weight, None, None, bias], 0.0
