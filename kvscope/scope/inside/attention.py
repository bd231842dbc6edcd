"""The attention-per-head lesson: the causal attention matrix of one layer and head
over a prompt, as kvscope's forward pass computed it (the probe's probabilities come
from the post-RoPE queries and the keys read back from the paged pool), and which
query heads share its KV head (grouped-query attention) and what that saves."""

from __future__ import annotations

from typing import Any

from pydantic import Field

from kvscope.model.loader import LoadedModel
from kvscope.scope.inside.common import (
    MAX_PROMPT_CHARS,
    check_head,
    check_layer,
    probed_prefill,
    rounded,
    rounded_all,
    token_texts,
    tokenize,
)
from kvscope.scope.kv_sizes import kv_bytes_per_token
from kvscope.scope.lab_limits import LabBudget
from kvscope.serve.protocol import StrictModel

MAX_TOKENS = 128


class AttentionHeadRequest(StrictModel):
    prompt: str = Field(min_length=1, max_length=MAX_PROMPT_CHARS)
    layer: int = 0
    head: int = 0


def attention_lesson(loaded: LoadedModel, req: AttentionHeadRequest,
                     budget: LabBudget | None = None) -> dict[str, Any]:
    arch = loaded.arch
    check_layer(arch, req.layer)
    check_head(arch, req.head)
    ids = tokenize(loaded, req.prompt, MAX_TOKENS)
    run = probed_prefill(loaded, ids, layers={req.layer}, budget=budget)
    run.engine.shutdown()
    probs = run.capture.layer(req.layer)["attention_probs"][req.head]  # [T, T]
    group_size = arch.num_heads // arch.num_kv_heads
    kv_head = req.head // group_size
    with_gqa = kv_bytes_per_token(arch.num_layers, arch.num_kv_heads, arch.head_dim,
                                  loaded.dtype.itemsize)
    without = kv_bytes_per_token(arch.num_layers, arch.num_heads, arch.head_dim,
                                 loaded.dtype.itemsize)
    return {
        "tokens": token_texts(loaded, ids), "token_ids": ids, "layer": req.layer,
        "head": req.head, "num_layers": arch.num_layers, "num_heads": arch.num_heads,
        "num_kv_heads": arch.num_kv_heads, "head_dim": arch.head_dim, "kv_head": kv_head,
        "group": list(range(kv_head * group_size, (kv_head + 1) * group_size)),
        "probs": [rounded_all(probs[i, :i + 1]) for i in range(len(ids))],
        "row_max": [{"key": int(probs[i, :i + 1].argmax()),
                     "weight": rounded(probs[i, :i + 1].max().item())}
                    for i in range(len(ids))],
        "kv": {"kv_bytes_per_token": with_gqa, "kv_bytes_per_token_without_gqa": without,
               "ratio": rounded(arch.num_heads / arch.num_kv_heads)},
    }
