"""POST /v1/completions and /v1/chat/completions: requests in, engine streams out.

Each prompt becomes one engine request; its n completions are sequences the engine
forks from one prefill (completion i gets seed + i). All of them share one output
stream. A streamed response sends OpenAI chunks as tokens
arrive; a plain one waits for every choice. Either way a client that goes away
aborts its requests, and the engine frees their blocks on its next step.
"""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse

from kvscope.engine.async_engine import EngineDeadError, RequestStream
from kvscope.outputs import CompletionOutput, PromptLogprobs, RequestOutput
from kvscope.serve.errors import APIError
from kvscope.serve.protocol import ChatCompletionRequest, CompletionRequest
from kvscope.serve.responses import (
    ChoiceCursor,
    chat_logprobs,
    completion_logprobs,
    joined_logprobs,
    now,
    prompt_logprobs_json,
    sse,
    usage,
)
from kvscope.serve.state import ServerState, server_state

router = APIRouter()


@dataclass(slots=True)
class Call:
    """One API call fanned out into engine requests (one per prompt): the index of each
    request's first choice (its completion j is choice first + j)."""

    kind: str  # "completion" | "chat"
    id: str
    model: str
    prompts: list[list[int]]
    choice_of: dict[str, int] = field(default_factory=dict)
    created: int = field(default_factory=now)

    @property
    def num_prompt_tokens(self) -> int:
        return sum(len(p) for p in self.prompts)


@router.post("/completions")
async def completions(body: CompletionRequest, request: Request) -> Any:
    state = server_state(request)
    model = state.check_model(body.model)
    body.check_supported()
    prompts = [state.prompt_ids(p, "prompt") for p in body.prompts()]
    call = Call("completion", f"cmpl-{uuid.uuid4().hex}", model, prompts)
    # max_tokens=0 (with echo) scores the prompt: the engine generates one token,
    # which the answer leaves out
    stream = await _start(state, call, body,
                          lambda ids: body.sampling_params(
                              max(1, state.max_tokens_for(len(ids), body.max_tokens,
                                                          "prompt")),
                              body.logprobs))
    echo = [state.detokenize(p) if body.echo else "" for p in prompts]
    if body.stream:
        chunks = _completion_chunks(state, call, body, stream, echo)
        return StreamingResponse(_sse_stream(chunks, stream), media_type="text/event-stream")
    outputs = await _collect(stream, request)
    if body.max_tokens == 0:
        outputs = {key: _without_generated(output) for key, output in outputs.items()}
    prompt_logprobs = _prompt_logprobs(call, outputs, body.n)
    choices = []
    for index, (prompt_index, completion) in enumerate(_by_choice(call, outputs, body.n)):
        choices.append({"index": index, "text": echo[prompt_index] + completion.text,
                        "logprobs": _choice_logprobs(state, call, body, prompt_index,
                                                     completion, prompt_logprobs, echo),
                        "finish_reason": completion.finish_reason,
                        "stop_reason": completion.stop_reason})
        if body.prompt_logprobs is not None:
            choices[-1]["prompt_logprobs"] = prompt_logprobs_json(
                state.token_text, prompt_logprobs[prompt_index])
    return JSONResponse({"id": call.id, "object": "text_completion", "created": call.created,
                         "model": model, "system_fingerprint": state.system_fingerprint,
                         "choices": choices,
                         "usage": usage(call.num_prompt_tokens, _generated(outputs)),
                         **_kv_transfer(outputs)})


def _choice_logprobs(state: ServerState, call: Call, body: CompletionRequest, prompt_index: int,
                     completion: CompletionOutput, prompt_logprobs: dict[int, Any],
                     echo: list[str]) -> dict[str, Any] | None:
    """The legacy logprobs of one choice: with echo, the prompt's tokens (null for
    the first) and then the completion's."""
    if body.logprobs is None:
        return None
    generated = completion_logprobs(state.token_text, completion.token_ids,
                                    completion.logprobs or [], len(echo[prompt_index]))
    if not body.scores_prompt:
        return generated
    prompt = completion_logprobs(state.token_text, call.prompts[prompt_index],
                                 prompt_logprobs[prompt_index], 0, body.logprobs)
    return joined_logprobs(prompt, generated)


