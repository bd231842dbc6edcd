"""What the lessons on the model's insides share: input checks with clear messages,
token texts, rounding for JSON, and one probed run of a prompt in a private engine."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from kvscope.config import EngineConfig
from kvscope.engine.llm_engine import LLMEngine
from kvscope.kv.kv_manager import blocks_needed
from kvscope.model.arch import ModelArch
from kvscope.model.loader import LoadedModel
from kvscope.model.probe import ForwardProbe, StepCapture
from kvscope.outputs import RequestOutput
from kvscope.sampling_params import SamplingParams
from kvscope.scope.lab_limits import LabBudget

SIGNIFICANT_DIGITS = 6
PROBED_REQUEST = "inside"
MAX_PROMPT_CHARS = 16384  # refused before tokenizing; the token limits are far below


# -- input checks ---------------------------------------------------------------------


def is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_layer(arch: ModelArch, layer: int) -> None:
    if not is_int(layer) or not 0 <= layer < arch.num_layers:
        raise ValueError(f"layer must be an integer in [0, {arch.num_layers}); got {layer!r}")


def check_head(arch: ModelArch, head: int) -> None:
    if not is_int(head) or not 0 <= head < arch.num_heads:
        raise ValueError(f"head must be an integer in [0, {arch.num_heads}); got {head!r}")


def tokenize(loaded: LoadedModel, prompt: str, max_tokens: int) -> list[int]:
    """Token ids exactly as the engine makes them from a text prompt."""
    if not isinstance(prompt, str) or not prompt:
        raise ValueError("prompt must be a non-empty string")
    ids = list(loaded.tokenizer.encode(prompt, add_special_tokens=True))
    if not ids:
        raise ValueError("prompt has no tokens")
    if len(ids) > max_tokens:
        raise ValueError(f"prompt has {len(ids)} tokens; at most {max_tokens} allowed")
    return ids


def resolve_position(position: int, length: int, name: str = "position") -> int:
    """A position in [0, length); negative ones count from the end (-1 = the last)."""
    if not is_int(position) or not -length <= position < length:
        raise ValueError(f"{name} must be an integer in [{-length}, {length}) for this "
                         f"{length}-token prompt (-1 = the last token); got {position!r}")
    return position % length


def token_text(loaded: LoadedModel, token_id: int) -> str:
    """One token decoded alone, special tokens spelled out."""
    return loaded.tokenizer.decode([token_id], skip_special_tokens=False)


def token_texts(loaded: LoadedModel, token_ids: list[int]) -> list[str]:
    return [token_text(loaded, t) for t in token_ids]


# -- JSON ----------------------------------------------------------------------------


def rounded(value: float) -> float:
    return float(f"{value:.{SIGNIFICANT_DIGITS}g}")


def rounded_all(values: torch.Tensor | list[float]) -> list[float]:
    items = values.tolist() if isinstance(values, torch.Tensor) else values
    return [rounded(v) for v in items]


def norm(vector: torch.Tensor) -> float:
    return rounded(vector.double().norm().item())


# -- one probed run ----------------------------------------------------------------------


@dataclass(slots=True)
class ProbedRun:
    """The prefill of a prompt as the probe saw it, and the engine that ran it (its
    pool still holds the prompt's K/V until the caller is done)."""

    capture: StepCapture
    token_ids: list[int]
    output_token_ids: list[int]
    engine: LLMEngine


def lesson_engine(loaded: LoadedModel, max_model_len: int, block_size: int = 16,
                  enable_prefix_caching: bool = False) -> LLMEngine:
    """A private engine on the loaded weights whose pool holds one request of
    `max_model_len` tokens and whose token budget takes it in one step."""
    per_block = loaded.arch.kv_bytes_per_token(loaded.dtype.itemsize) * block_size
    config = EngineConfig.from_kwargs(
        dtype=loaded.dtype, block_size=block_size, max_model_len=max_model_len,
        kv_cache_memory=per_block * blocks_needed(max_model_len, block_size),
        max_num_batched_tokens=max(max_model_len, 16),
        enable_prefix_caching=enable_prefix_caching)
    return LLMEngine(config, loaded=loaded)


def wait_for_turn(engine: LLMEngine, budget: LabBudget | None) -> None:
    """Before a lesson engine's step: wait while the serving engine has work, and stop
    the run if it is past its token or time budget (lab_limits.py)."""
    if budget is not None:
        budget.before_step(engine)


def lesson_step(engine: LLMEngine, budget: LabBudget | None) -> list[RequestOutput]:
    wait_for_turn(engine, budget)
    return engine.step()


def probed_prefill(loaded: LoadedModel, token_ids: list[int], layers: set[int] | None,
                   params: SamplingParams | None = None,
                   budget: LabBudget | None = None) -> ProbedRun:
    """Prefill `token_ids` in a private engine with the probe on `layers` (None: all)
    and run the request to its end with `params` (default: one greedy token). The
    shared model is only read, so engines in other threads are not disturbed."""
    params = params or SamplingParams(temperature=0, max_tokens=1, ignore_eos=True,
                                      detokenize=False)
    engine = lesson_engine(loaded, len(token_ids) + params.max_tokens + 1)
    probe = engine.runner.probe = ForwardProbe(PROBED_REQUEST, layers)
    engine.add_request(PROBED_REQUEST, token_ids, params)
    output: list[int] = []
    try:
        while engine.has_unfinished_requests():
            for out in lesson_step(engine, budget):
                output = list(out.outputs[0].token_ids)
    except BaseException:
        engine.shutdown()
        raise
    capture = probe.steps[0]
    if capture.num_tokens != len(token_ids):
        raise RuntimeError(f"the prefill step ran {capture.num_tokens} of "
                           f"{len(token_ids)} tokens")
    return ProbedRun(capture, token_ids, output, engine)
