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


def mask_bias(allowed: torch.Tensor, any_ok: torch.Tensor, released: bool, dtype: torch.dtype) -> torch.Tensor:
    """Additive bias of a boolean key mask (broadcast with ``any_ok``, whether the query row has an allowed key).

    Released: ``finfo.min`` on every masked key, so a fully masked row is flat (uniform over every position).
    Fixed: ``-inf`` on masked keys of rows that have an allowed key; empty rows stay finite (zeroed later).
    """
    if released:
        blocked, fill = ~allowed, torch.finfo(dtype).min
    else:
        blocked, fill = ~allowed & any_ok, float("-inf")
    return torch.zeros(blocked.shape, dtype=dtype, device=blocked.device).masked_fill(blocked, fill)


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
    bias = mask_bias(allowed, any_ok[..., None], released, q.dtype)[:, None]  # (B, 1, T, S)
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


class SplitKV(NamedTuple):
    """One attention's keys/values in shared-prefix decoding: the prompt's once per user (B rows, never copied
    per beam), the generated tokens' per row. The R rows are B runs of ``g = R / B`` consecutive rows (the beams
    of one user, as :func:`genrec.sid.beam.beam_search` keeps them); run ``i`` reads user ``i``'s prefix."""

    prefix_k: torch.Tensor  # (B, kvh, S, dk)
    prefix_v: torch.Tensor  # (B, kvh, S, dk)
    prefix_allowed: torch.Tensor  # (B, S) bool: the prompt keys every generated token of the user may read
    k: torch.Tensor  # (R, kvh, U, dk) generated tokens so far (the query tokens' own keys included)
    v: torch.Tensor  # (R, kvh, U, dk)
    see_generated: bool  # self-attention: causal over the generated tokens; cross-level: none (same level)

    def extend(self, k: torch.Tensor, v: torch.Tensor) -> SplitKV:
        """Append the keys/values (R, kvh, T, dk) of T new generated tokens."""
        return self._replace(k=torch.cat([self.k, k], 2), v=torch.cat([self.v, v], 2))


def split_attention(q: torch.Tensor, kv: SplitKV, released: bool = False) -> torch.Tensor:
    """Queries (R, h, T, dk) of the newest T generated tokens over [prefix keys ; generated keys] -> (R, h, T, dk).

    What :func:`masked_attention` computes over the concatenated keys (to float rounding), without a copy of
    the prefix per row: a user's ``g * h / kvh * T`` query rows per key head share one matmul against its prefix
    (grouped-query attention by grouping queries, not by repeating keys), and one softmax spans both parts.
    """
    r, h, t, dk = q.shape
    b, kvh, s, _ = kv.prefix_k.shape
    u, g, grp = kv.k.shape[2], r // b, h // kvh
    rows = g * grp * t  # query rows per user and key head, ordered (beam, head in group, token)
    qg = q.reshape(r, kvh, grp * t, dk) * dk ** -0.5  # (R, kvh, grp*T, dk) scaled: head j reads key head j // grp

    def by_user(x: torch.Tensor) -> torch.Tensor:  # (R, kvh, grp*T, n) <-> (B, kvh, rows, n)
        return x.reshape(b, g, kvh, grp * t, -1).transpose(1, 2).reshape(b, kvh, rows, -1)

    def by_row(x: torch.Tensor) -> torch.Tensor:
        return x.reshape(b, kvh, g, grp * t, -1).transpose(1, 2).reshape(r, kvh, grp * t, -1)

    ok_p = kv.prefix_allowed[:, None, None, :]  # (B, 1, 1, S)
    any_ok = ok_p.any(-1, keepdim=True) | kv.see_generated  # (B, 1, 1, 1): a generated token sees itself
    causal = torch.arange(u, device=q.device)[None, :] <= (u - t + torch.arange(t, device=q.device))[:, None]
    ok_s = (causal & kv.see_generated).repeat(g * grp, 1)[None, None]  # (1, 1, rows, U)
    sp = (by_user(qg) @ kv.prefix_k.transpose(-1, -2)).add_(mask_bias(ok_p, any_ok, released, q.dtype))
    ss = by_user(qg @ kv.k.transpose(-1, -2)).add_(mask_bias(ok_s, any_ok, released, q.dtype))
    top = torch.maximum(sp.amax(-1, keepdim=True), ss.amax(-1, keepdim=True))  # (B, kvh, rows, 1)
    ep, es = sp.sub_(top).exp_(), ss.sub_(top).exp_()  # (B, kvh, rows, S), (B, kvh, rows, U), in place
    z = ep.sum(-1, keepdim=True) + es.sum(-1, keepdim=True)  # (B, kvh, rows, 1) softmax denominator
    y = by_row((ep @ kv.prefix_v) / z) + by_row(es / z) @ kv.v  # (R, kvh, grp*T, dk)
    if not released:
        y = y * any_ok.to(y.dtype).repeat_interleave(g, 0)  # (R, 1, 1, 1): rows with no key give 0
    return y.reshape(r, h, t, dk)


