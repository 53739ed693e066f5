"""Attention primitives: HSTU's pointwise (SiLU) attention and the masks both families use."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def causal_valid_mask(lengths: torch.Tensor, L: int) -> torch.Tensor:
    """(B, L, L) bool: query i may read key j iff j <= i and j is a real position."""
    ar = torch.arange(L, device=lengths.device)
    causal = ar[None, :] <= ar[:, None]  # (L, L)
    valid = ar[None, :] < lengths[:, None]  # (B, L)
    return causal[None] & valid[:, None, :]


def hstu_pointwise_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    bias: torch.Tensor | None,
    mask: torch.Tensor,
    norm_len: int,
) -> torch.Tensor:
    """HSTU attention: ``(silu(q k^T + bias) / N) * mask @ v`` with no softmax.

    q, k: (B, h, L, dqk); v: (B, h, L, dv); bias: (B, L, L) shared by heads; mask: (B, L, L) bool.
    ``norm_len`` is the fixed padded length N (not the true length), as in the reference code, so a
    user's output does not depend on how long the other rows of the batch are.
    Returns (B, L, h*dv).
    """
    s = torch.einsum("bhid,bhjd->bhij", q, k)  # (B, h, L, L)
    if bias is not None:
        s = s + bias[:, None]
    a = F.silu(s) / norm_len
    a = a * mask[:, None].to(a.dtype)
    o = torch.einsum("bhij,bhjd->bhid", a, v)  # (B, h, L, dv)
    B, h, L, dv = o.shape
    return o.transpose(1, 2).reshape(B, L, h * dv)
