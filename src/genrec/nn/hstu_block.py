"""One HSTU block for the whole HSTU family (``hstu``, ``hstu_ranker``, ``hpgr``, ``mtgr``).

Zhai et al., "Actions Speak Louder than Words" (ICML 2024, arXiv 2402.17152), and MTGR (arXiv
2505.18654) §4.2. Every variant is the same four steps; they differ only in the parts chosen at
construction (see :class:`HSTUBlock`) and in the attention function passed to ``forward``:

    X~ = Norm_in(X);  u, v, q, k = split(X~ W [+ b]);  SiLU on u (or on all four)
    O  = attention(q, k, v)                    # dense masked / PGSA gathered / jagged (packed tokens)
    Y  = X + out(u, O)                         # u*Norm(O) | [u, O, u*Norm(O)] | FFN(Norm(u*O))

Attention functions (the seam a new kernel plugs into) follow :class:`AttentionFn`: they get the
per-head projections in token layout and return token-layout outputs, with everything else they need
(mask, ``norm_len``, lengths, PGSA weights, the jagged packing) bound when they are built. The dense
one is :class:`DenseAttention` here; PGSA's is ``genrec.nn.sparse.PGSAAttention``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import nn

from genrec.nn.attention import causal_valid_mask, hstu_pointwise_attention
from genrec.nn.jagged import JaggedAttention
from genrec.nn.position import RelativeBucketedTimeAndPositionBias

NORMS = ("plain", "layer", "group")
OUTPUTS = ("gate", "concat_ux", "norm_after_gate")
SCALE_AT = ("scores", "query")

ScoreDropout = Callable[[torch.Tensor], torch.Tensor]


class AttentionFn(Protocol):
    """``attention(q, k, v, *, temperature, bias, dropout) -> o``, what :meth:`HSTUBlock.forward` calls.

    q, k: (..., h, dqk), v: (..., h, dv): the block's projections viewed per head in token layout, i.e.
    (B, L, h, d) for a padded batch; a jagged implementation (``genrec.nn.jagged.JaggedAttention``)
    receives (T, h, d) and carries its own packing. Returns (..., h*dv) in the same layout. ``temperature``:
    divide the scores by it (None = unscaled; where the division happens is the function's own, documented
    choice). ``bias``: an additive (B, L, L) score bias shared by heads (the jagged one: one per length
    group), or None. ``dropout``: the block's score dropout
    (the identity when its p is 0 or in eval mode).
    """

    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, temperature: float | None,
                 bias: torch.Tensor | None, dropout: ScoreDropout | None) -> torch.Tensor: ...


@dataclass(frozen=True, eq=False)
class DenseAttention:
    """Pointwise attention over all (L, L) pairs under a multiplicative mask: an :class:`AttentionFn`.

    mask: (B, L, L) bool (causal/valid, the ranker's M-FALCON mask, MTGR's dynamic mask) or float
    weights (a PGSA column mask, MTGR's mask / T_b). norm_len: the N of ``silu(.) / N``. scale_at: where
    the temperature divides, ``"scores"`` (``q k^T / t``: the production ranker) or ``"query"``
    (``(q / t) k^T``: MTGR); the two round differently and each model keeps the rounding it was trained with.
    """

    mask: torch.Tensor
    norm_len: int | float
    scale_at: str = "scores"

    def __post_init__(self) -> None:
        if self.scale_at not in SCALE_AT:
            raise ValueError(f"DenseAttention: scale_at must be one of {SCALE_AT}, got {self.scale_at!r}")

    @classmethod
    def causal(cls, lengths: torch.Tensor, L: int, norm_len: int | float) -> DenseAttention:
        """Causal attention over the real positions of left-aligned rows of ``lengths`` (B,)."""
        return cls(causal_valid_mask(lengths, L), norm_len)

    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, temperature: float | None = None,
                 bias: torch.Tensor | None = None, dropout: ScoreDropout | None = None) -> torch.Tensor:
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # (B, h, L, d)
        if temperature is not None and self.scale_at == "query":
            q, temperature = q / temperature, None
        return hstu_pointwise_attention(q, k, v, bias, self.mask, self.norm_len, temperature, dropout)


class PlainNorm(nn.Module):
    """LayerNorm without affine parameters (the HSTU research code); ``groups`` is ignored."""

    def __init__(self, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps

    def forward(self, x: torch.Tensor, groups: torch.Tensor | None = None) -> torch.Tensor:
        return F.layer_norm(x, (x.shape[-1],), eps=self.eps)


class AffineNorm(nn.LayerNorm):
    """``nn.LayerNorm`` (one affine for every token) called as ``norm(x, groups)``; ``groups`` is ignored."""

    def forward(self, x: torch.Tensor, groups: torch.Tensor | None = None) -> torch.Tensor:
        return super().forward(x)


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


def make_norm(kind: str, dim: int, num_groups: int = 1, eps: float = 1e-6) -> nn.Module:
    """A ``norm(x, groups)`` module of kind "plain", "layer" or "group" (``num_groups`` affines; 1 = shared)."""
    if kind == "plain":
        return PlainNorm(eps)
    if kind == "layer":
        return AffineNorm(dim, eps=eps)
    return GroupLayerNorm(num_groups, dim, enabled=num_groups > 1, eps=eps)


class HSTUBlock(nn.Module):
    """One HSTU layer; the variants are constructor options, the attention is a function of ``forward``.

    d, heads, dqk, dv: model width, heads, per-head query/key and value widths. Options (the four
    models' settings: research ``hstu`` / production ``hstu_ranker`` and ``hpgr`` / ``mtgr``):

    - ``norm``: "plain" | "layer" | "group", both norms (input, and output on O): no affine / one
      affine / one affine per token group (plain / layer / group).
    - ``num_groups``: token groups with their own affine for norm="group"; 1 = one shared (4 / MTGR's
      ``group_norm=False`` gives 1).
    - ``head_norm``: the output norm per head (over dv) instead of over h*dv (off / ``group_norm`` / off).
    - ``proj_bias``: False = a bias-free (d, W) matrix drawn N(0, 0.02), the research code's ``uvqk``;
      True = ``nn.Linear(d, W)`` (False / True / True).
    - ``silu_qkv``: SiLU on u, v, q and k, else on u only (True / False / False).
    - ``scaled``: scores divided by sqrt(dqk) (False / True / True).
    - ``output``: "gate" ``u * Norm(O)`` | "concat_ux" ``[u, O, u * Norm(O)]`` | "norm_after_gate"
      ``Norm(u * O)`` (gate / concat_ux / norm_after_gate).
    - ``ffn_hidden``: 0 = one linear ``out`` after the output; > 0 = an MLP ``ffn`` (Linear, SiLU,
      Dropout, Linear) of that hidden width (0 / 0 / ``ffn_hidden or d_model``).
    - ``dropout``: before ``out``, or inside the MLP when there is one (linear_dropout everywhere).
    - ``attn_dropout``: score dropout handed to the attention function (0 / attn_dropout / 0).
    - ``max_len``, ``time_bias``, ``position_bias``: HSTU's relative bias rab^{p,t} (``rab``) when
      either flag is on (research only).

    Parameters are created in the order in_norm, uvqk, o_norm, out|ffn, rab, which is each old
    layer's order, so a seed draws the same initial weights and the state_dict keys are the old ones.
    """

    def __init__(self, d: int, heads: int, dqk: int, dv: int, *, dropout: float = 0.0, attn_dropout: float = 0.0,
                 norm: str = "plain", num_groups: int = 1, head_norm: bool = False, proj_bias: bool = False,
                 silu_qkv: bool = True, scaled: bool = False, output: str = "gate", ffn_hidden: int = 0,
                 max_len: int = 0, time_bias: bool = False, position_bias: bool = False) -> None:
        super().__init__()
        if norm not in NORMS or output not in OUTPUTS or num_groups < 1 or (head_norm and norm == "group"):
            raise ValueError(f"HSTUBlock: need norm in {NORMS}, output in {OUTPUTS}, num_groups >= 1 and no "
                             f"head_norm with group norm (got {norm!r}, {output!r}, {num_groups}, {head_norm})")
        self.h, self.dqk, self.dv = heads, dqk, dv
        self.silu_qkv, self.output, self.head_norm = silu_qkv, output, head_norm
        self.temperature = math.sqrt(dqk) if scaled else None
        width = 2 * heads * dv + 2 * heads * dqk
        self.in_norm = make_norm(norm, d, num_groups)
        self.uvqk = nn.Linear(d, width) if proj_bias else nn.Parameter(torch.empty(d, width).normal_(0, 0.02))
        self.o_norm = make_norm(norm, dv if head_norm else heads * dv, num_groups)
        d_in = (3 if output == "concat_ux" else 1) * heads * dv
        self.out: nn.Linear | None = None
        self.ffn: nn.Sequential | None = None
        if ffn_hidden:
            self.ffn = nn.Sequential(nn.Linear(d_in, ffn_hidden), nn.SiLU(), nn.Dropout(dropout),
                                     nn.Linear(ffn_hidden, d))
            last = self.ffn[-1]
        else:
            self.out = last = nn.Linear(d_in, d)
        nn.init.xavier_uniform_(last.weight)
        nn.init.zeros_(last.bias)
        self.dropout = nn.Dropout(dropout)
        self.attn_dropout = nn.Dropout(attn_dropout)
        self.rab = (RelativeBucketedTimeAndPositionBias(max_len, use_time=time_bias, use_pos=position_bias)
                    if (time_bias or position_bias) else None)

    def forward(self, x: torch.Tensor, attention: AttentionFn, *, groups: torch.Tensor | None = None,
                timestamps: torch.Tensor | None = None, query_times: torch.Tensor | None = None) -> torch.Tensor:
        """x: (..., D) tokens ((B, L, D) padded, (T, D) packed); groups: (...) token groups for norm="group";
        timestamps, query_times: (B, L) for the relative bias. Returns (..., D)."""
        h, dqk, dv = self.h, self.dqk, self.dv
        lead = x.shape[:-1]
        xn = self.in_norm(x, groups)
        uvqk = self.uvqk(xn) if isinstance(self.uvqk, nn.Linear) else xn @ self.uvqk  # (..., W)
        if self.silu_qkv:
            uvqk = F.silu(uvqk)
        u, v, q, k = torch.split(uvqk, [h * dv, h * dv, h * dqk, h * dqk], dim=-1)
        if not self.silu_qkv:
            u = F.silu(u)
        if self.rab is None:
            bias = None
        elif isinstance(attention, JaggedAttention):  # packed tokens: one (G, Lg, Lg) bias per length group
            bias = attention.relative_bias(self.rab)
        else:
            bias = self.rab(timestamps, query_times)  # (B, L, L)
        o = attention(q.view(*lead, h, dqk), k.view(*lead, h, dqk), v.view(*lead, h, dv),
                      temperature=self.temperature, bias=bias, dropout=self.attn_dropout)  # (..., h*dv)
        if self.output == "norm_after_gate":
            z = self.o_norm(o * u, groups)
        else:
            on = (self.o_norm(o.reshape(*lead, h, dv), groups).reshape(*lead, h * dv) if self.head_norm
                  else self.o_norm(o, groups))
            z = u * on if self.output == "gate" else torch.cat([u, o, u * on], dim=-1)
        return x + (self.ffn(z) if self.ffn is not None else self.out(self.dropout(z)))


def head_widths(d_model: int, num_heads: int, dqk: int, dv: int) -> tuple[int, int]:
    """Per-head query/key and value widths of an HSTU block; 0 means ``d_model // num_heads``."""
    return dqk or d_model // num_heads, dv or d_model // num_heads
