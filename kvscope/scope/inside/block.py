"""The decoder-block lesson: one token's path through one layer (RMSNorm, attention,
residual add, RMSNorm, gated MLP, residual add) with the real vector norm at each
point, the MLP neurons that fired hardest, and the residual stream's norm through
every layer, all as kvscope's forward pass computed them."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from pydantic import Field

from kvscope.model.loader import LoadedModel
from kvscope.model.probe import StepCapture
from kvscope.scope.inside.common import (
    MAX_PROMPT_CHARS,
    check_layer,
    norm,
    probed_prefill,
    resolve_position,
    rounded,
    token_texts,
    tokenize,
)
from kvscope.scope.lab_limits import LabBudget
from kvscope.serve.protocol import StrictModel

MAX_TOKENS = 128
# (name on the page, the probe's point) in the order a token meets them
PATH = (("residual in", "residual_in"), ("input RMSNorm", "input_norm"),
        ("attention output", "attention_output"), ("residual after attention", "residual_mid"),
        ("post-attention RMSNorm", "post_attention_norm"), ("MLP output", "mlp_output"),
        ("residual out", "residual_out"))


class BlockRequest(StrictModel):
    prompt: str = Field(min_length=1, max_length=MAX_PROMPT_CHARS)
    layer: int = 0
    position: int = -1
    top_neurons: int = Field(8, ge=1, le=32)


def block_lesson(loaded: LoadedModel, req: BlockRequest,
                 budget: LabBudget | None = None) -> dict[str, Any]:
    arch = loaded.arch
    check_layer(arch, req.layer)
    ids = tokenize(loaded, req.prompt, MAX_TOKENS)
    position = resolve_position(req.position, len(ids))
    run = probed_prefill(loaded, ids, layers=None, budget=budget)
    run.engine.shutdown()
    capture = run.capture
    assert capture.embedding is not None and capture.final_norm is not None
    norms = [_layer_norms(capture, i, position) for i in range(arch.num_layers)]
    chosen = norms[req.layer]
    return {
        "tokens": token_texts(loaded, ids), "token_ids": ids, "position": position,
        "layer": req.layer, "num_layers": arch.num_layers, "hidden_size": arch.hidden_size,
        "intermediate_size": arch.intermediate_size,
        "path": [{"name": name, "norm": chosen[point]} for name, point in PATH],
        "mlp_top": _top_neurons(capture.layer(req.layer)["gate_up"][position],
                                req.top_neurons),
        "layers": [{"layer": i, "residual_in": n["residual_in"], "input_norm": n["input_norm"],
                    "attention_output": n["attention_output"], "residual_mid": n["residual_mid"],
                    "post_attention_norm": n["post_attention_norm"],
                    "mlp_output": n["mlp_output"], "residual_out": n["residual_out"]}
                   for i, n in enumerate(norms)],
        "embedding_norm": norm(capture.embedding[position]),
        "final_norm": norm(capture.final_norm[position]),
    }


def _layer_norms(capture: StepCapture, layer: int, position: int) -> dict[str, float]:
    points = capture.layer(layer)
    norms = {point: norm(points[point][position]) for _, point in PATH[:-1]}
    norms["residual_out"] = norm(capture.residual_out(layer)[position])
    return norms


def _top_neurons(gate_up: torch.Tensor, count: int) -> list[dict[str, Any]]:
    """The MLP's intermediate units with the largest |silu(gate) × up| for one token."""
    gate, up = gate_up.chunk(2)
    activation = F.silu(gate) * up
    top = activation.abs().topk(count).indices.tolist()
    return [{"neuron": i, "gate": rounded(gate[i].item()), "up": rounded(up[i].item()),
             "activation": rounded(activation[i].item())} for i in top]
