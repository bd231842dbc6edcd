"""The embeddings lesson: the rows kvscope's forward pass looked up for the typed
tokens (a slice of each, and its norm), and each token's nearest neighbours by
cosine similarity in the model's real embedding matrix."""

from __future__ import annotations

from typing import Any

import torch
from pydantic import Field

from kvscope.model.loader import LoadedModel
from kvscope.scope.inside.common import (
    MAX_PROMPT_CHARS,
    norm,
    probed_prefill,
    rounded,
    rounded_all,
    token_text,
    token_texts,
    tokenize,
)
from kvscope.scope.lab_limits import LabBudget
from kvscope.serve.protocol import StrictModel

MAX_TOKENS = 64


class EmbeddingsRequest(StrictModel):
    text: str = Field(min_length=1, max_length=MAX_PROMPT_CHARS)
    dim_start: int = Field(0, ge=0)
    dim_count: int = Field(32, ge=1, le=64)
    neighbours: int = Field(5, ge=1, le=10)


def embeddings_lesson(loaded: LoadedModel, req: EmbeddingsRequest,
                      budget: LabBudget | None = None) -> dict[str, Any]:
    hidden = loaded.arch.hidden_size
    if req.dim_start + req.dim_count > hidden:
        raise ValueError(f"dim_start + dim_count must be at most the hidden size {hidden}; "
                         f"got {req.dim_start} + {req.dim_count}")
    ids = tokenize(loaded, req.text, MAX_TOKENS)
    run = probed_prefill(loaded, ids, layers=set(), budget=budget)
    run.engine.shutdown()
    rows = run.capture.embedding
    assert rows is not None
    table = loaded.model.embed_tokens.weight.float()
    unit_table = table / table.norm(dim=1, keepdim=True).clamp_min(1e-12)
    window = rows[:, req.dim_start:req.dim_start + req.dim_count]
    return {
        "tokens": token_texts(loaded, ids), "token_ids": ids, "hidden_size": hidden,
        "vocab_size": loaded.arch.vocab_size, "dim_start": req.dim_start,
        "dim_count": req.dim_count,
        "rows": [{"position": i, "id": t, "text": token_text(loaded, t), "norm": norm(rows[i]),
                  "slice": rounded_all(window[i]),
                  "neighbours": _neighbours(loaded, unit_table, rows[i], t, req.neighbours)}
                 for i, t in enumerate(ids)],
        "slice_abs_max": rounded(window.abs().max().item()),
    }


def _neighbours(loaded: LoadedModel, unit_table: torch.Tensor, row: torch.Tensor,
                token_id: int, count: int) -> list[dict[str, Any]]:
    """The `count` other tokens whose rows point most nearly the same way as `row`."""
    cosine = unit_table @ (row / row.norm().clamp_min(1e-12))
    cosine[token_id] = -2.0  # not itself
    values, ids = cosine.topk(count)
    return [{"id": t, "text": token_text(loaded, t), "cosine": rounded(v)}
            for v, t in zip(values.tolist(), ids.tolist(), strict=True)]
