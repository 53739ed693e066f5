"""Rotary position embeddings (RoPE, rotate-half convention as in LLaMA / Qwen).

Positions are given per row, not assumed to be ``arange(T)``: a left-padded prompt starts its real tokens at
position 0, and incremental decoding continues each row from its own length. The attention score between a
rotated query at position ``i`` and a rotated key at position ``j`` then depends on ``i - j`` only.
"""

from __future__ import annotations

import torch


def rope_cos_sin(positions: torch.Tensor, dim: int, theta: float = 10_000.0) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, T) integer positions -> cos, sin of shape (B, 1, T, dim), ready to broadcast over heads."""
    if dim % 2:
        raise ValueError(f"RoPE needs an even head dimension, got {dim}")
    inv = theta ** (-torch.arange(0, dim, 2, device=positions.device, dtype=torch.float32) / dim)  # (dim/2,)
    ang = positions.to(torch.float32)[..., None] * inv  # (B, T, dim/2)
    ang = torch.cat([ang, ang], dim=-1)  # (B, T, dim)
    return ang.cos()[:, None], ang.sin()[:, None]


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    a, b = x.chunk(2, dim=-1)
    return torch.cat([-b, a], dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """(B, h, T, dim) queries or keys -> rotated, same shape and dtype."""
    return (x * cos.to(x.dtype)) + (_rotate_half(x) * sin.to(x.dtype))
