"""The disaggregated prefill/decode lesson: one request through two private lab engines
on the served model's weights, as `kvscope pd-proxy` runs it over two servers. The
prefill engine (kv_producer) computes the prompt and samples the first token with
max_tokens 1, and its connector keeps the K/V; the decode engine (kv_consumer) loads
them into blocks of its own, with the first token, and generates the rest. Both
engines' events come back (their steps, blocks, the K/V saved, sent and loaded, with
bytes and seconds, and the blocks freed on each side), with what a single engine
generates for the same prompt, so the page can show the token ids are the same."""

from __future__ import annotations

import tempfile
from typing import Any, Literal

from pydantic import Field

from kvscope.config import ConfigError, EngineConfig
from kvscope.engine.llm_engine import LLMEngine
from kvscope.events import ListSink
from kvscope.model.loader import LoadedModel
from kvscope.outputs import RequestOutput
from kvscope.request import RequestError
from kvscope.sampling_params import SamplingParams
from kvscope.scope.inside.common import MAX_PROMPT_CHARS
from kvscope.scope.lab import MAX_PROMPT_TOKENS, MAX_STEPS
from kvscope.scope.lab_limits import LabBudget, LabLimits
from kvscope.serve.protocol import StrictModel

NUM_BLOCKS = 64
RELEASE_WAIT_STEPS = 200


class DisaggLabRequest(StrictModel):
    prompt: str = Field(min_length=1, max_length=MAX_PROMPT_CHARS)
    max_tokens: int = Field(12, ge=2, le=64)
    connector: Literal["ZmqConnector", "SharedStorageConnector"] = "ZmqConnector"
    block_size: int = Field(16, ge=4, le=64)


def disaggregation_lesson(loaded: LoadedModel, req: DisaggLabRequest,
                          budget: LabBudget | None = None) -> dict[str, Any]:
    """Raises ValueError for a prompt the lesson refuses, LabStopped past the budget."""
    budget = budget or LabBudget(LabLimits())
    prompt_tokens = len(loaded.tokenizer.encode(req.prompt, add_special_tokens=True))
    if prompt_tokens + req.max_tokens > MAX_PROMPT_TOKENS:
        raise ValueError(f"the prompt has {prompt_tokens} tokens; with max_tokens this lesson "
                         f"takes at most {MAX_PROMPT_TOKENS}")
    with tempfile.TemporaryDirectory(prefix="kvscope-lab-kv-") as directory:
        sinks = {"prefill": ListSink(), "decode": ListSink(), "single": ListSink()}
        engines = {role: _engine(loaded, req, role, directory, sinks[role]) for role in sinks}
        try:
            return _run(engines, sinks, req, budget)
        finally:
            for engine in engines.values():
                engine.shutdown()


def _engine(loaded: LoadedModel, req: DisaggLabRequest, role: str, directory: str,
            sink: ListSink) -> LLMEngine:
    transfer = None
    if role != "single":
        transfer = {"kv_connector": req.connector,
                    "kv_role": "kv_producer" if role == "prefill" else "kv_consumer",
                    "kv_connector_extra_config": {
                        **({"shared_storage_path": directory}
                           if req.connector == "SharedStorageConnector" else {}),
                        "load_timeout_s": 5.0}}
    bytes_per_block = loaded.arch.kv_bytes_per_token(loaded.dtype.itemsize) * req.block_size
    try:
        config = EngineConfig.from_kwargs(
            dtype=loaded.dtype, block_size=req.block_size,
            max_model_len=min(NUM_BLOCKS * req.block_size, 2048),
            kv_cache_memory=NUM_BLOCKS * bytes_per_block, kv_transfer_config=transfer)
    except ConfigError as exc:
        raise ValueError(str(exc)) from exc
    return LLMEngine(config, sink=sink, loaded=loaded)


def _run(engines: dict[str, LLMEngine], sinks: dict[str, ListSink], req: DisaggLabRequest,
         budget: LabBudget) -> dict[str, Any]:
    prefill, decode = engines["prefill"], engines["decode"]
    first = _generate(prefill, req.prompt, SamplingParams(
        temperature=0.0, max_tokens=1, kv_transfer_params={"do_remote_decode": True}), budget)
    params = first.kv_transfer_params
    if params is None:
        raise RuntimeError("the prefill engine gave no kv_transfer_params")
    budget.engine_done(prefill)
    answer = _generate(decode, req.prompt, SamplingParams(
        temperature=0.0, max_tokens=req.max_tokens, ignore_eos=True,
        kv_transfer_params=params), budget)
    budget.engine_done(decode)
    for _ in range(RELEASE_WAIT_STEPS):  # the producer frees what the consumer took
        prefill.release_transferred()
        if not prefill.kv_transfer_pending():
            break
    single = _generate(engines["single"], req.prompt, SamplingParams(
        temperature=0.0, max_tokens=req.max_tokens, ignore_eos=True), budget)
    token_ids = list(answer.outputs[0].token_ids)
    return {"connector": req.connector, "kv_transfer_params": params,
            "prompt_token_ids": answer.prompt_token_ids,
            "output": {"token_ids": token_ids, "text": answer.outputs[0].text},
            "single": {"token_ids": list(single.outputs[0].token_ids),
                       "identical": list(single.outputs[0].token_ids) == token_ids},
            "prefill": _side(prefill, sinks["prefill"]),
            "decode": _side(decode, sinks["decode"])}


def _generate(engine: LLMEngine, prompt: str, params: SamplingParams,
              budget: LabBudget) -> RequestOutput:
    try:
        engine.add_request("0", prompt, params)
    except RequestError as exc:
        raise ValueError(str(exc)) from exc
    final = None
    for _ in range(MAX_STEPS):
        if not engine.has_unfinished_requests():
            break
        budget.before_step(engine)
        for out in engine.step():
            if out.finished:
                final = out
    if final is None:
        raise RuntimeError("the lesson's request did not finish")
    return final


def _side(engine: LLMEngine, sink: ListSink) -> dict[str, Any]:
    stats = engine.get_stats()
    return {"events": sink.dicts(),
            "stats": {k: v for k, v in stats.items()
                      if k.startswith("kv_transfer_") or k in (
                          "num_computed_tokens", "num_computed_prompt_tokens", "num_steps",
                          "num_used_blocks", "num_free_blocks", "num_blocks")}}
