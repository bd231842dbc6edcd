"""SamplingParams: how one request picks its tokens. Field names follow vLLM's."""

from __future__ import annotations

from dataclasses import dataclass, field


class SamplingParamsError(ValueError):
    """A sampling value is invalid; the message names the field, `param` holds it."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


_GREEDY_EPS = 1e-5


@dataclass(slots=True)
class SamplingParams:
    """Per-request decoding options.

    temperature 0 means greedy. `logprobs=N` returns, for each sampled token, its
    log-probability and the N most likely alternatives; log-probabilities are the
    model's raw distribution (log_softmax of the logits before temperature, top-k/p or
    min-p), as vLLM's default `logprobs_mode` reports them.
    """

    n: int = 1
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
    _stop_strings: list[str] = field(default_factory=list, repr=False)

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
    def is_greedy(self) -> bool:
        return self.temperature < _GREEDY_EPS

    def validate(self) -> None:
        def fail(name: str, rule: str, value: object) -> None:
            raise SamplingParamsError(f"{name} must be {rule}; got {value!r}", param=name)

        if not isinstance(self.n, int) or self.n != 1:
            fail("n", "1 (parallel sampling is not implemented yet)", self.n)
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
