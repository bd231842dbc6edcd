"""How speculative decoding is set up: `LLM(speculative_config={...})`, as in vLLM.

    {"method": "ngram", "num_speculative_tokens": 4, "prompt_lookup_max": 4}
    {"method": "draft_model", "model": "qwen2.5-coder-0.5b", "num_speculative_tokens": 4}
    {"method": "self_draft", "num_speculative_tokens": 3, "draft_layers": 12}

`disable_by_batch_size`: with this many running requests or more, no request gets
drafts that step (verifying drafts costs compute a full batch no longer has to spare).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from kvscope.config import ConfigError

METHODS = ("ngram", "draft_model", "self_draft")
DEFAULT_DRAFT_KV_MEMORY = 256 << 20  # bytes for the draft model's own paged KV pool


@dataclass(slots=True)
class SpeculativeConfig:
    method: str
    num_speculative_tokens: int
    prompt_lookup_min: int = 1  # n-gram: shortest suffix to look up
    prompt_lookup_max: int = 4  # n-gram: longest suffix to look up (tried first)
    model: str | None = None  # draft_model: a path, a Hugging Face dir or a packaged name
    draft_kv_cache_memory: int = DEFAULT_DRAFT_KV_MEMORY
    draft_layers: int | None = None  # self_draft: layers run before the exit (None: half)
    disable_by_batch_size: int | None = None

    @classmethod
    def from_dict(cls, options: dict[str, Any] | SpeculativeConfig) -> SpeculativeConfig:
        if isinstance(options, SpeculativeConfig):
            options.validate()
            return options
        if not isinstance(options, dict):
            raise ConfigError(f"speculative_config must be a dict; got {options!r}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(options) - known
        if unknown:
            raise ConfigError(f"unknown speculative_config option(s) {sorted(unknown)}; "
                              f"known options: {sorted(known)}")
        for name in ("method", "num_speculative_tokens"):
            if name not in options:
                raise ConfigError(f"speculative_config needs {name!r}")
        config = cls(**options)
        config.validate()
        return config

    def validate(self) -> None:
        if self.method not in METHODS:
            raise ConfigError(f"speculative_config method must be one of {METHODS}; "
                              f"got {self.method!r}")
        _positive("num_speculative_tokens", self.num_speculative_tokens)
        _positive("prompt_lookup_min", self.prompt_lookup_min)
        _positive("prompt_lookup_max", self.prompt_lookup_max)
        if self.prompt_lookup_min > self.prompt_lookup_max:
            raise ConfigError("prompt_lookup_min must be <= prompt_lookup_max; got "
                              f"{self.prompt_lookup_min} > {self.prompt_lookup_max}")
        _positive("draft_kv_cache_memory", self.draft_kv_cache_memory)
        if self.draft_layers is not None:
            _positive("draft_layers", self.draft_layers)
        if self.disable_by_batch_size is not None:
            _positive("disable_by_batch_size", self.disable_by_batch_size)
        if self.method == "draft_model" and not self.model:
            raise ConfigError("speculative_config method 'draft_model' needs 'model' "
                              "(the draft model's path or packaged name)")


def _positive(name: str, value: object) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ConfigError(f"speculative_config {name} must be a positive integer; got {value!r}")
