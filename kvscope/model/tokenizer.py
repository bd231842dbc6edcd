"""Tokenizers through `transformers`, offline. A GGUF's tokenizer is converted once
and cached, because the conversion takes seconds."""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path
from typing import Any

from kvscope.paths import cache_dir


def _fingerprint(path: Path) -> str:
    stat = path.stat()
    text = f"{path.resolve()}:{stat.st_size}:{int(stat.st_mtime)}"
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def load_tokenizer(model_path: Path) -> Any:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoTokenizer

    if model_path.is_dir():
        return AutoTokenizer.from_pretrained(str(model_path))
    cached = cache_dir() / "tokenizers" / _fingerprint(model_path)
    if (cached / "tokenizer_config.json").exists():
        return AutoTokenizer.from_pretrained(str(cached))
    tokenizer = AutoTokenizer.from_pretrained(str(model_path.parent), gguf_file=model_path.name)
    tmp = cached.with_name(f"{cached.name}.tmp{os.getpid()}")
    tokenizer.save_pretrained(str(tmp))
    try:
        tmp.rename(cached)
    except OSError:  # another process cached it first
        shutil.rmtree(tmp, ignore_errors=True)
    return tokenizer


def apply_chat_template(tokenizer: Any, messages: list[dict[str, str]]) -> list[int]:
    """The model's chat template applied to a conversation, ready for the assistant's
    turn, as token ids."""
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    if isinstance(ids, dict) or hasattr(ids, "keys"):
        ids = ids["input_ids"]
    return list(ids)
