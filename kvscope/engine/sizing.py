"""How big the engine is: its context length, how many KV blocks its memory budget
holds, and which tokens end a sequence."""

from __future__ import annotations

from typing import Any

from kvscope.config import ConfigError
from kvscope.kv.kv_manager import blocks_needed

MAX_DEFAULT_MODEL_LEN = 8192


def resolve_max_model_len(requested: int | None, model_limit: int) -> int:
    if requested is None:
        return min(model_limit, MAX_DEFAULT_MODEL_LEN)
    if requested > model_limit:
        raise ConfigError(
            f"max_model_len {requested} exceeds the model's context length {model_limit}")
    return requested


def num_blocks(budget: int, bytes_per_block: int, max_model_len: int, block_size: int) -> int:
    num_blocks = budget // bytes_per_block
    needed = blocks_needed(max_model_len, block_size)
    if num_blocks < needed:
        raise ConfigError(
            f"kv_cache_memory of {budget} bytes holds {num_blocks} blocks of {block_size} "
            f"tokens ({bytes_per_block} bytes each), but one request of max_model_len "
            f"{max_model_len} needs {needed} blocks ({needed * bytes_per_block} bytes); "
            "raise kv_cache_memory or lower max_model_len")
    return num_blocks


def eos_ids(model_eos: tuple[int, ...], tokenizer: Any) -> list[int]:
    ids = set(model_eos)
    if getattr(tokenizer, "eos_token_id", None) is not None:
        ids.add(tokenizer.eos_token_id)
    return sorted(ids)
