"""GAMER's layer pieces: per-token route, attention masks, the (cross-level) attention and one decoder layer.

Split from :mod:`genrec.models.gamer` (which re-exports every name) so the model file holds the token
layout, decoding and recommendation API. See that module's docstring for the architecture (spec §3.4) and
the masking defect A-G1 that ``masked_attention(..., released=True)`` reproduces.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from genrec.models.tiger_layers import RMSNorm
from genrec.nn.moe import RoutedFFN
from genrec.nn.rope import apply_rope

if TYPE_CHECKING:
    from genrec.models.gamer import GAMER


class Route(NamedTuple):
    """Per-token side information derived from the token layout (the released ``router``)."""

    pos_in_item: torch.Tensor  # (B, T) π: 0 pad, 1 behavior token, 2..m+1 SID levels 1..m
    behavior: torch.Tensor  # (B, T) behavior id of the token's interaction, -1 on padding
    level: torch.Tensor  # (B, T) λ: behavior level of the interaction, LEVEL_PAD on padding
    positions: torch.Tensor  # (B, T) RoPE positions: real tokens visible before this one
    real: torch.Tensor  # (B, T) bool
    segment: torch.Tensor  # (B, T) 0 = shared prefix; k > 0 = a branch that sees the prefix and itself only

    @property
    def beh_att(self) -> torch.Tensor:
        """β_att: behavior + 1 on every token of an interaction, 0 on padding."""
        return self.behavior + 1

    @property
    def beh_ffn(self) -> torch.Tensor:
        """β_ffn: behavior + 1 on SID tokens, 0 on behavior tokens and padding."""
        return torch.where(self.pos_in_item >= 2, self.behavior + 1, torch.zeros_like(self.behavior))


def visible(route: Route) -> torch.Tensor:
    """(B, T, T) bool: ``s <= t`` and, for branched rows, ``s`` in the prefix or in ``t``'s own branch."""
    t = route.real.shape[1]
    causal = torch.ones(t, t, dtype=torch.bool, device=route.real.device).tril()
    seg = route.segment
    same = (seg[:, None, :] == 0) | (seg[:, None, :] == seg[:, :, None])  # (B, T, S)
    return causal[None] & same


def self_mask(route: Route) -> torch.Tensor:
    """(B, T, T) self-attention mask: visible real keys; a padding query sees only itself (no empty rows)."""
    t = route.real.shape[1]
    eye = torch.eye(t, dtype=torch.bool, device=route.real.device)[None]
    return visible(route) & (route.real[:, None, :] | eye)


def cross_level_mask(route: Route) -> torch.Tensor:
    """(B, T, T) cross-level mask ``M_ts = 1[s <= t and λ(s) < λ(t)]`` between visible real tokens."""
    lower = route.level[:, None, :] < route.level[:, :, None]  # (B, T, S)
    return visible(route) & route.real[:, None, :] & route.real[:, :, None] & lower


