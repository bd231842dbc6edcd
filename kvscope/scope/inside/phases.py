"""The prefill-vs-decode lesson: a real run of one prompt, each engine step timed and
labelled by phase, its FLOPs and bytes counted (cost_model.py) and placed on this
machine's measured roofline and, beside it, on an H100's computed from its spec."""

from __future__ import annotations

import time
from statistics import mean
from typing import Any

from pydantic import Field

from kvscope.model.loader import LoadedModel
from kvscope.sampling_params import SamplingParams
from kvscope.scope.inside.common import (
    MAX_PROMPT_CHARS,
    lesson_engine,
    rounded,
    tokenize,
    wait_for_turn,
)
from kvscope.scope.inside.cost_model import ModelCosts
from kvscope.scope.inside.roofline import gpu_roofline, machine_roofline
from kvscope.scope.lab_limits import LabBudget
from kvscope.serve.protocol import StrictModel

MAX_TOKENS = 256
_REQUEST_ID = "phases"


class PhasesRequest(StrictModel):
    prompt: str = Field(min_length=1, max_length=MAX_PROMPT_CHARS)
    max_tokens: int = Field(16, ge=1, le=64)


def phases_lesson(loaded: LoadedModel, req: PhasesRequest,
                  budget: LabBudget | None = None) -> dict[str, Any]:
    ids = tokenize(loaded, req.prompt, MAX_TOKENS)
    costs = ModelCosts.of(loaded)
    timed = _timed_run(loaded, ids, req.max_tokens, budget)
    steps = [_step_json(i, n, start, seconds, costs)
             for i, (n, start, seconds) in enumerate(timed)]
    decodes = [s for s in steps if s["phase"] == "decode"]
    prefill = steps[0]
    return {
        "prompt_tokens": len(ids), "steps": steps,
        "model": {"weight_bytes": costs.weight_bytes, "params": costs.params + costs.head_params,
                  "dtype": str(loaded.dtype).removeprefix("torch."),
                  "flops_per_token": costs.flops_per_token},
        "machine": machine_roofline(loaded.dtype), "gpu": gpu_roofline(),
        "summary": {
            "prefill_ms": prefill["time_ms"],
            "decode_ms_mean": rounded(mean(s["time_ms"] for s in decodes)) if decodes else None,
            "prefill_intensity": prefill["intensity"],
            "decode_intensity_mean": (rounded(mean(s["intensity"] for s in decodes))
                                      if decodes else None)},
    }


def _timed_run(loaded: LoadedModel, ids: list[int], max_tokens: int,
               budget: LabBudget | None) -> list[tuple[int, int, float]]:
    """(tokens computed, first position, seconds) of every step of a greedy run."""
    engine = lesson_engine(loaded, len(ids) + max_tokens + 1)
    try:
        engine.add_request(_REQUEST_ID, ids, SamplingParams(
            temperature=0, max_tokens=max_tokens, ignore_eos=True, detokenize=False))
        steps, computed = [], 0
        while engine.has_unfinished_requests():
            wait_for_turn(engine, budget)  # not part of the step's time
            start = time.perf_counter()
            engine.step()
            seconds = time.perf_counter() - start
            total = engine.num_computed_tokens
            steps.append((total - computed, computed, seconds))
            computed = total
        return steps
    finally:
        engine.shutdown()


def _step_json(index: int, num_tokens: int, start: int, seconds: float,
               costs: ModelCosts) -> dict[str, Any]:
    flops, weight_bytes, kv_bytes = costs.step(num_tokens, start)
    moved = weight_bytes + kv_bytes
    return {"step": index, "phase": "prefill" if start == 0 else "decode",
            "num_tokens": num_tokens, "context_len": start + num_tokens,
            "time_ms": rounded(seconds * 1e3), "flops": float(flops),
            "weight_bytes": float(weight_bytes), "kv_bytes": float(kv_bytes),
            "bytes": float(moved), "intensity": rounded(flops / moved),
            "gflops_per_s": rounded(flops / seconds / 1e9),
            "gb_per_s": rounded(moved / seconds / 1e9)}
