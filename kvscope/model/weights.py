"""Map HF checkpoint tensor names onto our fused modules."""

from __future__ import annotations

import torch

from kvscope.model.arch import ModelArch
from kvscope.model.quant import QuantizedTensor, cat_rows

Weight = torch.Tensor | QuantizedTensor


class WeightLoadError(ValueError):
    """The checkpoint is missing tensors the model needs, or has the wrong shapes."""


def _cat(parts: list[Weight]) -> Weight:
    """Row-wise concatenation; quantized parts stay quantized when all are, of one
    format (else all are dequantized)."""
    if all(isinstance(p, QuantizedTensor) for p in parts):
        try:
            return cat_rows(parts)  # type: ignore[arg-type]
        except ValueError:
            pass
    return torch.cat([p.dequantize() if isinstance(p, QuantizedTensor) else p for p in parts])


def fuse_hf_weights(weights: dict[str, Weight], arch: ModelArch) -> dict[str, Weight]:
    def take(name: str) -> Weight:
        if name not in weights:
            raise WeightLoadError(f"checkpoint has no tensor {name!r}")
        return weights[name]

    state = {
        "embed_tokens.weight": take("model.embed_tokens.weight"),
        "norm.weight": take("model.norm.weight"),
    }
    for i in range(arch.num_layers):
        src, dst = f"model.layers.{i}.", f"layers.{i}."
        attn = src + "self_attn."
        state[dst + "self_attn.qkv_proj.weight"] = _cat(
            [take(attn + f"{p}_proj.weight") for p in "qkv"])
        if arch.attention_bias:
            state[dst + "self_attn.qkv_proj.bias"] = _cat(
                [take(attn + f"{p}_proj.bias") for p in "qkv"])
        state[dst + "self_attn.o_proj.weight"] = take(attn + "o_proj.weight")
        state[dst + "mlp.gate_up_proj.weight"] = _cat(
            [take(src + "mlp.gate_proj.weight"), take(src + "mlp.up_proj.weight")])
        state[dst + "mlp.down_proj.weight"] = take(src + "mlp.down_proj.weight")
        state[dst + "input_layernorm.weight"] = take(src + "input_layernorm.weight")
        state[dst + "post_attention_layernorm.weight"] = take(
            src + "post_attention_layernorm.weight")
    if not arch.tie_word_embeddings:
        state["lm_head.weight"] = take("lm_head.weight")
    return state
