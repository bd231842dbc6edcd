"""`kvscope serve`: load the model (with a progress bar), start the engine thread,
serve the app with uvicorn, and shut both down cleanly on SIGINT/SIGTERM."""

from __future__ import annotations

import logging
import socket
from pathlib import Path
from types import FrameType
from typing import Any

import uvicorn

from kvscope.config import EngineConfig, default_dtype_reason
from kvscope.engine.async_engine import AsyncEngine
from kvscope.engine.llm_engine import LLMEngine
from kvscope.events import EventSink, FanOutSink, JsonlRecorder
from kvscope.kernels.build import kernel_isa
from kvscope.scope.lab_limits import LabLimits
from kvscope.scope.live import LiveEvents
from kvscope.serve.app import build_app

logger = logging.getLogger("kvscope.serve")


def default_model_name(path: Path) -> str:
    """SmolLM2-135M-Instruct.Q4_1.gguf → SmolLM2-135M-Instruct; a directory → its name."""
    return path.name.split(".")[0] if path.is_file() else path.name


class Server(uvicorn.Server):
    """uvicorn's server, saying once where it listens after the socket is bound, and
    returning normally after SIGINT/SIGTERM (uvicorn would re-raise the signal once
    it is down, killing the process before the engine thread is stopped)."""

    model_name = ""
    scope = True

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        super().handle_exit(sig, frame)
        self._captured_signals.clear()

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started and self.servers:
            host, port = self.servers[0].sockets[0].getsockname()[:2]
            logger.info("kvscope is ready: serving %s at http://%s:%d/v1 (metrics at /metrics)",
                        self.model_name, host, port)
            if self.scope:
                logger.info("the scope (live monitor and lessons) is at http://%s:%d/",
                            host, port)


def serve(engine_options: dict[str, Any], host: str, port: int, api_key: str | None,
          served_model_name: str | None, max_waiting_requests: int,
          max_body_bytes: int, record: Path | None = None, replay: Path | None = None,
          public_metrics: bool = False, scope: bool = True,
          lab_limits: LabLimits | None = None) -> None:
    """Serve the API and the scope. `record` writes every engine event to a JSONL file;
    `replay` is a recorded run the scope's monitor plays; `scope=False` serves the API
    alone (see build_app for the rest)."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    config = EngineConfig.from_kwargs(**engine_options)
    if replay is not None and not replay.is_file():
        raise SystemExit(f"kvscope: no recording at {replay}")
    live = LiveEvents() if scope else None
    recorder = JsonlRecorder(record) if record is not None else None
    sinks: list[EventSink] = [s for s in (live, recorder) if s is not None]
    sink: EventSink | None = FanOutSink(sinks) if len(sinks) > 1 else next(iter(sinks), None)
    logger.info("loading %s", config.model or "the bundled SmolLM2-135M-Instruct")
    chosen = engine_options.get("dtype") in (None, "auto")
    logger.info("dtype %s (%s); kernels built for %s", config.dtype,
                default_dtype_reason() if chosen else "asked for", kernel_isa())
    engine = LLMEngine(config, sink=sink, load_progress=True)
    name = served_model_name or default_model_name(engine.loaded.path)
    logger.info("loaded %s (%s, %s, weights %s): %d KV blocks of %d tokens, max_model_len %d",
                engine.loaded.path.name, engine.loaded.arch.architecture, config.dtype,
                engine.loaded.weights, engine.num_blocks, config.cache.block_size,
                engine.max_model_len)
    async_engine = AsyncEngine(engine, max_waiting_requests)
    app = build_app(async_engine, name, api_key, max_body_bytes, live=live, replay=replay,
                    public_metrics=public_metrics, scope=scope, lab_limits=lab_limits)
    server = Server(uvicorn.Config(app, host=host, port=port, log_level="info",
                                    timeout_graceful_shutdown=5))
    server.model_name = name
    server.scope = scope
    try:
        server.run()  # returns after SIGINT/SIGTERM, once connections are closed
    finally:
        async_engine.shutdown()
        if recorder is not None:
            recorder.close()
            logger.info("events recorded to %s", record)
        logger.info("kvscope stopped")