def _without_generated(output: RequestOutput) -> RequestOutput:
    """An output as if nothing had been generated (max_tokens=0: the prompt only)."""
    completions = [dataclasses.replace(c, text="", token_ids=[], logprobs=[] if c.logprobs
                                       is not None else None, finish_reason="length",
                                       stop_reason=None)
                   for c in output.outputs]
    return dataclasses.replace(output, outputs=completions)


@router.post("/chat/completions")
async def chat_completions(body: ChatCompletionRequest, request: Request) -> Any:
    state = server_state(request)
    model = state.check_model(body.model)
    body.check_supported()
    num_top = body.requested_logprobs()
    prompt = state.chat_prompt_ids(body.messages)
    call = Call("chat", f"chatcmpl-{uuid.uuid4().hex}", model, [prompt])
    max_tokens = state.max_tokens_for(len(prompt), body.requested_max_tokens(), "messages")
    stream = await _start(state, call, body,
                          lambda _ids: body.sampling_params(max_tokens, num_top))
    if body.stream:
        chunks = _chat_chunks(state, call, body, stream, num_top)
        return StreamingResponse(_sse_stream(chunks, stream), media_type="text/event-stream")
    outputs = await _collect(stream, request)
    choices = []
    for index, (_, completion) in enumerate(_by_choice(call, outputs, body.n)):
        logprobs = None
        if num_top is not None:
            logprobs = chat_logprobs(state.token_text, completion.token_ids,
                                     completion.logprobs or [], num_top)
        choices.append({"index": index,
                        "message": {"role": "assistant", "content": completion.text},
                        "logprobs": logprobs, "finish_reason": completion.finish_reason,
                        "stop_reason": completion.stop_reason})
    extra = {}
    if body.prompt_logprobs is not None:
        extra["prompt_logprobs"] = prompt_logprobs_json(
            state.token_text, _prompt_logprobs(call, outputs, body.n)[0])
    return JSONResponse({"id": call.id, "object": "chat.completion", "created": call.created,
                         "model": model, "system_fingerprint": state.system_fingerprint,
                         "choices": choices,
                         "usage": usage(call.num_prompt_tokens, _generated(outputs)),
                         **extra, **_kv_transfer(outputs)})


def _kv_transfer(outputs: dict[str, RequestOutput]) -> dict[str, Any]:
    """A producer's answer for the decode server (the call has one prompt)."""
    params = next((o.kv_transfer_params for o in outputs.values() if o.kv_transfer_params),
                  None)
    return {} if params is None else {"kv_transfer_params": params}


async def _start(state: ServerState, call: Call, body: CompletionRequest | ChatCompletionRequest,
                 params_for: Callable[[list[int]], Any]) -> RequestStream:
    if body.kv_transfer_params is not None and (len(call.prompts) > 1 or body.n > 1):
        raise APIError(400, "kv_transfer_params apply to a call with one prompt and n = 1",
                       param="kv_transfer_params")
    requests = []
    for i, ids in enumerate(call.prompts):
        request_id = f"{call.id}-{i}"
        call.choice_of[request_id] = i * body.n
        requests.append((request_id, ids, state.sampling(params_for, ids)))
    return await state.add_requests(requests, body.priority, body.cache_salt)


def _choices(call: Call, output: RequestOutput) -> list[tuple[int, CompletionOutput]]:
    """(choice index, completion) for each completion of an engine output."""
    first = call.choice_of[output.request_id]
    return [(first + c.index, c) for c in output.outputs]


async def _collect(stream: RequestStream, request: Request) -> dict[str, RequestOutput]:
    """Wait for every request of the stream to finish, or for the client to leave
    (then abort them all)."""
    async def finals() -> dict[str, RequestOutput]:
        done = {}
        async for output in stream:
            if output.finished:
                done[output.request_id] = output
        return done

    work = asyncio.ensure_future(finals())
    gone = asyncio.ensure_future(_disconnected(request))
    try:
        await asyncio.wait({work, gone}, return_when=asyncio.FIRST_COMPLETED)
        if not work.done():
            raise APIError(499, "the client closed the connection")
        try:
            return work.result()
        except EngineDeadError as exc:  # the step loop (or a worker) failed mid-request
            raise APIError(503, str(exc), code="engine_unavailable") from exc
    finally:
        gone.cancel()
        work.cancel()
        stream.close()


