"""Attention primitives: HSTU's pointwise (SiLU) attention and the masks both families use."""

from __future__ import annotations

from collections.abc import Callable

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
    norm_len: int | float,
    temperature: float | None = None,
    dropout: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> torch.Tensor:
    """HSTU attention: ``(silu(q k^T / t + bias) / N) * mask @ v`` with no softmax.

    q, k: (B, h, L, dqk); v: (B, h, L, dv); bias: (B, L, L) shared by heads; mask: (B, L, L) bool, or
    float weights (multiplicative). ``norm_len`` is the fixed padded length N (not the true length), as in
    the reference code, so a user's output does not depend on how long the other rows of the batch are.
    ``temperature`` t divides the scores (None: unscaled); ``dropout`` acts on the normalised scores before
    the mask (the production ranker's score dropout). Returns (B, L, h*dv).
    """
    s = torch.einsum("bhid,bhjd->bhij", q, k)  # (B, h, L, L)
    if temperature is not None:
        s = s / temperature
    if bias is not None:
        s = s + bias[:, None]
    a = F.silu(s) / norm_len
    if dropout is not None:
        a = dropout(a)
    a = a * mask[:, None].to(a.dtype)
    o = torch.einsum("bhij,bhjd->bhid", a, v)  # (B, h, L, dv)
    B, h, L, dv = o.shape
    return o.transpose(1, 2).reshape(B, L, h * dv)


def with_column_mask(mask: torch.Tensor, column_mask: torch.Tensor | None, N: int) -> torch.Tensor:
    """Weight the first N (history) columns of a (B, L, L) mask: (B, N) for every row, (B, C, N) for rows N..

    The hook the ranker offers PGSA-style sparse attention: the result is a float mask, still
    multiplicative (0 drops a column); None returns ``mask`` itself.
    """
    if column_mask is None:
        return mask
    m = mask.to(torch.float32)
    if column_mask.dim() == 2:
        m[:, :, :N] = m[:, :, :N] * column_mask[:, None, :].to(m.dtype)
    else:
        m[:, N:, :N] = m[:, N:, :N] * column_mask.to(m.dtype)
    return m
