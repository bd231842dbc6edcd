"""Rotary position embedding (RoPE), in the half-split layout HF checkpoints use."""

from __future__ import annotations

import torch

from kvscope.kernels.build import cpu_kernels


def inverse_frequencies(head_dim: int, theta: float) -> torch.Tensor:
    """The rotation speed of each dimension pair (i, i + d/2), radians per position:
    theta^(-2i/d), float32 [head_dim / 2]."""
    return 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float()
                            / head_dim))


def rope_tables(head_dim: int, max_len: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin for every position: two float32 tensors [max_len, head_dim]."""
    inv_freq = inverse_frequencies(head_dim, theta)
    positions = torch.arange(max_len, dtype=torch.int64).float()
    freqs = torch.outer(positions, inv_freq)
    angles = torch.cat((freqs, freqs), dim=-1)
    return angles.cos(), angles.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x [T, heads, d]; cos/sin [T, 1, d]. Rotates pairs (i, i + d/2)."""
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rotated * sin


def rope_qk_inplace(qkv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, heads: int,
                    head_dim: int) -> None:
    """Rotate the first `heads` heads (the q heads, then the k heads) of each row of
    the fused projection qkv [T, width] in place; cos/sin [T, head_dim]."""
    kernels = cpu_kernels()
    if kernels is not None:
        kernels.rope_inplace(qkv, cos, sin, heads, head_dim)
        return
    qk = qkv[:, :heads * head_dim].view(qkv.shape[0], heads, head_dim)
    qk.copy_(apply_rope(qk, cos.unsqueeze(1), sin.unsqueeze(1)))