def _one(past: tuple[Any, ...]) -> Any:
    """A layer's cache slice for one attention: ``(k, v)``, or the ``SplitKV`` itself."""
    return past[0] if len(past) == 1 and isinstance(past[0], SplitKV) else past


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

    def project(self, x: torch.Tensor, beh: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x (B, T, d), beh (B, T) β_att -> q (B, h, T, dk), k and v (B, kvh, T, dk) of these T tokens."""
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
        return q, k, v.transpose(1, 2)

    def forward(self, x: torch.Tensor, beh: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                allowed: torch.Tensor | None, past: tuple[torch.Tensor, torch.Tensor] | SplitKV | None = None,
                need_weights: bool = False
                ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...] | tuple[SplitKV], torch.Tensor | None]:
        """x (B, T, d), beh (B, T) β_att, allowed (B, T, S) with S = cached + T keys.

        Returns the output (B, T, d), the keys/values of all S positions (for the cache) and the weights. With
        ``past`` a :class:`SplitKV` (shared-prefix decoding, ``allowed`` unused) the cache is that ``SplitKV``
        with this call's keys appended to its generated part, as a 1-tuple.
        """
        b, t, _ = x.shape
        q, k, v = self.project(x, beh, cos, sin)
        w = None
        if isinstance(past, SplitKV):
            cache: tuple[Any, ...] = (past.extend(k, v),)
            y = split_attention(q, cache[0], self.released)
        else:
            if past is not None:
                k = torch.cat([past[0], k], dim=2)  # (B, kvh, S, dk)
                v = torch.cat([past[1], v], dim=2)
            cache = (k, v)
            assert allowed is not None
            y, w = masked_attention(q, k, v, allowed, self.released, self.dropout if self.training else 0.0,
                                    need_weights)
        y = self.o(y.transpose(1, 2).reshape(b, t, self.h * self.dk))  # (B, T, d)
        if self.cross:
            y = y * F.silu(self.gate(x))
        return y, cache, w


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

    def forward(self, x: torch.Tensor, li: LayerInputs, past: tuple[Any, ...] | None = None,
                need_weights: bool = False) -> tuple[torch.Tensor, tuple[Any, ...], dict[str, Any]]:
        """``past``: the cached ``(k, v[, k_cross, v_cross])``, or ``(SplitKV[, SplitKV])`` in shared-prefix
        decoding; the returned cache has the same form, with this call's tokens appended."""
        weights: dict[str, Any] = {}
        n = 1 if past is not None and isinstance(past[0], SplitKV) else 2  # entries per attention
        a, kv_self, weights["self"] = self.self_attn(self.norm1(x), li.beh_att, li.cos, li.sin, li.self_allowed,
                                                     None if past is None else _one(past[:n]), need_weights)
        x = x + self.drop(a)
        cache = kv_self
        if self.cross_attn is not None:
            assert self.norm_cross is not None
            c, kv_cross, weights["cross"] = self.cross_attn(self.norm_cross(x), li.beh_att, li.cos, li.sin,
                                                            li.cross_allowed, None if past is None else _one(past[n:]),
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
