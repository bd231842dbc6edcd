"""Read a GGUF file into a HF-style config dict and HF-named float32 tensors.

Quantized tensors are dequantized with the `gguf` package, except, with
`keep_quantized`, the linear weights (and the embedding, which the LM head may share)
in a type kvscope's kernels read (Q4_0, Q4_1 and Q8_0 as stored; Q4_K, Q5_0 and Q6_K
repacked: `model/quant.py`), which stay quantized. llama.cpp stores the Q and K
projections of Llama-family models permuted for its interleaved RoPE; we undo that (a
permutation of rows, so quantized rows move whole) so the weights match the half-split
RoPE of HF checkpoints.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from kvscope.model.arch import UnsupportedModelError
from kvscope.model.quant import GGUF_TYPES, QuantizedTensor, from_gguf_blocks

GGUF_ARCHITECTURES = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM"}
_PERMUTED_ROPE = {"llama"}

_LAYER_NAMES = {
    "attn_norm.weight": "input_layernorm.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
    "attn_q.weight": "self_attn.q_proj.weight",
    "attn_k.weight": "self_attn.k_proj.weight",
    "attn_v.weight": "self_attn.v_proj.weight",
    "attn_q.bias": "self_attn.q_proj.bias",
    "attn_k.bias": "self_attn.k_proj.bias",
    "attn_v.bias": "self_attn.v_proj.bias",
    "attn_output.weight": "self_attn.o_proj.weight",
    "ffn_gate.weight": "mlp.gate_proj.weight",
    "ffn_up.weight": "mlp.up_proj.weight",
    "ffn_down.weight": "mlp.down_proj.weight",
}
_GLOBAL_NAMES = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}


def _field(reader: Any, key: str, default: Any = None) -> Any:
    field = reader.fields.get(key)
    return default if field is None else field.contents()


def gguf_architecture(reader: Any) -> str:
    arch = _field(reader, "general.architecture")
    if arch not in GGUF_ARCHITECTURES:
        raise UnsupportedModelError(
            f"GGUF architecture {arch!r} is not supported; supported: {sorted(GGUF_ARCHITECTURES)}")
    return arch


def gguf_hf_config(reader: Any) -> dict[str, Any]:
    """The config.json a HF checkpoint of this model would carry."""
    arch = gguf_architecture(reader)

    def key(name: str, default: Any = None) -> Any:
        return _field(reader, f"{arch}.{name}", default)

    heads = key("attention.head_count")
    hidden = key("embedding_length")
    vocab = key("vocab_size") or len(reader.fields["tokenizer.ggml.tokens"].data)
    tied = not any(t.name == "output.weight" for t in reader.tensors)
    return {
        "architectures": [GGUF_ARCHITECTURES[arch]],
        "model_type": arch,
        "vocab_size": int(vocab),
        "hidden_size": int(hidden),
        "intermediate_size": int(key("feed_forward_length")),
        "num_hidden_layers": int(key("block_count")),
        "num_attention_heads": int(heads),
        "num_key_value_heads": int(key("attention.head_count_kv", heads)),
        "head_dim": int(key("attention.key_length", hidden // heads)),
        "rope_theta": float(key("rope.freq_base", 10000.0)),
        "rms_norm_eps": float(key("attention.layer_norm_rms_epsilon", 1e-6)),
        "max_position_embeddings": int(key("context_length", 2048)),
        "tie_word_embeddings": tied,
        "bos_token_id": _field(reader, "tokenizer.ggml.bos_token_id"),
        "eos_token_id": _field(reader, "tokenizer.ggml.eos_token_id"),
        "torch_dtype": "float32",
    }


def _keeps_quantized(name: str, type_name: str) -> bool:
    is_matrix = name.endswith(("_proj.weight", "embed_tokens.weight", "lm_head.weight"))
    return is_matrix and type_name in GGUF_TYPES


def _quantized(tensor: Any, shape: tuple[int, ...], name: str, config: dict[str, Any],
               permuted: bool) -> QuantizedTensor:
    rows, cols = shape
    weight = from_gguf_blocks(tensor.data, tensor.tensor_type.name, rows, cols)
    heads = {"q_proj.weight": "num_attention_heads", "k_proj.weight": "num_key_value_heads"}
    for suffix, key in heads.items():
        if permuted and name.endswith(suffix):
            order = _unpermute(np.arange(rows)[:, None], config[key])[:, 0]
            weight = weight.rows(torch.from_numpy(np.ascontiguousarray(order)))
    return weight


def _unpermute(w: np.ndarray, num_heads: int) -> np.ndarray:
    rows = w.shape[0]
    return (w.reshape(num_heads, rows // num_heads // 2, 2, *w.shape[1:])
            .swapaxes(1, 2).reshape(w.shape))


def _hf_name(gguf_name: str) -> str | None:
    if gguf_name in _GLOBAL_NAMES:
        return _GLOBAL_NAMES[gguf_name]
    match = re.fullmatch(r"blk\.(\d+)\.(.+)", gguf_name)
    if match and match.group(2) in _LAYER_NAMES:
        return f"model.layers.{match.group(1)}.{_LAYER_NAMES[match.group(2)]}"
    return None


def read_gguf(path: str | Path, progress: bool = False, keep_quantized: bool = False
              ) -> tuple[dict[str, Any], dict[str, torch.Tensor | QuantizedTensor]]:
    """(HF config dict, {HF tensor name: float32 tensor, or a QuantizedTensor where
    `keep_quantized` keeps one}) from a GGUF file."""
    from gguf import GGUFReader
    from gguf.quants import dequantize

    reader = GGUFReader(str(path))
    config = gguf_hf_config(reader)
    permuted = config["model_type"] in _PERMUTED_ROPE
    weights: dict[str, torch.Tensor | QuantizedTensor] = {}
    tensors = reader.tensors
    if progress:
        from tqdm import tqdm

        tensors = tqdm(tensors, desc="Dequantizing GGUF", unit="tensor")
    for tensor in tensors:
        name = _hf_name(tensor.name)
        if name is None:
            continue
        shape = tuple(int(d) for d in reversed(tensor.shape))
        if keep_quantized and _keeps_quantized(name, tensor.tensor_type.name):
            weights[name] = _quantized(tensor, shape, name, config, permuted)
            continue
        array = dequantize(tensor.data, tensor.tensor_type).reshape(shape).astype(np.float32)
        if permuted and name.endswith("q_proj.weight"):
            array = _unpermute(array, config["num_attention_heads"])
        elif permuted and name.endswith("k_proj.weight"):
            array = _unpermute(array, config["num_key_value_heads"])
        weights[name] = torch.from_numpy(np.ascontiguousarray(array))
    return config, weights
