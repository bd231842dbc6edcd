"""Request bodies of the OpenAI-compatible API, as pydantic models.

Field names and defaults follow OpenAI's API, plus the engine's own sampling fields
(top_k, min_p, min_tokens, repetition_penalty, allowed_token_ids, bad_words,
prompt_logprobs, ...) as vLLM accepts them. Unknown fields are rejected
(as OpenAI does) so that a typo never silently changes sampling. Options the engine
does not implement yet are accepted only at their neutral value.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    ValidationError,
    ValidatorFunctionWrapHandler,
    field_validator,
    model_validator,
)

from kvscope.engine.validation import MAX_LOGPROBS
from kvscope.sampling_params import SamplingParams

MAX_N = 16  # completions per request (each runs as its own engine request for now)
I64 = Annotated[int, Field(ge=-(2**63), le=2**63 - 1)]
TokenId = Annotated[int, Field(ge=0, le=2**31 - 1)]
Count = Annotated[int, Field(ge=1, le=2**31 - 1)]
Bias = Annotated[float, Field(ge=-100, le=100)]
NumTop = Annotated[int, Field(ge=0, le=MAX_LOGPROBS)]


class OptionError(ValueError):
    """A field is valid JSON of the right type but cannot be served (answered 400)."""

    def __init__(self, param: str, why: str, code: str = "unsupported_option") -> None:
        super().__init__(f"{param}: {why}")
        self.param = param
        self.code = code


class StrictModel(BaseModel):
    """A request body: unknown fields, NaN and infinities are refused, and every text
    in it must be valid Unicode (JSON can carry a lone UTF-16 surrogate such as
    "\\ud800", which no tokenizer can encode)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    @field_validator("*", mode="after")
    @classmethod
    def _valid_unicode(cls, value: Any) -> Any:
        check_unicode(value)
        return value


def check_unicode(value: Any) -> None:
    """Raise ValueError if any string in `value` (nested lists and dicts, keys
    included) holds a lone surrogate."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise ValueError(f"contains a lone UTF-16 surrogate "
                             f"(U+{ord(value[exc.start]):04X}) at character {exc.start}, "
                             "which is not valid Unicode text") from None
    elif isinstance(value, list | tuple):
        for item in value:
            check_unicode(item)
    elif isinstance(value, dict):
        for key, item in value.items():
            check_unicode(key)
            check_unicode(item)



class StreamOptions(StrictModel):
    include_usage: StrictBool = False


class _SamplingFields(StrictModel):
    """What completions and chat completions share."""

    model: str | None = None
    n: Annotated[int, Field(ge=1, le=MAX_N)] = 1
    temperature: Annotated[float, Field(ge=0, le=100)] | None = None
    top_p: Annotated[float, Field(gt=0, le=1)] | None = None
    stop: str | list[str] | None = None
    stream: StrictBool = False
    stream_options: StreamOptions | None = None
    seed: I64 | None = None
    presence_penalty: Annotated[float, Field(ge=-2, le=2)] = 0.0
    frequency_penalty: Annotated[float, Field(ge=-2, le=2)] = 0.0
    logit_bias: dict[str, Bias] | None = None  # token id (as a JSON key) -> bias
    user: str | None = None
    # the engine's extra sampling fields (vLLM names)
    top_k: Annotated[int, Field(ge=-1, le=2**31 - 1)] | None = None
    min_p: Annotated[float, Field(ge=0, le=1)] | None = None
    min_tokens: Annotated[int, Field(ge=0, le=2**31 - 1)] = 0
    ignore_eos: StrictBool = False
    stop_token_ids: list[TokenId] | None = None
    include_stop_str_in_output: StrictBool = False
    skip_special_tokens: StrictBool = True
    priority: I64 = 0  # with --scheduling-policy priority, lower runs first
    cache_salt: str | None = Field(default=None, max_length=256)
    # disaggregated prefill/decode (a server with --kv-transfer-config): a prefill
    # server's {"do_remote_decode": true}, or what it answered, for the decode server
    kv_transfer_params: dict[str, Any] | None = None
    repetition_penalty: Annotated[float, Field(gt=0, le=100)] = 1.0
    allowed_token_ids: list[TokenId] | None = None
    bad_words: list[str] | None = None
    prompt_logprobs: NumTop | None = None

    def check_supported(self) -> None:
        self.token_bias()
        if self.stream and self.prompt_logprobs is not None:
            raise OptionError("prompt_logprobs", "prompt logprobs are not available "
                                                 "with stream=true")

    def token_bias(self) -> dict[int, float] | None:
        """logit_bias with its keys as token ids (JSON keys are strings)."""
        if self.logit_bias is None:
            return None
        bad = [key for key in self.logit_bias if not (key.isascii() and key.isdigit())]
        if bad:
            raise OptionError("logit_bias", f"keys must be token ids; got {bad[0]!r}",
                              "invalid_value")
        return {int(key): value for key, value in self.logit_bias.items()}

    def sampling_params(self, max_tokens: int, logprobs: int | None) -> SamplingParams:
        """SamplingParams for the call's n completions of one prompt: the engine forks
        them from one prefill, and completion i uses seed + i, so each is reproducible
        and they differ from one another."""
        return SamplingParams(
            n=self.n, temperature=1.0 if self.temperature is None else self.temperature,
            top_p=1.0 if self.top_p is None else self.top_p,
            top_k=self.top_k or 0, min_p=self.min_p or 0.0, seed=self.seed,
            max_tokens=max_tokens, min_tokens=self.min_tokens, stop=self.stop,
            stop_token_ids=self.stop_token_ids, ignore_eos=self.ignore_eos,
            logprobs=logprobs, include_stop_str_in_output=self.include_stop_str_in_output,
            skip_special_tokens=self.skip_special_tokens,
            presence_penalty=self.presence_penalty, frequency_penalty=self.frequency_penalty,
            repetition_penalty=self.repetition_penalty, logit_bias=self.token_bias(),
            allowed_token_ids=self.allowed_token_ids, bad_words=self.bad_words,
            prompt_logprobs=self.engine_prompt_logprobs,
            kv_transfer_params=self.kv_transfer_params)

    @property
    def engine_prompt_logprobs(self) -> int | None:
        """How many top alternatives the engine must report per prompt token."""
        return self.prompt_logprobs

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


class CompletionRequest(_SamplingFields):
    prompt: str | list[TokenId] | list[str] | list[list[TokenId]]
    max_tokens: Annotated[int, Field(ge=0, le=2**31 - 1)] | None = 16  # 0: only with echo
    logprobs: Annotated[int, Field(ge=0, le=MAX_LOGPROBS)] | None = None
    echo: StrictBool = False
    best_of: Annotated[int, Field(ge=1, le=MAX_N)] | None = None
    suffix: str | None = None

    def check_supported(self) -> None:
        super().check_supported()
        if self.suffix:
            raise OptionError("suffix", "insertion is not supported; omit it")
        if self.best_of is not None and self.best_of != self.n:
            raise OptionError("best_of", "best_of other than n is not "
                                         "implemented yet")
        if self.max_tokens == 0 and not self.echo:
            raise OptionError("max_tokens", "must be at least 1 (0 only with echo=true, "
                                            "to score the prompt)", "invalid_value")
        if self.stream and self.echo and (self.logprobs is not None or self.max_tokens == 0):
            raise OptionError("echo", "echo with logprobs or max_tokens=0 is not available "
                                      "with stream=true; send stream=false to score a prompt")

    @property
    def scores_prompt(self) -> bool:
        """echo with logprobs: the prompt's tokens come back with their logprobs."""
        return self.echo and self.logprobs is not None

    @property
    def engine_prompt_logprobs(self) -> int | None:
        """How many top alternatives the engine must report per prompt token."""
        if not self.scores_prompt:
            return self.prompt_logprobs
        return max(self.logprobs or 0, self.prompt_logprobs or 0)

    @field_validator("prompt", mode="wrap")
    @classmethod
    def _plain_prompt_errors(cls, value: Any, handler: ValidatorFunctionWrapHandler) -> Any:
        check_unicode(value)  # its own message, not the one about shapes
        try:
            return handler(value)
        except ValidationError:
            raise ValueError(_prompt_problem(value)) from None

    def prompts(self) -> list[str | list[int]]:
        """The prompt field as a list of prompts (text or token ids)."""
        prompt = self.prompt
        if isinstance(prompt, str):
            return [prompt]
        if not prompt:
            raise OptionError("prompt", "must not be empty", "invalid_value")
        if all(isinstance(t, int) for t in prompt):
            return [list(prompt)]  # one prompt as token ids
        return list(prompt)  # type: ignore[arg-type]