async def _disconnected(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


def _by_choice(call: Call, outputs: dict[str, RequestOutput],
               n: int) -> list[tuple[int, CompletionOutput]]:
    """(prompt index, completion) in choice order."""
    choices = sorted((pair for o in outputs.values() for pair in _choices(call, o)),
                     key=lambda pair: pair[0])
    return [(index // n, completion) for index, completion in choices]


def _prompt_logprobs(call: Call, outputs: dict[str, RequestOutput],
                     n: int) -> dict[int, PromptLogprobs | None]:
    """Prompt logprobs by prompt index (the n choices of a prompt share them)."""
    return {call.choice_of[o.request_id] // n: o.prompt_logprobs for o in outputs.values()}


def _generated(outputs: dict[str, RequestOutput]) -> int:
    return sum(len(c.token_ids) for o in outputs.values() for c in o.outputs)


async def _sse_stream(chunks: AsyncIterator[dict[str, Any]],
                      stream: RequestStream) -> AsyncIterator[str]:
    """SSE lines from chunks, then `[DONE]`. If the client leaves, Starlette cancels
    this generator, and closing the stream aborts the requests."""
    try:
        async for chunk in chunks:
            yield sse(chunk)
        yield sse("[DONE]")
    except Exception as exc:  # the engine failed mid-stream: say so in the stream
        yield sse({"error": {"message": str(exc), "type": "internal_error",
                             "param": None, "code": None}})
    finally:
        stream.close()


async def _completion_chunks(state: ServerState, call: Call, body: CompletionRequest,
                             stream: RequestStream, echo: list[str]) -> AsyncIterator[dict]:
    cursors: dict[int, ChoiceCursor] = {}
    generated = 0

    def chunk(choices: list[dict[str, Any]]) -> dict[str, Any]:
        return {"id": call.id, "object": "text_completion", "created": call.created,
                "model": call.model, "system_fingerprint": state.system_fingerprint,
                "choices": choices}

    async for output in stream:
        for index, completion in _choices(call, output):
            cursor = cursors.get(index)
            prefix = ""
            if cursor is None:
                cursor = cursors[index] = ChoiceCursor()
                prefix = echo[index // body.n]
            if cursor.finished:
                continue  # a finished choice of a group that is still running
            text, begin, end = cursor.advance(completion)
            generated += end - begin
            logprobs = None
            if body.logprobs is not None:
                logprobs = completion_logprobs(
                    state.token_text, completion.token_ids[begin:end],
                    (completion.logprobs or [])[begin:end], cursor.text_chars - len(text))
            if not (text or prefix or completion.finish_reason or logprobs):
                continue  # a token whose text is held back (stop string or partial char)
            cursor.finished = completion.finish_reason is not None
            yield chunk([{"index": index, "text": prefix + text, "logprobs": logprobs,
                          "finish_reason": completion.finish_reason,
                          "stop_reason": completion.stop_reason}])
    if body.include_usage:
        yield {**chunk([]), "usage": usage(call.num_prompt_tokens, generated)}


async def _chat_chunks(state: ServerState, call: Call, body: ChatCompletionRequest,
                       stream: RequestStream, num_top: int | None) -> AsyncIterator[dict]:
    cursors: dict[int, ChoiceCursor] = {}
    generated = 0

    def chunk(choices: list[dict[str, Any]]) -> dict[str, Any]:
        return {"id": call.id, "object": "chat.completion.chunk", "created": call.created,
                "model": call.model, "system_fingerprint": state.system_fingerprint,
                "choices": choices}

    for index in range(body.n):  # the role comes first, as OpenAI sends it
        cursors[index] = ChoiceCursor()
        yield chunk([{"index": index, "delta": {"role": "assistant", "content": ""},
                      "logprobs": None, "finish_reason": None}])
    async for output in stream:
        for index, completion in _choices(call, output):
            cursor = cursors[index]
            if cursor.finished:
                continue
            text, begin, end = cursor.advance(completion)
            generated += end - begin
            logprobs = None
            if num_top is not None:
                logprobs = chat_logprobs(state.token_text, completion.token_ids[begin:end],
                                         (completion.logprobs or [])[begin:end], num_top)
            if not (text or completion.finish_reason or logprobs):
                continue
            cursor.finished = completion.finish_reason is not None
            yield chunk([{"index": index, "delta": {"content": text} if text else {},
                          "logprobs": logprobs, "finish_reason": completion.finish_reason,
                          "stop_reason": completion.stop_reason}])
    if body.include_usage:
        yield {**chunk([]), "usage": usage(call.num_prompt_tokens, generated)}
