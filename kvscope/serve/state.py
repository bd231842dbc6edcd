"""What every route shares: the async engine, the served model's name and limits, and
the checks that turn bad input into a 4xx before anything reaches the engine."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import jinja2
from fastapi import Request

from kvscope import __version__
from kvscope.engine.async_engine import (
    AsyncEngine,
    EngineDeadError,
    EngineOverloadedError,
    Prompt,
    RequestStream,
)
from kvscope.model.tokenizer import apply_chat_template
from kvscope.request import RequestError
from kvscope.sampling_params import SamplingParams, SamplingParamsError
from kvscope.serve.errors import APIError
from kvscope.serve.metrics import ServerMetrics
from kvscope.serve.protocol import ChatMessage
from kvscope.serve.responses import TokenText, now


@dataclass
class ServerState:
    engine: AsyncEngine
    model_name: str
    metrics: ServerMetrics
    token_text: TokenText = field(init=False)
    created: int = field(default_factory=now)  # when this server started (for /v1/models)
    system_fingerprint: str = field(init=False)

    def __post_init__(self) -> None:
        self.token_text = TokenText(self.tokenizer)
        loaded = self.engine.engine.loaded
        served = f"kvscope {__version__} {loaded.path.name} {loaded.dtype} {self.model_name}"
        self.system_fingerprint = "fp_" + hashlib.sha256(served.encode()).hexdigest()[:10]

    @property
    def tokenizer(self) -> Any:
        return self.engine.engine.tokenizer

    @property
    def max_model_len(self) -> int:
        return self.engine.engine.max_model_len

    def check_model(self, requested: str | None) -> str:
        if requested is not None and requested != self.model_name:
            raise APIError(404, f"the model {requested!r} does not exist; this server "
                           f"serves {self.model_name!r}", "model", "model_not_found")
        return self.model_name

    def prompt_ids(self, prompt: Prompt, param: str) -> list[int]:
        try:
            return self.engine.engine.tokenize(prompt)[1]
        except RequestError as exc:
            raise APIError(400, str(exc), param) from exc
        except Exception as exc:  # text the tokenizer cannot take
            raise _untokenizable(param) from exc

    def encode(self, text: str, param: str, add_special_tokens: bool = True) -> list[int]:
        try:
            return list(self.tokenizer.encode(text, add_special_tokens=add_special_tokens))
        except Exception as exc:
            raise _untokenizable(param) from exc

    def chat_prompt_ids(self, messages: list[ChatMessage]) -> list[int]:
        try:
            ids = apply_chat_template(self.tokenizer,
                                      [m.as_template_message() for m in messages])
        except jinja2.TemplateError as exc:  # the template itself refuses the conversation
            raise APIError(400, f"the model's chat template refuses these messages: {exc}",
                           "messages") from exc
        except Exception as exc:
            raise _untokenizable("messages") from exc
        return self.prompt_ids(ids, "messages")

    def max_tokens_for(self, prompt_len: int, requested: int | None, param: str) -> int:
        """The completion budget: what was asked, if prompt + completion fit in the
        context; everything left when nothing was asked (as vLLM does)."""
        room = self.max_model_len - prompt_len
        if room < 1:
            raise APIError(400, f"this model's maximum context length is "
                           f"{self.max_model_len} tokens, and the prompt has {prompt_len}",
                           param, "context_length_exceeded")
        if requested is None:
            return room
        if requested > room:
            raise APIError(400, f"this model's maximum context length is "
                           f"{self.max_model_len} tokens; {prompt_len} prompt tokens + "
                           f"{requested} max_tokens asks for {prompt_len + requested}",
                           "max_tokens", "context_length_exceeded")
        return requested

    def sampling(self, build: Callable[..., SamplingParams], *args: Any) -> SamplingParams:
        try:
            return build(*args)
        except SamplingParamsError as exc:
            raise APIError(400, str(exc), exc.param) from exc

    def detokenize(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids)

    async def add_requests(self, requests: Sequence[tuple[str, Prompt, SamplingParams]],
                           priority: int = 0, cache_salt: str | None = None) -> RequestStream:
        try:
            return await self.engine.add_requests(requests, priority, cache_salt)
        except EngineOverloadedError as exc:
            raise APIError(503, str(exc), code="overloaded") from exc
        except EngineDeadError as exc:
            raise APIError(503, str(exc), code="engine_unavailable") from exc
        except RequestError as exc:
            raise APIError(400, str(exc), exc.param) from exc


def _untokenizable(param: str) -> APIError:
    return APIError(400, f"{param}: the tokenizer cannot encode this text", param,
                    "invalid_text")


def server_state(request: Request) -> ServerState:
    return request.app.state.kvscope
