"""KV-cache bytes per token: 2 (K and V) × layers × KV heads × head dim × dtype bytes.

For the loaded model the numbers come from its own config. For a few well-known
models they are computed from the shapes in their published config.json files (the
scope labels them so): these are facts about the shapes, not measurements.
"""

from __future__ import annotations

from typing import Any

from kvscope.model.loader import LoadedModel

# name, layers, KV heads, head dim (from each model's published config.json)
WELL_KNOWN: list[tuple[str, int, int, int]] = [
    ("Llama-2-7B (multi-head attention)", 32, 32, 128),
    ("Llama-3.1-8B", 32, 8, 128),
    ("Mistral-7B-v0.1", 32, 8, 128),
    ("Qwen2.5-7B", 28, 4, 128),
    ("Llama-3.1-70B", 80, 8, 128),
    ("Qwen2.5-Coder-1.5B", 28, 2, 128),
    ("Gemma-3-270M", 18, 1, 256),
]


def kv_bytes_per_token(num_layers: int, num_kv_heads: int, head_dim: int,
                       dtype_bytes: int) -> int:
    return 2 * num_layers * num_kv_heads * head_dim * dtype_bytes


def kv_sizes(loaded: LoadedModel, name: str) -> dict[str, Any]:
    arch = loaded.arch
    dtype_bytes = loaded.dtype.itemsize
    return {
        "loaded": {"name": name, "num_layers": arch.num_layers,
                   "num_kv_heads": arch.num_kv_heads, "head_dim": arch.head_dim,
                   "dtype": str(loaded.dtype).removeprefix("torch."), "dtype_bytes": dtype_bytes,
                   "kv_bytes_per_token": kv_bytes_per_token(arch.num_layers, arch.num_kv_heads,
                                                            arch.head_dim, dtype_bytes)},
        "models": [{"name": model, "num_layers": layers, "num_kv_heads": heads,
                    "head_dim": dim, "dtype_bytes": 2,
                    "kv_bytes_per_token": kv_bytes_per_token(layers, heads, dim, 2),
                    "source": "computed from its published config.json, bf16"}
                   for model, layers, heads, dim in WELL_KNOWN],
    }
