"""Drive an engine step by step over a batch of token-id prompts and time it: wall
time, output tokens, and each request's time to first token (all requests are added
at t = 0, then `step()` runs until none is left). kvscope's `LLMEngine` and vLLM's
`LLMEngine` share this shape, so both are measured by the same loop."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any


def run_steps(add: Callable[[str, list[int]], None], step: Callable[[], list[Any]],
              unfinished: Callable[[], bool], prompts: list[list[int]]) -> dict[str, Any]:
    """`add(request_id, prompt_ids)`, `step()` → outputs with `.request_id`,
    `.finished` and `.outputs[0].token_ids`; returns wall time, TTFTs, outputs."""
    first_token: dict[str, float] = {}
    outputs: dict[str, list[int]] = {}
    start = time.perf_counter()
    ids = [str(i) for i in range(len(prompts))]
    for request_id, prompt in zip(ids, prompts, strict=True):
        add(request_id, prompt)
    steps = 0
    while unfinished():
        results = step()
        now = time.perf_counter() - start
        steps += 1
        for out in results:
            if out.outputs and out.outputs[0].token_ids:
                first_token.setdefault(out.request_id, now)
            if out.finished:
                outputs[out.request_id] = list(out.outputs[0].token_ids)
    wall = time.perf_counter() - start
    ttft = [first_token[i] for i in ids]
    return {"wall_s": wall, "steps": steps, "ttft_s": ttft,
            "mean_ttft_s": sum(ttft) / len(ttft),
            "output_tokens": sum(len(o) for o in outputs.values()),
            "outputs": [outputs[i] for i in ids]}