def masked_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, allowed: torch.Tensor,
                     released: bool = False, dropout: float = 0.0, need_weights: bool = False
                     ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Softmax attention with a boolean mask, GQA by repeating key/value heads.

    q (B, h, T, dk), k/v (B, kvh, S, dk), allowed (B, T, S) -> (B, h, T, dk) and, with ``need_weights``,
    the (B, h, T, S) weights actually applied. Rows with no allowed key give 0 (fixed) or, with
    ``released``, the released code's uniform average over all S positions.
    """
    groups = q.shape[1] // k.shape[1]
    if groups > 1:
        k = k.repeat_interleave(groups, dim=1)  # (B, h, S, dk)
        v = v.repeat_interleave(groups, dim=1)
    any_ok = allowed.any(-1)  # (B, T)
    if released:
        bias = torch.zeros(allowed.shape, dtype=q.dtype, device=q.device).masked_fill(
            ~allowed, torch.finfo(q.dtype).min)  # a fully masked row is flat: uniform over every position
    else:
        blocked = ~allowed & any_ok[..., None]  # empty rows stay finite here and are zeroed below
        bias = torch.zeros(allowed.shape, dtype=q.dtype, device=q.device).masked_fill(blocked, float("-inf"))
    bias = bias[:, None]  # (B, 1, T, S)
    weights = None
    if need_weights:
        scores = (q @ k.transpose(-1, -2)) * q.shape[-1] ** -0.5 + bias  # (B, h, T, S)
        weights = torch.softmax(scores.float(), dim=-1).to(q.dtype)
        if not released:
            weights = weights * any_ok[:, None, :, None].to(weights.dtype)
        out = F.dropout(weights, dropout) @ v
    else:
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=dropout)
        if not released:
            out = out * any_ok[:, None, :, None].to(out.dtype)
    return out, weights


class Attention(nn.Module):
    """Grouped-query attention with per-head q/k RMSNorm and RoPE; ``cross=True`` makes it GAMER's
    cross-level interaction layer (behavior embeddings on q/k/v, SiLU output gate, empty-row handling)."""

    def __init__(self, cfg: GAMER.Config, cross: bool) -> None:
        super().__init__()
        h, kvh, dk, d = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, cfg.d_model
        self.h, self.kvh, self.dk, self.cross = h, kvh, dk, cross
        self.released = cross and cfg.released_mask
        self.dropout = cfg.dropout
        self.q = nn.Linear(d, h * dk, bias=False)
        self.k = nn.Linear(d, kvh * dk, bias=False)
        self.v = nn.Linear(d, kvh * dk, bias=False)
        self.o = nn.Linear(h * dk, d, bias=False)
        self.q_norm = RMSNorm(dk, cfg.norm_eps)
        self.k_norm = RMSNorm(dk, cfg.norm_eps)
        if cross:
            nb = cfg.num_behaviors + 1  # row 0 = padding
            self.eq = nn.Embedding(nb, h * dk)
            self.ek = nn.Embedding(nb, kvh * dk)
            self.ev = nn.Embedding(nb, kvh * dk)
            self.gate = nn.Linear(d, d, bias=False)

    def forward(self, x: torch.Tensor, beh: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                allowed: torch.Tensor, past: tuple[torch.Tensor, torch.Tensor] | None = None,
                need_weights: bool = False
                ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor], torch.Tensor | None]:
        """x (B, T, d), beh (B, T) β_att, allowed (B, T, S) with S = cached + T keys.

        Returns the output (B, T, d), the keys/values of all S positions (for the cache) and the weights.
        """
        b, t, _ = x.shape
        q = self.q(x).view(b, t, self.h, self.dk)
        k = self.k(x).view(b, t, self.kvh, self.dk)
        v = self.v(x).view(b, t, self.kvh, self.dk)
        if self.cross:
            q = q + self.eq(beh).view(b, t, self.h, self.dk)
            k = k + self.ek(beh).view(b, t, self.kvh, self.dk)
            v = v + self.ev(beh).view(b, t, self.kvh, self.dk)
        q = apply_rope(self.q_norm(q).transpose(1, 2), cos, sin)  # (B, h, T, dk)
        k = apply_rope(self.k_norm(k).transpose(1, 2), cos, sin)  # (B, kvh, T, dk)
        v = v.transpose(1, 2)  # (B, kvh, T, dk)
        if past is not None:
            k = torch.cat([past[0], k], dim=2)  # (B, kvh, S, dk)
            v = torch.cat([past[1], v], dim=2)
        y, w = masked_attention(q, k, v, allowed, self.released, self.dropout if self.training else 0.0,
                                need_weights)
        y = self.o(y.transpose(1, 2).reshape(b, t, self.h * self.dk))  # (B, T, d)
        if self.cross:
            y = y * F.silu(self.gate(x))
        return y, (k, v), w


class LayerInputs(NamedTuple):
    cos: torch.Tensor  # (B, 1, T, dk)
    sin: torch.Tensor
    beh_att: torch.Tensor  # (B, T)
    beh_ffn: torch.Tensor  # (B, T)
    pos_in_item: torch.Tensor  # (B, T)
    self_allowed: torch.Tensor  # (B, T, S)
    cross_allowed: torch.Tensor  # (B, T, S)


class Layer(nn.Module):
    def __init__(self, cfg: GAMER.Config, cross: bool, inject: bool) -> None:
        super().__init__()
        d = cfg.d_model
        self.norm1 = RMSNorm(d, cfg.norm_eps)
        self.self_attn = Attention(cfg, cross=False)
        self.cross_attn = Attention(cfg, cross=True) if cross else None
        self.norm_cross = RMSNorm(d, cfg.norm_eps) if cross else None
        self.norm2 = RMSNorm(d, cfg.norm_eps)
        self.inject = nn.Embedding(cfg.num_behaviors + 1, cfg.behavior_dim) if inject else None
        experts = cfg.sid_length + 2 if cfg.position_experts else 1  # pad + behavior token + m SID levels
        self.ffn = RoutedFFN(experts, d + (cfg.behavior_dim if inject else 0), cfg.d_ff, d, cfg.dropout)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, li: LayerInputs, past: tuple[torch.Tensor, ...] | None = None,
                need_weights: bool = False) -> tuple[torch.Tensor, tuple[torch.Tensor, ...], dict[str, Any]]:
        weights: dict[str, Any] = {}
        a, kv_self, weights["self"] = self.self_attn(self.norm1(x), li.beh_att, li.cos, li.sin, li.self_allowed,
                                                     None if past is None else past[:2], need_weights)
        x = x + self.drop(a)
        cache = kv_self
        if self.cross_attn is not None:
            assert self.norm_cross is not None
            c, kv_cross, weights["cross"] = self.cross_attn(self.norm_cross(x), li.beh_att, li.cos, li.sin,
                                                            li.cross_allowed, None if past is None else past[2:],
                                                            need_weights)
            x = x + self.drop(c)
            cache = kv_self + kv_cross
        z = self.norm2(x)
        if self.inject is not None:
            z = torch.cat([z, self.inject(li.beh_ffn)], dim=-1)  # (B, T, d + behavior_dim)
        route = li.pos_in_item if len(self.ffn.experts) > 1 else torch.zeros_like(li.pos_in_item)
        x = x + self.drop(self.ffn(z, route))
        return x, cache, weights


def rope_positions(real: torch.Tensor, segment: torch.Tensor) -> torch.Tensor:
    """(B, T) RoPE positions: real tokens visible before each token (prefix + own branch), minus one.

    Branches (segment > 0) are contiguous blocks after the prefix; each restarts right after the prefix.
    """
    r = real.long()
    c_all = torch.cumsum(r, 1)
    c0 = torch.cumsum(r * (segment == 0), 1)
    new = torch.ones_like(segment, dtype=torch.bool)
    new[:, 1:] = segment[:, 1:] != segment[:, :-1]
    before = c_all - r
    start = torch.cummax(torch.where(new, before, torch.full_like(before, -1)), 1).values
    within = c_all - start
    pos = torch.where(segment == 0, c0, c0 + within) - 1
    return pos.clamp(min=0)
