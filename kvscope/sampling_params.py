"""SamplingParams: how one request picks its tokens. Field names follow vLLM's."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any


class SamplingParamsError(ValueError):
    """A sampling value is invalid; the message names the field, `param` holds it."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


_GREEDY_EPS = 1e-5


@dataclass(slots=True)
class SamplingParams:
    """Per-request decoding options.

    temperature 0 means greedy. The logits are processed in this order: the masks
    (allowed_token_ids, bad_words, min_tokens), logit_bias, repetition_penalty (over
    prompt and output tokens: a seen token's positive logit is divided by it, a
    negative one multiplied), frequency_penalty and presence_penalty (OpenAI's, over
    output tokens: logit -= frequency * count + presence * (count > 0)), temperature,
    then top-k, top-p and min-p.

    `logprobs=N` returns, for each sampled token, its log-probability and the N most
    likely alternatives; `prompt_logprobs=N` does the same for every prompt token after
    the first (a request that asks for them never reads its prompt from the prefix
    cache). Both report the model's raw log-probabilities (log_softmax of the logits
    before any masks, penalties, bias, temperature, top-k/p or min-p), as vLLM's
    default `logprobs_mode` does.
    """

    n: int = 1  # completions returned; they share the prompt's KV blocks
    best_of: int | None = None  # sequences generated (>= n); the n most likely are returned
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0 or -1: off
    min_p: float = 0.0
    seed: int | None = None
    max_tokens: int | None = 16
    min_tokens: int = 0
    stop: list[str] | str | None = None
    stop_token_ids: list[int] | None = None
    ignore_eos: bool = False
    logprobs: int | None = None
    include_stop_str_in_output: bool = False
    skip_special_tokens: bool = True
    detokenize: bool = True
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    logit_bias: dict[int, float] | None = None
    allowed_token_ids: list[int] | None = None
    bad_words: list[str] | None = None
    prompt_logprobs: int | None = None
    # disaggregated prefill/decode: {"do_remote_decode": true} asks a producer to keep the
    # prompt's K/V for a consumer; a consumer gets what the producer answered
    kv_transfer_params: dict[str, Any] | None = None
    _stop_strings: list[str] = field(default_factory=list, repr=False)
    # bad_words as token sequences, filled by the engine (it has the tokenizer)
    _bad_words_token_ids: list[list[int]] = field(default_factory=list, repr=False)

    def __post_init__(self) -> None:
        if isinstance(self.stop, str):
            self._stop_strings = [self.stop]
        else:
            self._stop_strings = list(self.stop or [])
        if self.top_k == -1:
            self.top_k = 0
        self.validate()

    @property
    def stop_strings(self) -> list[str]:
        return self._stop_strings

    @property
    def num_sequences(self) -> int:
        """How many sequences the prompt forks into (best_of, else n)."""
        return self.best_of or self.n

    @property
    def bad_words_token_ids(self) -> list[list[int]]:
        return self._bad_words_token_ids

    def resolve_bad_words(self, tokenizer: Any) -> None:
        """Tokenize bad_words into the token sequences the sampler bans. A word is
        tokenized as written and with one leading space, since byte-level BPE gives a
        word after a space different tokens."""
        sequences: list[list[int]] = []
        for word in self.bad_words or ():
            for text in (word.lstrip(), " " + word.lstrip()):
                ids = list(tokenizer.encode(text, add_special_tokens=False))
                if ids and ids not in sequences:
                    sequences.append(ids)
        self._bad_words_token_ids = sequences

    @property
    def is_greedy(self) -> bool:
        return self.temperature < _GREEDY_EPS

    def validate(self) -> None:
        def fail(name: str, rule: str, value: object) -> None:
            raise SamplingParamsError(f"{name} must be {rule}; got {value!r}", param=name)

        if not isinstance(self.n, int) or isinstance(self.n, bool) or not 1 <= self.n <= 64:
            fail("n", "an integer in [1, 64]", self.n)
        if self.best_of is not None and (not isinstance(self.best_of, int)
                                         or not self.n <= self.best_of <= 64):
            fail("best_of", f"an integer in [n ({self.n}), 64] or None", self.best_of)
        if not isinstance(self.temperature, (int, float)) or self.temperature < 0:
            fail("temperature", "a number >= 0", self.temperature)
        if not isinstance(self.top_p, (int, float)) or not 0 < self.top_p <= 1:
            fail("top_p", "in (0, 1]", self.top_p)
        if not isinstance(self.top_k, int) or self.top_k < 0:
            fail("top_k", "an integer >= 1, or 0 / -1 to disable", self.top_k)
        if not isinstance(self.min_p, (int, float)) or not 0 <= self.min_p <= 1:
            fail("min_p", "in [0, 1]", self.min_p)
        if self.seed is not None and (not isinstance(self.seed, int)
                                      or not -(2**63) <= self.seed < 2**64):
            fail("seed", "an integer in [-2**63, 2**64) or None", self.seed)
        if self.max_tokens is not None and (not isinstance(self.max_tokens, int)
                                            or self.max_tokens < 1):
            fail("max_tokens", "an integer >= 1 (or None for up to max_model_len)",
                 self.max_tokens)
        if not isinstance(self.min_tokens, int) or self.min_tokens < 0:
            fail("min_tokens", "an integer >= 0", self.min_tokens)
        if self.max_tokens is not None and self.min_tokens > self.max_tokens:
            fail("min_tokens", f"<= max_tokens ({self.max_tokens})", self.min_tokens)
        if self.logprobs is not None and (not isinstance(self.logprobs, int)
                                          or self.logprobs < 0):
            fail("logprobs", "an integer >= 0 or None", self.logprobs)
        if any(not isinstance(s, str) or not s for s in self._stop_strings):
            fail("stop", "a non-empty string or a list of non-empty strings", self.stop)
        ids = self.stop_token_ids or []
        if any(not isinstance(t, int) or t < 0 for t in ids):
            fail("stop_token_ids", "a list of non-negative token ids", self.stop_token_ids)
        _validate_logit_controls(self)


