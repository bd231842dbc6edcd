"""The why-cache-K-and-V lesson: one greedy generation run twice and timed token by
token. With the KV cache, each new token is one decode row attending to the keys and
values already stored. Without it (a mode that exists only for this lesson), every
new token is a fresh prefill of the whole sequence so far in an engine that keeps
nothing between tokens, so the work per token grows with the sequence."""

from __future__ import annotations

import time
from typing import Any

from pydantic import Field

from kvscope.engine.llm_engine import LLMEngine
from kvscope.model.loader import LoadedModel
from kvscope.sampling_params import SamplingParams
from kvscope.scope.inside.common import (
    MAX_PROMPT_CHARS,
    lesson_engine,
    rounded,
    tokenize,
    wait_for_turn,
)
from kvscope.scope.lab_limits import LabBudget
from kvscope.serve.protocol import StrictModel

MAX_TOKENS = 128


class RecomputeRequest(StrictModel):
    prompt: str = Field(min_length=1, max_length=MAX_PROMPT_CHARS)
    max_tokens: int = Field(24, ge=1, le=64)


def recompute_lesson(loaded: LoadedModel, req: RecomputeRequest,
                     budget: LabBudget | None = None) -> dict[str, Any]:
    ids = tokenize(loaded, req.prompt, MAX_TOKENS)
    engine = lesson_engine(loaded, len(ids) + req.max_tokens + 1)
    try:
        cached = _with_cache(engine, ids, req.max_tokens, budget)
        recompute = _recomputing(engine, ids, req.max_tokens, budget)
    finally:
        engine.shutdown()
    tokens = [row["token_id"] for row in cached]
    return {
        "prompt_tokens": len(ids), "text": loaded.tokenizer.decode(tokens),
        "cached": cached, "recompute": recompute,
        "identical": tokens == [row["token_id"] for row in recompute],
        "totals": {"cached_ms": rounded(sum(r["time_ms"] for r in cached)),
                   "recompute_ms": rounded(sum(r["time_ms"] for r in recompute)),
                   "cached_tokens_computed": sum(r["tokens_computed"] for r in cached),
                   "recompute_tokens_computed": sum(r["tokens_computed"] for r in recompute)},
    }


def _greedy(max_tokens: int) -> SamplingParams:
    return SamplingParams(temperature=0, max_tokens=max_tokens, ignore_eos=True,
                          detokenize=False)


def _with_cache(engine: LLMEngine, ids: list[int], max_tokens: int,
                budget: LabBudget | None) -> list[dict[str, Any]]:
    """One request; each step (the prefill, then one decode each) gives one token."""
    engine.add_request("cached", ids, _greedy(max_tokens))
    rows: list[dict[str, Any]] = []
    while engine.has_unfinished_requests():
        wait_for_turn(engine, budget)
        before = engine.num_computed_tokens
        start = time.perf_counter()
        outputs = engine.step()
        seconds = time.perf_counter() - start
        token_ids = outputs[0].outputs[0].token_ids
        rows.append(_row(len(rows), len(ids) + len(rows), seconds, token_ids[-1],
                         engine.num_computed_tokens - before))
    return rows


def _recomputing(engine: LLMEngine, ids: list[int], max_tokens: int,
                 budget: LabBudget | None) -> list[dict[str, Any]]:
    """A new request per token over the whole sequence so far; the engine has no
    prefix cache, so nothing computed for an earlier token is reused."""
    sequence = list(ids)
    rows: list[dict[str, Any]] = []
    for index in range(max_tokens):
        wait_for_turn(engine, budget)
        before = engine.num_computed_tokens
        start = time.perf_counter()
        engine.add_request(f"recompute-{index}", sequence, _greedy(1))
        token = None
        while engine.has_unfinished_requests():
            for out in engine.step():
                token = out.outputs[0].token_ids[-1]
        seconds = time.perf_counter() - start
        assert token is not None
        rows.append(_row(index, len(sequence), seconds, token,
                         engine.num_computed_tokens - before))
        sequence.append(token)
    return rows


def _row(index: int, context_len: int, seconds: float, token_id: int,
         computed: int) -> dict[str, Any]:
    return {"index": index, "context_len": context_len, "time_ms": rounded(seconds * 1e3),
            "token_id": token_id, "tokens_computed": computed}
