"""TIGER's T5-style building blocks: RMSNorm, bucketed relative positions, attention with cacheable keys/values,
and the encoder and decoder layers.

Kept apart from ``genrec.models.tiger`` (the model, its token layout and decoding) because GLASS reuses the
attention and the relative buckets and GAMER reuses the norm; the layer classes read their sizes from
``TIGER.Config``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from genrec.errors import ConfigError

if TYPE_CHECKING:
    from genrec.models.tiger import TIGER

Fuse = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (normed query, cross-attention output) -> output


class RMSNorm(nn.Module):
    """T5's layer norm: scale only, no mean subtraction, no bias (own copy: nn.RMSNorm needs torch >= 2.4)."""

    def __init__(self, d: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(d))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


def relative_buckets(rel: torch.Tensor, bidirectional: bool, num_buckets: int, max_distance: int) -> torch.Tensor:
    """T5 bucketing of ``rel = key_pos - query_pos``: exact buckets for small distances, log-spaced beyond.

    Encoders see both directions (half the buckets each); a causal decoder only looks back.
    """
    out = torch.zeros_like(rel)
    if bidirectional:
        num_buckets //= 2
        out = out + (rel > 0).long() * num_buckets
        dist = rel.abs()
    else:
        dist = (-rel).clamp(min=0)
    exact = max(num_buckets // 2, 1)
    far = exact + (torch.log(dist.clamp(min=1).float() / exact) / math.log(max(max_distance / exact, 1.0 + 1e-6))
                   * (num_buckets - exact)).long()
    far = far.clamp(max=num_buckets - 1)
    return out + torch.where(dist < exact, dist, far)


class Attention(nn.Module):
    """Multi-head attention with an inner width ``heads * head_dim`` that may differ from ``d`` (6 x 64 vs 128)."""

    def __init__(self, d: int, heads: int, head_dim: int, dropout: float) -> None:
        super().__init__()
        self.heads, self.head_dim = heads, head_dim
        inner = heads * head_dim
        self.q = nn.Linear(d, inner, bias=False)
        self.k = nn.Linear(d, inner, bias=False)
        self.v = nn.Linear(d, inner, bias=False)
        self.o = nn.Linear(inner, d, bias=False)
        self.dropout = dropout

    def split(self, x: torch.Tensor) -> torch.Tensor:
        b, s, _ = x.shape
        return x.view(b, s, self.heads, self.head_dim).transpose(1, 2)  # (B, h, S, dk)

    def keys_values(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, S, d) -> keys, values (B, h, S, dk)."""
        return self.split(self.k(x)), self.split(self.v(x))

    def attend(self, x: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        """Queries from ``x`` (B, T, d) over cached keys/values; ``bias`` (B|1, h|1, T, S) additive, -inf = masked."""
        q = self.split(self.q(x))  # (B, h, T, dk)
        if bias is not None and bias.dtype != q.dtype:  # autocast: the mask must match the query dtype
            bias = bias.to(q.dtype)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=bias,
                                           dropout_p=self.dropout if self.training else 0.0)  # (B, h, T, dk)
        b, _, t, _ = y.shape
        return self.o(y.transpose(1, 2).reshape(b, t, self.heads * self.head_dim))

    def forward(self, x: torch.Tensor, kv: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        k, v = self.keys_values(kv)
        return self.attend(x, k, v, bias)


class FeedForward(nn.Module):
    def __init__(self, d: int, d_ff: int, dropout: float, activation: str) -> None:
        super().__init__()
        acts = {"relu": F.relu, "gelu": F.gelu}
        if activation not in acts:
            raise ConfigError(f"model.activation: '{activation}' is not one of {sorted(acts)}")
        self.act = acts[activation]
        self.wi = nn.Linear(d, d_ff, bias=False)
        self.wo = nn.Linear(d_ff, d, bias=False)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.wo(self.drop(self.act(self.wi(x))))


class EncoderLayer(nn.Module):
    def __init__(self, cfg: TIGER.Config) -> None:
        super().__init__()
        self.norm1 = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.attn = Attention(cfg.d_model, cfg.num_heads, cfg.head_dim, cfg.dropout)
        self.norm2 = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.ffn = FeedForward(cfg.d_model, cfg.d_ff, cfg.dropout, cfg.activation)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        h = self.norm1(x)
        x = x + self.drop(self.attn(h, h, bias))
        return x + self.drop(self.ffn(self.norm2(x)))


class DecoderLayer(nn.Module):
    def __init__(self, cfg: TIGER.Config) -> None:
        super().__init__()
        d = cfg.d_model
        self.norm1 = RMSNorm(d, cfg.norm_eps)
        self.self_attn = Attention(d, cfg.num_heads, cfg.head_dim, cfg.dropout)
        self.norm2 = RMSNorm(d, cfg.norm_eps)
        self.cross_attn = Attention(d, cfg.num_heads, cfg.head_dim, cfg.dropout)
        self.norm3 = RMSNorm(d, cfg.norm_eps)
        self.ffn = FeedForward(d, cfg.d_ff, cfg.dropout, cfg.activation)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, self_kv: tuple[torch.Tensor, torch.Tensor], self_bias: torch.Tensor,
                cross_kv: tuple[torch.Tensor, torch.Tensor], cross_bias: torch.Tensor,
                fuse: Fuse | None = None) -> torch.Tensor:
        """``self_kv`` must already contain this call's own positions (teacher forcing or the cache + new).

        ``fuse(query, z)`` (optional) may replace the cross-attention output ``z`` (B, T, d) given the normed
        query (B, T, d): GLASS mixes in a second cross-attention there; TIGER passes nothing.
        """
        x = x + self.drop(self.self_attn.attend(self.norm1(x), *self_kv, self_bias))
        h = self.norm2(x)
        z = self.cross_attn.attend(h, *cross_kv, cross_bias)
        x = x + self.drop(z if fuse is None else fuse(h, z))
        return x + self.drop(self.ffn(self.norm3(x)))


__all__ = ["Attention", "DecoderLayer", "EncoderLayer", "FeedForward", "Fuse", "RMSNorm", "relative_buckets"]
