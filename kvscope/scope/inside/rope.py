"""The RoPE lesson: the angle each dimension pair of a head is rotated by at each
position (computed from the model's rope_theta), and a measured effect on real
vectors: one layer's real query and key, taken before RoPE, rotated by kvscope's own
RoPE code to positions m and m - d, give a score q·k/√d that depends on d alone."""

from __future__ import annotations

import math
from typing import Any

import torch
from pydantic import Field

from kvscope.model.layers.rotary import apply_rope, inverse_frequencies, rope_tables
from kvscope.model.loader import LoadedModel
from kvscope.scope.inside.common import (
    MAX_PROMPT_CHARS,
    check_head,
    check_layer,
    probed_prefill,
    resolve_position,
    rounded,
    token_texts,
    tokenize,
)
from kvscope.scope.lab_limits import LabBudget
from kvscope.serve.protocol import StrictModel

MAX_TOKENS = 128


class RopeRequest(StrictModel):
    prompt: str = Field(min_length=1, max_length=MAX_PROMPT_CHARS)
    layer: int = 0
    head: int = 0
    query_position: int = -1
    key_position: int = 0
    max_distance: int = Field(256, ge=1, le=1024)


def rope_lesson(loaded: LoadedModel, req: RopeRequest,
                budget: LabBudget | None = None) -> dict[str, Any]:
    arch = loaded.arch
    check_layer(arch, req.layer)
    check_head(arch, req.head)
    ids = tokenize(loaded, req.prompt, MAX_TOKENS)
    q_pos = resolve_position(req.query_position, len(ids), "query_position")
    k_pos = resolve_position(req.key_position, len(ids), "key_position")
    if k_pos > q_pos:
        raise ValueError(f"key_position ({k_pos}) must not come after query_position "
                         f"({q_pos}): a query attends only to earlier keys")
    run = probed_prefill(loaded, ids, layers={req.layer}, budget=budget)
    run.engine.shutdown()
    points = run.capture.layer(req.layer)
    kv_head = req.head // (arch.num_heads // arch.num_kv_heads)
    q, k = points["q_pre_rope"][q_pos, req.head], points["k_pre_rope"][k_pos, kv_head]
    scale = arch.head_dim ** -0.5
    scores = _scores_by_distance(q, k, arch.head_dim, arch.rope_theta, req.max_distance, scale)
    in_run = (points["q"][q_pos, req.head] @ points["k"][k_pos, kv_head]).item() * scale
    distance = q_pos - k_pos
    at_distance = _scores_by_distance(q, k, arch.head_dim, arch.rope_theta, distance,
                                      scale)[distance]
    return {
        **angle_table(arch.head_dim, arch.rope_theta, arch.max_position_embeddings),
        "tokens": token_texts(loaded, ids), "layer": req.layer, "head": req.head,
        "kv_head": kv_head, "query_position": q_pos, "key_position": k_pos,
        "distance": distance,
        "scores": [{"distance": d, "score": rounded(s)} for d, s in enumerate(scores)],
        "score_in_run": rounded(in_run), "score_at_distance": rounded(at_distance),
        "score_without_rope": rounded((q @ k).item() * scale),
    }


def _scores_by_distance(q: torch.Tensor, k: torch.Tensor, head_dim: int, theta: float,
                        max_distance: int, scale: float) -> list[float]:
    """q rotated to position m = max_distance, k to m - d, for d = 0..max_distance."""
    cos, sin = rope_tables(head_dim, max_distance + 1, theta)
    m = max_distance
    rotated_q = apply_rope(q[None, None], cos[m:m + 1, None], sin[m:m + 1, None])[0, 0]
    key_positions = torch.arange(m, -1, -1)  # d = 0, 1, ..., m
    rotated_k = apply_rope(k.expand(m + 1, 1, -1), cos[key_positions, None],
                           sin[key_positions, None])[:, 0]
    return (rotated_k @ rotated_q * scale).tolist()


def angle_table(head_dim: int, theta: float, max_positions: int) -> dict[str, Any]:
    """Each pair's rotation speed and wavelength, and its angle (mod 2π) at powers of
    two positions up to the model's context length."""
    inv_freq = inverse_frequencies(head_dim, theta).double()
    positions = [0] + [1 << i for i in range(max(1, max_positions).bit_length())
                       if 1 << i < max_positions]
    half = head_dim // 2
    return {
        "rope_theta": theta, "head_dim": head_dim, "num_pairs": half,
        "pairs": [{"pair": i, "dims": [i, i + half], "inv_freq": rounded(f),
                   "wavelength": rounded(2 * math.pi / f)}
                  for i, f in enumerate(inv_freq.tolist())],
        "angle_positions": positions,
        "angles": [[rounded(math.fmod(p * f, 2 * math.pi)) for f in inv_freq.tolist()]
                   for p in positions],
    }
