"""What a request must satisfy before it is queued; each failure names what is wrong."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from kvscope.request import RequestError
from kvscope.sampling_params import SamplingParams

MAX_LOGPROBS = 20  # most alternatives returned per token (vLLM's default cap)


def tokenize_prompt(tokenizer: Any, vocab_size: int,
                    prompt: str | Sequence[int]) -> tuple[str | None, list[int]]:
    """(text, token ids) of a prompt given as text or as token ids."""
    if isinstance(prompt, str):
        if not prompt:
            raise RequestError("prompt must not be empty")
        return prompt, list(tokenizer.encode(prompt, add_special_tokens=True))
    ids = list(prompt)
    if not ids:
        raise RequestError("prompt must not be empty (got no token ids)")
    for i, t in enumerate(ids):
        if not isinstance(t, int) or not 0 <= t < vocab_size:
            raise RequestError(f"prompt token {i} is {t!r}: token ids must be integers "
                               f"in [0, {vocab_size})")
    return None, ids


def check_sampling_limits(params: SamplingParams, vocab_size: int) -> None:
    """Token ids inside the vocabulary, logprobs within the cap."""
    for name, ids in (("stop_token_ids", params.stop_token_ids),
                      ("logit_bias", list(params.logit_bias or ())),
                      ("allowed_token_ids", params.allowed_token_ids)):
        bad = [t for t in ids or () if t >= vocab_size]
        if bad:
            raise RequestError(f"{name} {bad} are outside the vocabulary [0, {vocab_size})",
                               param=name)
    for name in ("logprobs", "prompt_logprobs"):
        value = getattr(params, name)
        if value is not None and value > MAX_LOGPROBS:
            raise RequestError(f"{name} must be <= {MAX_LOGPROBS}; got {value}", param=name)


def check_request_fields(num_prompt_tokens: int, max_model_len: int, priority: object,
                         cache_salt: object) -> None:
    if num_prompt_tokens >= max_model_len:
        raise RequestError(
            f"prompt has {num_prompt_tokens} tokens; max_model_len is {max_model_len} "
            "(the prompt plus at least one generated token must fit)")
    if not isinstance(priority, int):
        raise RequestError(f"priority must be an integer; got {priority!r}")
    if cache_salt is not None and not isinstance(cache_salt, str):
        raise RequestError(f"cache_salt must be a string; got {cache_salt!r}")
