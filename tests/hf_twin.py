"""transformers' Llama holding our loaded weights: an independent forward pass (and
generate) over the same numbers, in about 2 s instead of loading a checkpoint."""

from __future__ import annotations

from typing import Any

import torch

from kvscope.model.loader import LoadedModel


def hf_twin(loaded: LoadedModel, attn_implementation: str | None = None) -> Any:
    """transformers' Llama holding our loaded weights, unfused back to HF names: its own
    forward pass over the same numbers (test_parity_hf checks the weights themselves).
    `attn_implementation="eager"` makes it able to return attention probabilities."""
    from transformers import AutoConfig, AutoModelForCausalLM

    arch = loaded.arch
    options = {} if attn_implementation is None else {"attn_implementation": attn_implementation}
    model = AutoModelForCausalLM.from_config(AutoConfig.for_model(**loaded.hf_config),
                                             dtype=torch.float32, **options)
    ours = loaded.model.state_dict()
    q, kv = arch.num_heads * arch.head_dim, arch.num_kv_heads * arch.head_dim
    state = {"model.embed_tokens.weight": ours["embed_tokens.weight"],
             "model.norm.weight": ours["norm.weight"]}
    for i in range(arch.num_layers):
        src, dst = f"layers.{i}.", f"model.layers.{i}."
        parts = ours[src + "self_attn.qkv_proj.weight"].split([q, kv, kv])
        for name, part in zip("qkv", parts, strict=True):
            state[dst + f"self_attn.{name}_proj.weight"] = part
        gate, up = ours[src + "mlp.gate_up_proj.weight"].chunk(2)
        state |= {dst + "mlp.gate_proj.weight": gate, dst + "mlp.up_proj.weight": up}
        for name in ("self_attn.o_proj", "mlp.down_proj", "input_layernorm",
                     "post_attention_layernorm"):
            state[dst + name + ".weight"] = ours[src + name + ".weight"]
    if not arch.tie_word_embeddings:
        state["lm_head.weight"] = ours["lm_head.weight"]
    model.load_state_dict(state, strict=not arch.tie_word_embeddings)
    return model.eval()