def _number_in(value: object, low: float, high: float) -> bool:
    return (isinstance(value, (int, float)) and not isinstance(value, bool)
            and math.isfinite(value) and low <= value <= high)


def _token_ids(value: object) -> bool:
    return isinstance(value, list) and all(
        isinstance(t, int) and not isinstance(t, bool) and t >= 0 for t in value)


def _validate_logit_controls(p: SamplingParams) -> None:
    """Penalties, logit_bias, allowed_token_ids, bad_words and prompt_logprobs.
    (Whether token ids are inside the vocabulary is checked by the engine.)"""
    def fail(name: str, rule: str, value: object) -> None:
        raise SamplingParamsError(f"{name} must be {rule}; got {value!r}", param=name)

    for name in ("presence_penalty", "frequency_penalty"):
        if not _number_in(getattr(p, name), -2.0, 2.0):
            fail(name, "a number in [-2, 2]", getattr(p, name))
    if not _number_in(p.repetition_penalty, 0.0, math.inf) or p.repetition_penalty == 0:
        fail("repetition_penalty", "a finite number > 0 (1 is off)", p.repetition_penalty)
    bias = p.logit_bias
    if bias is not None and (not isinstance(bias, dict) or not _token_ids(list(bias))
                             or not all(_number_in(v, -100.0, 100.0) for v in bias.values())):
        fail("logit_bias", "a dict of token id -> number in [-100, 100]", bias)
    allowed = p.allowed_token_ids
    if allowed is not None and (not allowed or not _token_ids(allowed)):
        fail("allowed_token_ids", "a non-empty list of token ids", allowed)
    words = p.bad_words
    if words is not None and (not isinstance(words, list)
                              or not all(isinstance(w, str) and w.strip() for w in words)):
        fail("bad_words", "a list of non-blank strings", words)
    if p.prompt_logprobs is not None and (not isinstance(p.prompt_logprobs, int)
                                          or p.prompt_logprobs < 0):
        fail("prompt_logprobs", "an integer >= 0 or None", p.prompt_logprobs)


@dataclass(slots=True)
class BeamSearchParams:
    """Beam search (as Hugging Face transformers' `generate(num_beams=...)` does it):
    keep the `beam_width` most likely partial sequences by summed log-probability;
    a finished one is scored by that sum / (generated length ** length_penalty).
    `early_stopping`: True stops once beam_width are finished; False stops when no
    running beam can still beat the worst finished one at its current length; "never"
    (with length_penalty > 0) assumes a running beam could grow to max_tokens."""

    beam_width: int
    max_tokens: int
    length_penalty: float = 1.0
    early_stopping: bool | str = False
    ignore_eos: bool = False

    def __post_init__(self) -> None:
        def fail(name: str, rule: str, value: object) -> None:
            raise SamplingParamsError(f"{name} must be {rule}; got {value!r}", param=name)

        if not isinstance(self.beam_width, int) or not 1 <= self.beam_width <= 64:
            fail("beam_width", "an integer in [1, 64]", self.beam_width)
        if not isinstance(self.max_tokens, int) or self.max_tokens < 1:
            fail("max_tokens", "an integer >= 1", self.max_tokens)
        if not isinstance(self.length_penalty, (int, float)) or \
                not math.isfinite(self.length_penalty):
            fail("length_penalty", "a finite number", self.length_penalty)
        if self.early_stopping not in (True, False, "never"):
            fail("early_stopping", "True, False or 'never'", self.early_stopping)
