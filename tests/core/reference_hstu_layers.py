"""The HSTU layers as they were before the one-block refactor, kept only as a test oracle.

Frozen, verbatim copies of ``HSTULayer`` (models/hstu.py), ``HSTURankerLayer`` (models/hstu_ranker.py),
``pgsa_layer`` (models/hpgr.py), ``GroupLayerNorm`` and ``MTGRLayer`` (models/mtgr.py), with the two
primitives they were built on that the refactor touched (``hstu_pointwise_attention``,
``RelativeBucketedTimeAndPositionBias``). Nothing in ``src/`` may import this module; the tests compare
``genrec.nn.hstu_block.HSTUBlock`` against it bit for bit. Do not edit: a change here weakens the oracle.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from genrec.models.hstu_ranker import target_aware_mask
from genrec.models.mtgr import NUM_GROUPS
from genrec.nn.position import log_time_bucket
from genrec.nn.sparse import pgsa_attention


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


class RelativeBucketedTimeAndPositionBias(nn.Module):
    """rab[b, i, j] = w_pos[(N-1) + j - i] + w_ts[bucket(qt[b, i] - t[b, j])]."""

    def __init__(self, max_len: int, num_time_buckets: int = 128) -> None:
        super().__init__()
        self.max_len = max_len
        self.num_time_buckets = num_time_buckets
        self.pos_w = nn.Parameter(torch.empty(2 * max_len - 1).normal_(0, 0.02))
        self.ts_w = nn.Parameter(torch.empty(num_time_buckets + 1).normal_(0, 0.02))

    def forward(self, timestamps: torch.Tensor, query_times: torch.Tensor) -> torch.Tensor:
        """timestamps, query_times: (B, L) -> (B, L, L) bias (query i, key j)."""
        L = timestamps.shape[1]
        if L > self.max_len:
            raise ValueError(f"sequence length {L} exceeds the bias table's max_len {self.max_len}")
        ar = torch.arange(L, device=timestamps.device)
        pos_idx = (self.max_len - 1) + ar[None, :] - ar[:, None]  # (L, L)
        pos = self.pos_w[pos_idx]  # (L, L)
        delta = query_times[:, :, None] - timestamps[:, None, :]  # (B, L, L)
        ts = self.ts_w[log_time_bucket(delta, self.num_time_buckets)]  # (B, L, L)
        return ts + pos[None]


class HSTULayer(nn.Module):
    """One Hierarchical Sequential Transduction Unit (research-code variant, no FFN)."""

    def __init__(self, d: int, heads: int, dqk: int, dv: int, dropout: float, max_len: int,
                 use_time_bias: bool = True, use_pos_bias: bool = True) -> None:
        super().__init__()
        self.h, self.dqk, self.dv = heads, dqk, dv
        self.uvqk = nn.Parameter(torch.empty(d, 2 * heads * dv + 2 * heads * dqk).normal_(0, 0.02))
        self.out = nn.Linear(heads * dv, d)
        nn.init.xavier_uniform_(self.out.weight)
        nn.init.zeros_(self.out.bias)
        self.dropout = nn.Dropout(dropout)
        self.rab = RelativeBucketedTimeAndPositionBias(max_len) if (use_time_bias or use_pos_bias) else None
        self.use_time_bias, self.use_pos_bias = use_time_bias, use_pos_bias
        self.eps = 1e-6

    def forward(self, x: torch.Tensor, mask: torch.Tensor, timestamps: torch.Tensor,
                query_times: torch.Tensor, norm_len: int, attn_mask_override: torch.Tensor | None = None
                ) -> torch.Tensor:
        B, L, _ = x.shape
        h, dqk, dv = self.h, self.dqk, self.dv
        xn = F.layer_norm(x, (x.shape[-1],), eps=self.eps)
        uvqk = F.silu(xn @ self.uvqk)
        u, v, q, k = torch.split(uvqk, [h * dv, h * dv, h * dqk, h * dqk], dim=-1)
        q = q.view(B, L, h, dqk).transpose(1, 2)
        k = k.view(B, L, h, dqk).transpose(1, 2)
        v = v.view(B, L, h, dv).transpose(1, 2)
        bias = None
        if self.rab is not None:
            if self.use_time_bias and self.use_pos_bias:
                bias = self.rab(timestamps, query_times)  # (B, L, L)
            else:
                bias = self._partial_bias(timestamps, query_times)
        o = hstu_pointwise_attention(q, k, v, bias, mask if attn_mask_override is None else attn_mask_override,
                                     norm_len)  # (B, L, h*dv)
        o = F.layer_norm(o, (o.shape[-1],), eps=self.eps)
        return self.out(self.dropout(u * o)) + x

    def _partial_bias(self, timestamps: torch.Tensor, query_times: torch.Tensor) -> torch.Tensor:
        """Only the position or only the time part of rab (ablations)."""
        L = timestamps.shape[1]
        rab = self.rab
        assert rab is not None
        out = torch.zeros(timestamps.shape[0], L, L, device=timestamps.device, dtype=rab.pos_w.dtype)
        if self.use_pos_bias:
            ar = torch.arange(L, device=timestamps.device)
            out = out + rab.pos_w[(rab.max_len - 1) + ar[None, :] - ar[:, None]][None]
        if self.use_time_bias:
            delta = query_times[:, :, None] - timestamps[:, None, :]
            out = out + rab.ts_w[log_time_bucket(delta, rab.num_time_buckets)]
        return out


class HSTURankerLayer(nn.Module):
    """One production STU layer (affine norms, biased f1, concat_ux output)."""

    def __init__(self, d: int, heads: int, dqk: int, dv: int, linear_dropout: float, attn_dropout: float,
                 group_norm: bool) -> None:
        super().__init__()
        self.h, self.dqk, self.dv = heads, dqk, dv
        self.in_norm = nn.LayerNorm(d, eps=1e-6)
        self.uvqk = nn.Linear(d, 2 * heads * dv + 2 * heads * dqk)
        self.group_norm = group_norm
        self.o_norm = nn.LayerNorm(dv if group_norm else heads * dv, eps=1e-6)
        self.out = nn.Linear(3 * heads * dv, d)
        nn.init.xavier_uniform_(self.out.weight)
        nn.init.zeros_(self.out.bias)
        self.dropout = nn.Dropout(linear_dropout)
        self.attn_dropout = nn.Dropout(attn_dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor, norm_len: int) -> torch.Tensor:
        """x: (B, L, D); mask: (B, L, L) bool or float weights (multiplicative). Returns (B, L, D)."""
        B, L, _ = x.shape
        h, dqk, dv = self.h, self.dqk, self.dv
        u, v, q, k = torch.split(self.uvqk(self.in_norm(x)), [h * dv, h * dv, h * dqk, h * dqk], dim=-1)
        u = F.silu(u)  # (B, L, h*dv)
        q = q.view(B, L, h, dqk).transpose(1, 2)  # (B, h, L, dqk)
        k = k.view(B, L, h, dqk).transpose(1, 2)
        v = v.view(B, L, h, dv).transpose(1, 2)  # (B, h, L, dv)
        s = torch.einsum("bhid,bhjd->bhij", q, k) / math.sqrt(dqk)  # (B, h, L, L)
        a = self.attn_dropout(F.silu(s) / norm_len) * mask[:, None].to(s.dtype)
        o = torch.einsum("bhij,bhjd->bhid", a, v).transpose(1, 2)  # (B, L, h, dv)
        on = self.o_norm(o) if self.group_norm else self.o_norm(o.reshape(B, L, h * dv))
        o, on = o.reshape(B, L, h * dv), on.reshape(B, L, h * dv)
        return x + self.out(self.dropout(torch.cat([u, o, u * on], dim=-1)))


def pgsa_layer(layer: HSTURankerLayer, x: torch.Tensor, weights: torch.Tensor, lengths: torch.Tensor,
               norm_len: int, rows: str = "all", impl: str = "gather") -> torch.Tensor:
    """One HSTU ranker layer (its own weights) with PGSA attention instead of the dense masked one.

    x: (B, N+1, D), history in slots 0..N-1 and one candidate in slot N; weights: (B, N) PGSA column
    weights. The projections and the ``[u, o, u*Norm(o)]`` output are ``HSTURankerLayer.forward``'s;
    only the attention changes, so with every column kept the two agree. Returns (B, N+1, D).
    """
    B, L, _ = x.shape
    N = L - 1
    h, dqk, dv = layer.h, layer.dqk, layer.dv
    u, v, q, k = torch.split(layer.uvqk(layer.in_norm(x)), [h * dv, h * dv, h * dqk, h * dqk], dim=-1)
    u = F.silu(u)  # (B, L, h*dv)
    q = q.view(B, L, h, dqk).transpose(1, 2) / math.sqrt(dqk)  # (B, h, L, dqk); the ranker's 1/sqrt(d_qk)
    k = k.view(B, L, h, dqk).transpose(1, 2)
    v = v.view(B, L, h, dv).transpose(1, 2)  # (B, h, L, dv)
    if rows == "all":
        o = pgsa_attention(q, k, v, weights, lengths, norm_len, rows="all", impl=impl)  # (B, L, h*dv)
    else:  # plain causal history (cacheable), PGSA on the candidate row only
        hist_mask = target_aware_mask(lengths, N, 1)[:, :N, :N]  # (B, N, N)
        o_hist = hstu_pointwise_attention(q[:, :, :N], k[:, :, :N], v[:, :, :N], None, hist_mask, norm_len)
        o_cand = pgsa_attention(q, k, v, weights, lengths, norm_len, rows="candidate", impl=impl)  # (B, 1, h*dv)
        o = torch.cat([o_hist, o_cand], dim=1)  # (B, L, h*dv)
    on = layer.o_norm(o.view(B, L, h, dv)) if layer.group_norm else layer.o_norm(o)
    on = on.reshape(B, L, h * dv)
    return x + layer.out(layer.dropout(torch.cat([u, o, u * on], dim=-1)))


class GroupLayerNorm(nn.Module):
    """LayerNorm whose affine (gamma, beta) is selected per token by its group; statistics are per token.

    With ``enabled=False`` every group shares one (gamma, beta): a plain LayerNorm (ablation)."""

    def __init__(self, groups: int, dim: int, enabled: bool = True, eps: float = 1e-6) -> None:
        super().__init__()
        self.enabled, self.eps, self.dim = enabled, eps, dim
        n = groups if enabled else 1
        self.weight = nn.Parameter(torch.ones(n, dim))
        self.bias = nn.Parameter(torch.zeros(n, dim))

    def forward(self, x: torch.Tensor, groups: torch.Tensor) -> torch.Tensor:
        """x (B, T, dim), groups (B, T) int64."""
        xn = F.layer_norm(x, (self.dim,), eps=self.eps)
        g = groups if self.enabled else torch.zeros_like(groups)
        return xn * F.embedding(g, self.weight) + F.embedding(g, self.bias)


class MTGRLayer(nn.Module):
    """GLN -> (u, v, q, k) -> pointwise attention under the dynamic mask -> GLN(V~ * u) -> MLP -> residual."""

    def __init__(self, d: int, heads: int, dqk: int, dv: int, ffn_hidden: int, linear_dropout: float,
                 group_norm: bool) -> None:
        super().__init__()
        self.h, self.dqk, self.dv = heads, dqk, dv
        self.in_norm = GroupLayerNorm(NUM_GROUPS, d, group_norm)
        self.uvqk = nn.Linear(d, 2 * heads * dv + 2 * heads * dqk)
        self.o_norm = GroupLayerNorm(NUM_GROUPS, heads * dv, group_norm)
        self.ffn = nn.Sequential(nn.Linear(heads * dv, ffn_hidden), nn.SiLU(), nn.Dropout(linear_dropout),
                                 nn.Linear(ffn_hidden, d))
        nn.init.xavier_uniform_(self.ffn[-1].weight)
        nn.init.zeros_(self.ffn[-1].bias)

    def forward(self, x: torch.Tensor, groups: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """x (B, T, D); groups (B, T); weights (B, T, T) float = mask / normaliser. Returns (B, T, D)."""
        B, T, _ = x.shape
        h, dqk, dv = self.h, self.dqk, self.dv
        u, v, q, k = torch.split(self.uvqk(self.in_norm(x, groups)), [h * dv, h * dv, h * dqk, h * dqk], dim=-1)
        q = q.view(B, T, h, dqk).transpose(1, 2) / math.sqrt(dqk)  # (B, h, T, dqk)
        k = k.view(B, T, h, dqk).transpose(1, 2)
        v = v.view(B, T, h, dv).transpose(1, 2)
        o = hstu_pointwise_attention(q, k, v, None, weights, 1)  # (B, T, h*dv); weights carry 1/T_b
        return x + self.ffn(self.o_norm(o * F.silu(u), groups))