def _prompt_problem(value: Any) -> str:
    """What is wrong with a prompt field, in words: the entry out of range, or the
    shapes a prompt may have."""
    if isinstance(value, list):
        for i, item in enumerate(value):
            entries = item if isinstance(item, list) else [item]
            for j, token in enumerate(entries):
                where = f"entry [{i}][{j}]" if isinstance(item, list) else f"entry [{i}]"
                if isinstance(token, int) and not isinstance(token, bool) and \
                        not 0 <= token < 2**31:
                    return f"{where} is {token}: a token id must be an integer from 0 up"
    return ("must be a string, a list of strings, a list of token ids, or a list of lists "
            "of token ids")


class TextPart(StrictModel):
    type: Literal["text"]
    text: str


class ChatMessage(StrictModel):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None
    name: str | None = None

    @model_validator(mode="after")
    def _has_content(self) -> ChatMessage:
        if self.content is None:
            raise ValueError(f"a {self.role} message needs content (this server takes no "
                             "tool calls)")
        return self

    def as_template_message(self) -> dict[str, Any]:
        content = self.content
        if isinstance(content, list):
            content = "".join(part.text for part in content)
        role = "system" if self.role == "developer" else self.role
        return {"role": role, "content": content or ""}


class ChatCompletionRequest(_SamplingFields):
    messages: Annotated[list[ChatMessage], Field(min_length=1)]
    max_tokens: Count | None = None
    max_completion_tokens: Count | None = None
    logprobs: StrictBool = False
    top_logprobs: Annotated[int, Field(ge=0, le=MAX_LOGPROBS)] | None = None

    def requested_max_tokens(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None \
            else self.max_tokens

    def requested_logprobs(self) -> int | None:
        if not self.logprobs:
            if self.top_logprobs:
                raise OptionError("top_logprobs", "needs logprobs set to true")
            return None
        return self.top_logprobs or 0


class TokenizeRequest(StrictModel):
    model: str | None = None
    prompt: str | None = None
    messages: list[ChatMessage] | None = None
    add_special_tokens: StrictBool = True


class DetokenizeRequest(StrictModel):
    model: str | None = None
    tokens: list[TokenId]
