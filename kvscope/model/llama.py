"""The Llama family (Llama, SmolLM2, Mistral, Qwen2) over a flat token batch.

The forward pass takes every token of a step as one [T, hidden] matrix, so each
linear layer is one big matmul. Q/K/V and gate/up are fused into single linears at
load time. Attention reads and writes the paged KV pool through AttentionMetadata.
"""

from __future__ import annotations

import torch
from torch import nn

from kvscope.attention.backend import attention_backend
from kvscope.attention.metadata import AttentionMetadata
from kvscope.model.arch import ModelArch
from kvscope.model.decode_stack import DecodeStack
from kvscope.model.layers.activation import silu_and_mul
from kvscope.model.layers.linear import Linear
from kvscope.model.layers.norm import RMSNorm
from kvscope.model.layers.quantized_linear import QuantizedLinear
from kvscope.model.layers.rotary import rope_qk_inplace
from kvscope.model.probe import ForwardProbe
from kvscope.model.quant import QuantizedTensor, quantize
from kvscope.model.weights import Weight, fuse_hf_weights


class Attention(nn.Module):
    def __init__(self, arch: ModelArch, layer_index: int = 0) -> None:
        super().__init__()
        self.layer_index = layer_index  # the key under which a probe records this layer
        self.num_heads = arch.num_heads
        self.num_kv_heads = arch.num_kv_heads
        self.head_dim = arch.head_dim
        q_size = arch.num_heads * arch.head_dim
        kv_size = arch.num_kv_heads * arch.head_dim
        self.split = (q_size, kv_size, kv_size)
        self.qkv_proj = Linear(arch.hidden_size, sum(self.split), bias=arch.attention_bias)
        self.o_proj = Linear(q_size, arch.hidden_size)
        self.attend = attention_backend()

    def forward(self, x: torch.Tensor, meta: AttentionMetadata,
                kv_cache: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        tokens = x.shape[0]
        qkv = self.qkv_proj(x, meta.num_decodes)
        probe = meta.probe
        if probe is not None:
            self._record_qkv(probe, qkv, "q_pre_rope", "k_pre_rope", None)
        rope_qk_inplace(qkv, meta.cos, meta.sin, self.num_heads + self.num_kv_heads,
                        self.head_dim)
        q, k, v = qkv.split(self.split, dim=-1)
        q = q.view(tokens, self.num_heads, self.head_dim)
        k = k.view(tokens, self.num_kv_heads, self.head_dim)
        v = v.view(tokens, self.num_kv_heads, self.head_dim)
        out = self.attend(q, k, v, kv_cache[0], kv_cache[1], meta)
        if probe is not None:  # after the attention wrote this step's K/V into the pool
            self._record_qkv(probe, qkv, "q", "k", "v")
            probe.record_attention(self.layer_index, q, kv_cache[0])
        return self.o_proj(out.view(tokens, -1), meta.num_decodes)

    def _record_qkv(self, probe: ForwardProbe, qkv: torch.Tensor, q_name: str,
                    k_name: str, v_name: str | None) -> None:
        """The fused projection's q, k (and v) per head, as the probe's named points."""
        q, k, v = qkv.split(self.split, dim=-1)
        layer = self.layer_index
        probe.record(layer, q_name, q.reshape(-1, self.num_heads, self.head_dim))
        probe.record(layer, k_name, k.reshape(-1, self.num_kv_heads, self.head_dim))
        if v_name is not None:
            probe.record(layer, v_name, v.reshape(-1, self.num_kv_heads, self.head_dim))


class MLP(nn.Module):
    def __init__(self, arch: ModelArch) -> None:
        super().__init__()
        self.gate_up_proj = Linear(arch.hidden_size, 2 * arch.intermediate_size)
        self.down_proj = Linear(arch.intermediate_size, arch.hidden_size)

    def forward(self, x: torch.Tensor, num_decode_rows: int = 0,
                probe: ForwardProbe | None = None, layer_index: int = 0) -> torch.Tensor:
        gate_up = self.gate_up_proj(x, num_decode_rows)
        if probe is not None:
            probe.record(layer_index, "gate_up", gate_up)
        return self.down_proj(silu_and_mul(gate_up), num_decode_rows)


class DecoderLayer(nn.Module):
    def __init__(self, arch: ModelArch, layer_index: int = 0) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(arch.hidden_size, arch.rms_norm_eps)
        self.self_attn = Attention(arch, layer_index)
        self.post_attention_layernorm = RMSNorm(arch.hidden_size, arch.rms_norm_eps)
        self.mlp = MLP(arch)

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None, meta: AttentionMetadata,
                kv_cache: tuple[torch.Tensor, torch.Tensor]
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """x is the previous layer's output, not yet added to the residual stream."""
        if residual is None:
            residual = x
            hidden = self.input_layernorm(x)
        else:
            hidden = self.input_layernorm(x, residual)
        probe, index = meta.probe, self.self_attn.layer_index
        if probe is not None:
            probe.record(index, "residual_in", residual)
            probe.record(index, "input_norm", hidden)
        hidden = self.self_attn(hidden, meta, kv_cache)
        if probe is not None:
            probe.record(index, "attention_output", hidden)
        hidden = self.post_attention_layernorm(hidden, residual)
        if probe is not None:
            probe.record(index, "residual_mid", residual)
            probe.record(index, "post_attention_norm", hidden)
        out = self.mlp(hidden, meta.num_decodes, probe, index)
        if probe is not None:
            probe.record(index, "mlp_output", out)
        return out, residual


class LlamaModel(nn.Module):
    def __init__(self, arch: ModelArch) -> None:
        super().__init__()
        self.arch = arch
        self.embed_tokens = nn.Embedding(arch.vocab_size, arch.hidden_size, device="meta")
        self.embed_tokens.requires_grad_(False)
        self.layers = nn.ModuleList(DecoderLayer(arch, i) for i in range(arch.num_layers))
        self.norm = RMSNorm(arch.hidden_size, arch.rms_norm_eps)
        self.lm_head: Linear | QuantizedLinear | None = None
        self._decode_stack: DecodeStack | None = None
        self._decode_stack_built = False  # built on the first decode step

    def forward(self, input_ids: torch.Tensor, meta: AttentionMetadata,
                kv_caches: list[tuple[torch.Tensor, torch.Tensor]],
                num_layers: int | None = None) -> torch.Tensor:
        """Returns the final hidden states [T, hidden] (logits are taken only where
        needed). `num_layers` exits early: only the first layers run, then the final
        norm (the self-draft proposer of speculative decoding)."""
        x = self.embed(input_ids, meta)
        layers = len(self.layers) if num_layers is None else num_layers
        x, residual = self.run_layers(x, None, meta, kv_caches[:layers], layers)
        return self.final_norm(x, residual, meta)

    def embed(self, input_ids: torch.Tensor, meta: AttentionMetadata) -> torch.Tensor:
        x = self.embed_tokens(input_ids)
        if meta.probe is not None:
            meta.probe.record_model("embedding", x)
        return x

    def run_layers(self, x: torch.Tensor, residual: torch.Tensor | None,
                   meta: AttentionMetadata, kv_caches: list[tuple[torch.Tensor, torch.Tensor]],
                   num_layers: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The decoder layers this model holds (a pipeline stage holds a range of
        them), or the first `num_layers`: (the last layer's output, the residual
        stream), not yet summed. `residual` is None when x is the embedding."""
        layers = self.layers if num_layers is None else self.layers[:num_layers]
        stack = self.decode_stack() if DecodeStack.takes(x, meta) else None
        if stack is not None and len(kv_caches) == len(layers):
            return stack.run(x, residual, meta, kv_caches)
        for layer, kv_cache in zip(layers, kv_caches, strict=True):
            x, residual = layer(x, residual, meta, kv_cache)
        assert residual is not None, "a model runs at least one layer"
        return x, residual

    def decode_stack(self) -> DecodeStack | None:
        """The layers as one native call for decode steps (model/decode_stack.py), built
        once weights are in place; None where the stack cannot run this model."""
        if not self._decode_stack_built:
            self._decode_stack = DecodeStack.build(self)
            self._decode_stack_built = True
        return self._decode_stack

    def final_norm(self, x: torch.Tensor, residual: torch.Tensor,
                   meta: AttentionMetadata) -> torch.Tensor:
        hidden = self.norm(x, residual)
        if meta.probe is not None:
            meta.probe.record_model("final_norm", hidden)
        return hidden

    def compute_logits(self, hidden: torch.Tensor, num_decode_rows: int = 0) -> torch.Tensor:
        assert self.lm_head is not None
        return self.lm_head(hidden, num_decode_rows).float()

    def load_hf_weights(self, weights: dict[str, Weight], dtype: torch.dtype,
                        quantize_to: str | None = None, int8_activations: bool = True) -> None:
        """Load tensors named as in a HF checkpoint, fusing q/k/v and gate/up. Weights
        that come quantized (from a GGUF) get a QuantizedLinear; `quantize_to` ("q8" or
        "q4") quantizes every linear weight that does not (the LM head to q8)."""
        state = fuse_hf_weights(weights, self.arch)
        embed = state["embed_tokens.weight"]
        head = state.pop("lm_head.weight", embed)  # tied: the head reads the embedding
        if isinstance(embed, QuantizedTensor):  # lookups read a float copy
            state["embed_tokens.weight"] = embed.dequantize()
        if quantize_to is not None:
            state = {name: _quantized(name, w, quantize_to) for name, w in state.items()}
            # the LM head stays at 8 bits (at 4 it costs this model ~5% perplexity; GGUF
            # files keep their output / embedding at higher precision too)
            head = _quantized("lm_head.weight", head, "q8")
        for name in [n for n, w in state.items() if isinstance(w, QuantizedTensor)]:
            module = name.removesuffix(".weight")
            bias = state.pop(module + ".bias", None)
            self.set_submodule(module, QuantizedLinear(state.pop(name), bias,  # type: ignore[arg-type]
                                                       int8_activations))
        self.load_state_dict({k: v.to(dtype) for k, v in state.items()},  # type: ignore[union-attr]
                             strict=True, assign=True)
        if isinstance(head, QuantizedTensor):
            self.lm_head = QuantizedLinear(head, int8_activations=int8_activations)
        else:
            self.lm_head = Linear.from_weight(self.embed_tokens.weight if head is embed
                                              else head.to(dtype))
        for module in self.modules():
            if isinstance(module, Linear):
                module.pack()


def _quantized(name: str, weight: Weight, fmt: str) -> Weight:
    """Linear weights quantized to `fmt` (norms and the embedding's lookup table stay)."""
    is_linear = name.endswith(("_proj.weight", "lm_head.weight"))
    if not is_linear or isinstance(weight, QuantizedTensor):
        return weight
    return quantize(weight, fmt)
