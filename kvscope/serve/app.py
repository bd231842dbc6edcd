"""The FastAPI app of `kvscope serve`: OpenAI routes under /v1, /health, /version,
/metrics, /stats, /tokenize, /detokenize, /tokenizer_info, /reset_prefix_cache, and
the scope (pages at `/`, its API under /scope/api). With an API key, one middleware
puts every route but /health behind it (see auth.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse, Response

from kvscope import __version__
from kvscope.engine.async_engine import AsyncEngine
from kvscope.scope.lab_limits import LabLimits
from kvscope.scope.live import LiveEvents
from kvscope.scope.routes import STATIC_DIR, install_scope
from kvscope.serve.auth import ApiKeyMiddleware
from kvscope.serve.body_limit import BodyLimitMiddleware
from kvscope.serve.errors import APIError, install_error_handlers
from kvscope.serve.metrics import ServerMetrics
from kvscope.serve.openai_routes import router as openai_router
from kvscope.serve.protocol import DetokenizeRequest, TokenizeRequest
from kvscope.serve.state import ServerState, server_state

DEFAULT_MAX_BODY_BYTES = 4 << 20


def build_app(engine: AsyncEngine, model_name: str, api_key: str | None = None,
              max_body_bytes: int = DEFAULT_MAX_BODY_BYTES, live: LiveEvents | None = None,
              replay: Path | None = None, public_metrics: bool = False, scope: bool = True,
              lab_limits: LabLimits | None = None) -> FastAPI:
    """An app serving `engine`; the caller owns the engine (and shuts it down).
    `api_key`: every route but /health needs it (/metrics too unless
    `public_metrics`). `live` is the engine's event sink for the scope's monitor (None:
    no live view); `replay` a recorded run the monitor can play; `scope=False` serves
    no scope route at all; `lab_limits` bound the scope's lesson runs."""
    app = FastAPI(title="kvscope", version=__version__,
                  description="OpenAI-compatible API of the kvscope engine")
    metrics = ServerMetrics(model_name)
    engine.step_listeners.append(metrics.on_step)
    engine.abort_listeners.append(metrics.on_abort)
    app.state.kvscope = ServerState(engine, model_name, metrics)
    install_error_handlers(app)
    v1 = APIRouter(prefix="/v1")
    v1.include_router(openai_router)
    v1.add_api_route("/models", _models, methods=["GET"])
    app.include_router(v1)
    for path, endpoint, methods in [
        ("/health", _health, ["GET"]), ("/version", _version, ["GET"]),
        ("/metrics", _metrics, ["GET"]), ("/stats", _stats, ["GET"]),
        ("/tokenize", _tokenize, ["POST"]), ("/detokenize", _detokenize, ["POST"]),
        ("/tokenizer_info", _tokenizer_info, ["GET"]),
        ("/reset_prefix_cache", _reset_prefix_cache, ["POST"]),
    ]:
        app.add_api_route(path, endpoint, methods=methods)
    if scope:
        install_scope(app, engine, model_name, live, replay, lab_limits or LabLimits())
    app.add_middleware(BodyLimitMiddleware, max_body_bytes=max_body_bytes)
    if api_key is not None:  # outermost: a request without the key is refused unread
        app.add_middleware(ApiKeyMiddleware, api_key=api_key, public_metrics=public_metrics,
                           static_dir=STATIC_DIR if scope else None)
    return app


async def _models(request: Request) -> dict[str, Any]:
    state = server_state(request)
    return {"object": "list", "data": [{
        "id": state.model_name, "object": "model", "created": state.created,
        "owned_by": "kvscope",
        "root": str(state.engine.engine.loaded.path), "max_model_len": state.max_model_len}]}


async def _health(request: Request) -> Response:
    if not server_state(request).engine.is_alive:
        return JSONResponse({"status": "engine stopped"}, status_code=503)
    return JSONResponse({"status": "ok"})


async def _version() -> dict[str, str]:
    return {"version": __version__}


async def _metrics(request: Request) -> Response:
    state = server_state(request)
    return Response(state.metrics.render(state.engine.stats()),
                    media_type="text/plain; version=0.0.4; charset=utf-8")


async def _stats(request: Request) -> dict[str, Any]:
    """The engine's counters as of its latest step (what /metrics is made from)."""
    return server_state(request).engine.stats()


async def _reset_prefix_cache(request: Request) -> dict[str, int]:
    """Forget every cached prefix block (between benchmark runs, as vLLM's route);
    blocks that running requests hold stay theirs."""
    dropped = await server_state(request).engine.call(lambda engine: engine.reset_prefix_cache())
    return {"dropped_blocks": dropped}


async def _tokenize(body: TokenizeRequest, request: Request) -> dict[str, Any]:
    state = server_state(request)
    state.check_model(body.model)
    if (body.prompt is None) == (body.messages is None):
        raise APIError(400, "send exactly one of prompt or messages", "prompt")
    if body.messages is not None:
        tokens = state.chat_prompt_ids(body.messages)
    else:
        tokens = state.encode(body.prompt, "prompt", body.add_special_tokens)
    return {"tokens": tokens, "count": len(tokens), "max_model_len": state.max_model_len}


async def _detokenize(body: DetokenizeRequest, request: Request) -> dict[str, Any]:
    state = server_state(request)
    state.check_model(body.model)
    vocab = state.engine.engine.loaded.arch.vocab_size
    bad = [t for t in body.tokens if t >= vocab]
    if bad:
        raise APIError(400, f"token ids {bad[:5]} are outside the vocabulary [0, {vocab})",
                       "tokens")
    return {"prompt": state.detokenize(body.tokens)}


async def _tokenizer_info(request: Request) -> dict[str, Any]:
    """The tokenizer's special tokens and chat template, as vLLM's route reports them
    (evaluation harnesses use it, with /tokenize and /detokenize, to tokenize remotely)."""
    state = server_state(request)
    tokenizer = state.tokenizer
    return {"tokenizer_class": type(tokenizer).__name__,
            "eos_token": tokenizer.eos_token, "bos_token": tokenizer.bos_token,
            "pad_token": tokenizer.pad_token, "unk_token": tokenizer.unk_token,
            "chat_template": tokenizer.chat_template, "model_max_length": state.max_model_len,
            "vocab_size": state.engine.engine.loaded.arch.vocab_size}
