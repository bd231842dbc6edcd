"""The logits-and-sampling lesson: the next-token distribution of a prompt from the
real logits, and what temperature, top-k, top-p and min-p leave of it, computed by
the engine's own sampler (`Sampler.probabilities`, the distribution a request draws
from); the drawn token comes from a real seeded generate() with the same
SamplingParams."""

from __future__ import annotations

from typing import Any

import torch
from pydantic import Field

from kvscope.model.loader import LoadedModel
from kvscope.sample.sampler import Sampler
from kvscope.sampling_params import SamplingParams
from kvscope.scope.inside.common import (
    MAX_PROMPT_CHARS,
    probed_prefill,
    rounded,
    token_text,
    token_texts,
    tokenize,
)
from kvscope.scope.lab_limits import LabBudget
from kvscope.serve.protocol import StrictModel

MAX_TOKENS = 256
MAX_SURVIVORS_LISTED = 1000


class SamplingLessonRequest(StrictModel):
    prompt: str = Field(min_length=1, max_length=MAX_PROMPT_CHARS)
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_k: int = Field(0, ge=0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    min_p: float = Field(0.0, ge=0.0, le=1.0)
    seed: int = Field(0, ge=0, le=2**63 - 1)
    show: int = Field(20, ge=1, le=50)


def sampling_lesson(loaded: LoadedModel, req: SamplingLessonRequest,
                    budget: LabBudget | None = None) -> dict[str, Any]:
    vocab = loaded.arch.vocab_size
    if req.top_k > vocab:
        raise ValueError(f"top_k must be at most the vocabulary size {vocab}; got {req.top_k}")
    ids = tokenize(loaded, req.prompt, MAX_TOKENS)
    params = SamplingParams(temperature=req.temperature, top_k=req.top_k, top_p=req.top_p,
                            min_p=req.min_p, seed=req.seed, max_tokens=1, ignore_eos=True,
                            detokenize=False)
    run = probed_prefill(loaded, ids, layers=set(), params=params, budget=budget)
    final = final_distribution(run.engine.sampler, run.capture.logits, params)
    run.engine.shutdown()
    logits = run.capture.logits
    assert logits is not None
    drawn, greedy = run.output_token_ids[0], int(logits.argmax())
    survivors = final.nonzero().squeeze(1)
    survivors = survivors[final[survivors].argsort(descending=True, stable=True)]
    raw = torch.softmax(logits, -1)
    scaled = torch.softmax(logits / req.temperature, -1) if req.temperature > 0 else raw
    top = logits.topk(req.show).indices.tolist()
    return {
        "tokens": token_texts(loaded, ids), "token_ids": ids, "vocab_size": vocab,
        "params": {"temperature": req.temperature, "top_k": req.top_k, "top_p": req.top_p,
                   "min_p": req.min_p, "seed": req.seed},
        "candidates": [{"rank": r, "id": t, "text": token_text(loaded, t),
                        "logit": rounded(logits[t].item()), "prob": rounded(raw[t].item()),
                        "prob_scaled": rounded(scaled[t].item()),
                        "survives": bool(final[t] > 0), "prob_final": rounded(final[t].item())}
                       for r, t in enumerate(top, start=1)],
        "num_survivors": len(survivors),
        "survivor_ids": (survivors.tolist() if len(survivors) <= MAX_SURVIVORS_LISTED
                         else None),
        "drawn": {"id": drawn, "text": token_text(loaded, drawn),
                  "prob_final": rounded(final[drawn].item())},
        "greedy": {"id": greedy, "text": token_text(loaded, greedy)},
    }


def final_distribution(sampler: Sampler, logits: torch.Tensor | None,
                       params: SamplingParams) -> torch.Tensor:
    """What the engine draws from for these logits: the sampler's own filtered,
    renormalised distribution, or all mass on the argmax when greedy."""
    assert logits is not None
    if params.is_greedy:
        return torch.zeros_like(logits).index_fill_(0, logits.argmax()[None], 1.0)
    return sampler.probabilities(logits[None].clone(), params)[0]
