"""Preference-Guided Sparse Attention (PGSA), the sparse attention of HPGR (arXiv 2603.00980).

HPGR scores each history item against the candidate with a frozen embedding table, keeps the Top-K
as anchors, widens every anchor into a Gaussian window over sequence positions and lets attention
read only those columns. HPGR's method section is not public; what is built here is the
reconstruction of spec_hpgr_hstu_mtgr.md §5.3(e), written as one public op (``pgsa_attention``) with
two backends behind one signature, as the HSTU attention op does:

- ``impl="dense"``: the definition. Full ``(L, L)`` HSTU pointwise attention times the PGSA mask.
- ``impl="gather"``: gathers the ``K'`` kept columns (``K' <= K * (6 sigma + 1) + 1``) and attends to
  those only, so time and memory grow with ``L * K'`` instead of ``L * L``.

:class:`PGSAAttention` wraps the op as an attention function of ``genrec.nn.hstu_block.HSTUBlock``.

Layout shared by every function here: the history is left-aligned in slots ``0..N-1`` (``n_b`` real
events, then padding) and the candidate sits in slot ``N`` (so ``L = N + 1``). The mask is

    M[i, j] = w_j * [j <= i]   for history rows i < n_b   (rows="all", the default)
    M[i, j] = [j <= i]         for history rows i < n_b   (rows="candidate", the cheap variant)
    M[N, j] = w_j for j < N,   M[N, N] = 1                (the candidate always sees itself)
    M[i, :] = 0                for padding rows n_b <= i < N

where ``w_j`` are the column weights of :func:`pgsa_weights` (0 on padding and unselected columns).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from genrec.nn.attention import causal_valid_mask, hstu_pointwise_attention
from genrec.nn.position import RelativeBucketedTimeAndPositionBias, log_time_bucket

#: ``bias_fn(rows (B, R), cols (B, C)) -> (B, R, C)`` additive score bias for arbitrary index pairs,
#: so the gathered path never materialises an ``(L, L)`` bias.
BiasFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

IMPLS = ("gather", "dense")
ROWS = ("all", "candidate")
WINDOWS = ("position", "score")


@dataclass
class PGSAConfig:
    """PGSA hyper-parameters; defaults are the spec's choices (§5.4 rows 9-12)."""

    top_k: int = 32  # anchors per (user, candidate); all history is kept when n <= top_k
    sigma: float = 2.0  # Gaussian window width in positions; 0 = anchors only
    eps: float = 0.01  # weights below eps are dropped (hard sparsity, about +-3 sigma)
    window: str = "position"  # "position" (default) or "score" (relevance-Gaussian ablation)
    sigma_r: float = 0.25  # width of the score Gaussian (relevances of unit vectors lie in [-1, 1])
    rows: str = "all"  # "all" rows masked (default) or "candidate" row only (cheap, cacheable variant)
    impl: str = "gather"  # "gather" (efficient) or "dense" (reference)


def pgsa_relevance(
    table: torch.Tensor, candidates: torch.Tensor, history: torch.Tensor, lengths: torch.Tensor,
    normalize: bool = True, history_vectors: torch.Tensor | None = None,
) -> torch.Tensor:
    """r_j = <E[c], E[i_j]> from a frozen table, -inf on padding.

    The table is detached: selection must not move with the fine-tuned embeddings (spec §5.4 row 7).
    table: (V, D); candidates: (B,); history: (B, N) item ids; lengths: (B,). Returns (B, N).
    ``history_vectors`` (B, N, D) replaces E[i_j] (HPGR's SEM event vectors, spec §5.4 #8).
    """
    table = table.detach()
    h = table[history] if history_vectors is None else history_vectors.detach()  # (B, N, D)
    if normalize:
        table, h = F.normalize(table, dim=-1, eps=1e-6), F.normalize(h, dim=-1, eps=1e-6)
    c = table[candidates]  # (B, D)
    r = torch.einsum("bd,bnd->bn", c, h)  # (B, N)
    valid = torch.arange(history.shape[1], device=history.device)[None, :] < lengths[:, None]
    return r.masked_fill(~valid, float("-inf"))


def _nearest_anchor_distance(anchor: torch.Tensor) -> torch.Tensor:
    """(B, N) bool anchors -> (B, N) distance to the nearest anchor in O(N) (inf where there is none).

    Equivalent to ``min_k |j - k|`` over anchors, computed with a forward cummax and a backward cummin
    so no (N x K) distance matrix is formed.
    """
    B, N = anchor.shape
    pos = torch.arange(N, device=anchor.device, dtype=torch.float32).expand(B, N)
    big = float(4 * N + 4)
    last = torch.where(anchor, pos, torch.full_like(pos, -big)).cummax(dim=1).values  # (B, N)
    nxt = torch.where(anchor, pos, torch.full_like(pos, big)).flip(1).cummin(dim=1).values.flip(1)
    d = torch.minimum(pos - last, nxt - pos)
    return torch.where(d >= 2 * N + 2, torch.full_like(d, float("inf")), d)


def pgsa_weights(
    relevance: torch.Tensor, lengths: torch.Tensor, top_k: int = 32, sigma: float = 2.0, eps: float = 0.01,
    window: str = "position", sigma_r: float = 0.25,
) -> torch.Tensor:
    """Per-sample column weights w_j in [0, 1] (0 = column dropped) from relevances.

    window="position": w_j = max_{k in S} exp(-(j-k)^2 / (2 sigma^2)), zeroed below ``eps``
    (sigma=0: w_j = 1[j in S]). window="score": w_j = exp(-(r_max - r_j)^2 / (2 sigma_r^2)) for j in S,
    0 elsewhere (no threshold: the kept set is exactly S). S = Top-K of r over real positions, all of
    them when n <= K. Weights never reach padding. relevance: (B, N); lengths: (B,). Returns (B, N).
    """
    if window not in WINDOWS:
        raise ValueError(f"pgsa: window must be one of {WINDOWS}, got {window!r}")
    if top_k < 1 or sigma < 0 or not (0 < eps < 1):
        raise ValueError(f"pgsa: need top_k >= 1, sigma >= 0, 0 < eps < 1 (got {top_k}, {sigma}, {eps})")
    B, N = relevance.shape
    valid = torch.arange(N, device=relevance.device)[None, :] < lengths[:, None]  # (B, N)
    r = relevance.detach().float().masked_fill(~valid, float("-inf"))
    kk = min(top_k, N)
    anchor = torch.zeros(B, N, dtype=torch.bool, device=r.device)
    if kk > 0:
        idx = r.topk(kk, dim=1).indices  # (B, kk)
        anchor.scatter_(1, idx, True)
    anchor &= valid  # padding is never an anchor even when n < K
    if window == "score":
        r_max = r.max(dim=1, keepdim=True).values.clamp(min=-1e30)  # (B, 1); -inf only for n = 0
        w = torch.exp(-((r_max - r.masked_fill(~anchor, 0.0)) ** 2) / (2 * sigma_r**2))
        return torch.where(anchor, w, torch.zeros_like(w))
    if sigma == 0:
        return anchor.float()
    d = _nearest_anchor_distance(anchor)  # (B, N)
    w = torch.exp(-(d**2) / (2 * sigma**2))
    w = torch.where((w >= eps) & valid, w, torch.zeros_like(w))
    return w


def max_kept_columns(top_k: int, sigma: float, eps: float = 0.01) -> int:
    """Upper bound on kept history columns: each anchor keeps at most 2*floor(sigma*sqrt(2 ln(1/eps)))+1."""
    half = int(math.floor(sigma * math.sqrt(2 * math.log(1 / eps)))) if sigma > 0 else 0
    return top_k * (2 * half + 1)


def pgsa_mask(weights: torch.Tensor, lengths: torch.Tensor, rows: str = "all") -> torch.Tensor:
    """The dense (B, N+1, N+1) float mask of the module docstring (the definition both paths follow)."""
    if rows not in ROWS:
        raise ValueError(f"pgsa: rows must be one of {ROWS}, got {rows!r}")
    B, N = weights.shape
    L = N + 1
    dev = weights.device
    ar = torch.arange(L, device=dev)
    causal = (ar[None, :] <= ar[:, None]).to(weights.dtype)  # (L, L)
    row_ok = (ar[None, :] < lengths[:, None]) | (ar[None, :] == N)  # (B, L) real history rows + candidate
    colw = torch.cat([weights, torch.ones(B, 1, device=dev, dtype=weights.dtype)], dim=1)  # (B, L)
    m = causal[None] * colw[:, None, :]  # (B, L, L)
    if rows == "candidate":
        col_valid = (ar[None, :] < lengths[:, None]).to(weights.dtype)  # (B, L)
        hist = causal[None] * col_valid[:, None, :]  # plain causal over real history
        m = torch.cat([hist[:, :N], m[:, N:]], dim=1)
    return m * row_ok[:, :, None].to(m.dtype)


def kept_columns(weights: torch.Tensor, lengths: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices of kept columns, candidate slot N appended: ((B, K') int64, (B, K') float weights).

    Slots past a sample's own count point at column 0 with weight 0, so they contribute nothing.
    K' = (most kept history columns in the batch) + 1.
    """
    B, N = weights.shape
    keep = weights > 0  # (B, N)
    count = keep.sum(dim=1)  # (B,)
    kmax = int(count.max().item()) if B > 0 else 0
    slot = torch.where(keep, keep.cumsum(dim=1) - 1, torch.full_like(count[:, None], kmax).expand(B, N))
    idx = torch.zeros(B, kmax + 1, dtype=torch.int64, device=weights.device)
    src = torch.arange(N, device=weights.device).expand(B, N)
    idx.scatter_(1, slot, src)  # slot kmax is a dump for dropped columns
    w = torch.zeros(B, kmax + 1, dtype=weights.dtype, device=weights.device)
    w.scatter_(1, slot, weights)
    idx, w = idx[:, :kmax], w[:, :kmax]
    idx = torch.where(w > 0, idx, torch.zeros_like(idx))
    cand = torch.full((B, 1), N, dtype=torch.int64, device=weights.device)
    return torch.cat([idx, cand], dim=1), torch.cat([w, torch.ones(B, 1, dtype=w.dtype, device=w.device)], dim=1)


def _gather_heads(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """x: (B, h, L, d), idx: (B, C) -> (B, h, C, d)."""
    B, h, _, d = x.shape
    return x.gather(2, idx[:, None, :, None].expand(B, h, idx.shape[1], d))


def _bias_at(bias: torch.Tensor | BiasFn | None, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor | None:
    """(B, R, C) bias for row indices (B, R) and column indices (B, C)."""
    if bias is None:
        return None
    if callable(bias) and not isinstance(bias, torch.Tensor):
        return bias(rows, cols)
    b = bias.gather(1, rows[:, :, None].expand(-1, -1, bias.shape[2]))  # (B, R, L)
    return b.gather(2, cols[:, None, :].expand(-1, rows.shape[1], -1))  # (B, R, C)


def pgsa_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, weights: torch.Tensor, lengths: torch.Tensor,
    norm_len: int, bias: torch.Tensor | BiasFn | None = None, rows: str = "all", impl: str = "gather",
) -> torch.Tensor:
    """HSTU pointwise attention ``silu(q k^T + bias) / norm_len`` under the PGSA mask.

    q, k: (B, h, N+1, dqk); v: (B, h, N+1, dv); weights: (B, N) from :func:`pgsa_weights`;
    lengths: (B,); bias: (B, N+1, N+1) tensor or a :data:`BiasFn` (preferred for the gathered path).
    Returns (B, N+1, h*dv) for rows="all" and (B, 1, h*dv) (the candidate row) for rows="candidate";
    with rows="candidate" only ``q[:, :, N]`` is read and the history rows are the caller's ordinary
    causal pass (cacheable across candidates).
    """
    if impl not in IMPLS:
        raise ValueError(f"pgsa: impl must be one of {IMPLS}, got {impl!r}")
    if rows not in ROWS:
        raise ValueError(f"pgsa: rows must be one of {ROWS}, got {rows!r}")
    B, h, L, dqk = q.shape
    N = L - 1
    if k.shape != q.shape or v.shape[:3] != q.shape[:3] or weights.shape != (B, N) or lengths.shape != (B,):
        raise ValueError(
            f"pgsa: shapes q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}, weights "
            f"{tuple(weights.shape)}, lengths {tuple(lengths.shape)} do not fit (B, h, N+1, d) / (B, N)"
        )
    dev = q.device
    if impl == "dense":
        ar = torch.arange(L, device=dev).expand(B, L)
        dense_bias = _bias_at(bias, ar, ar) if bias is not None and not isinstance(bias, torch.Tensor) else bias
        m = pgsa_mask(weights.to(q.dtype), lengths, rows)  # (B, L, L)
        o = hstu_pointwise_attention(q, k, v, dense_bias, m, norm_len)  # (B, L, h*dv)
        return o if rows == "all" else o[:, N:]
    idx, colw = kept_columns(weights.to(q.dtype), lengths)  # (B, K'), (B, K')
    kg, vg = _gather_heads(k, idx), _gather_heads(v, idx)  # (B, h, K', d)
    if rows == "candidate":
        qr = q[:, :, N:]  # (B, h, 1, dqk)
        row_idx = torch.full((B, 1), N, dtype=torch.int64, device=dev)
        m = colw[:, None, :]  # (B, 1, K'): every kept column is <= N
        o = _gathered_rows(qr, kg, vg, row_idx, idx, m, bias, norm_len)
    else:
        # Rows in blocks so each block's (B, h, R, K') scores and (B, R, K') bias temporaries stay
        # cache-sized: time then grows like L * K' instead of jumping once they spill (N >= 4096).
        # Every row is computed exactly as in one block; small inputs are a single block.
        step = max(64, _BLOCK_ELEMS // max(1, B * h * idx.shape[1]))
        outs = []
        for r0 in range(0, L, step):
            row_idx = torch.arange(r0, min(L, r0 + step), device=dev).expand(B, -1)  # (B, R)
            row_ok = (row_idx < lengths[:, None]) | (row_idx == N)  # (B, R)
            m = (idx[:, None, :] <= row_idx[:, :, None]) & row_ok[:, :, None]  # (B, R, K') causal
            m = m.to(q.dtype) * colw[:, None, :]
            outs.append(_gathered_rows(q[:, :, r0:r0 + step], kg, vg, row_idx, idx, m, bias, norm_len))
        o = outs[0] if len(outs) == 1 else torch.cat(outs, dim=2)
    return o.transpose(1, 2).reshape(B, o.shape[2], h * v.shape[-1])


_BLOCK_ELEMS = 1 << 20  # score elements per row block of the gathered path (4 MB in float32)


def _gathered_rows(qr: torch.Tensor, kg: torch.Tensor, vg: torch.Tensor, row_idx: torch.Tensor, idx: torch.Tensor,
                   m: torch.Tensor, bias: torch.Tensor | BiasFn | None, norm_len: int) -> torch.Tensor:
    """Attention of rows ``row_idx`` (B, R) over gathered columns ``idx`` (B, K'): (B, h, R, dv)."""
    s = torch.einsum("bhid,bhjd->bhij", qr, kg)  # (B, h, R, K')
    b = _bias_at(bias, row_idx, idx)
    if b is not None:
        s = s + b[:, None]
    a = F.silu(s) / norm_len * m[:, None]
    return torch.einsum("bhij,bhjd->bhid", a, vg)  # (B, h, R, dv)


def rab_bias_fn(
    rab: RelativeBucketedTimeAndPositionBias, timestamps: torch.Tensor, query_times: torch.Tensor
) -> BiasFn:
    """HSTU's rab^{p,t} as a :data:`BiasFn`: w_pos[(max_len-1) + j - i] + w_ts[bucket(qt_i - t_j)].

    timestamps, query_times: (B, L). Evaluating it at all pairs equals ``rab(timestamps, query_times)``.
    """

    def fn(rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
        pos = rab.pos_w[(rab.max_len - 1) + cols[:, None, :] - rows[:, :, None]]  # (B, R, C)
        delta = query_times.gather(1, rows)[:, :, None] - timestamps.gather(1, cols)[:, None, :]
        return pos + rab.ts_w[log_time_bucket(delta, rab.num_time_buckets)]

    return fn


@dataclass(frozen=True, eq=False)
class PGSAAttention:
    """PGSA as an HSTU block's attention function (``genrec.nn.hstu_block.AttentionFn``), HPGR's layers.

    Layout of this module: history in slots 0..N-1, the candidate in slot N. weights (B, N) from
    :func:`pgsa_weights`; lengths (B,); rows / impl as in :func:`pgsa_attention`. The temperature divides
    the queries. rows="candidate": the history rows are the plain causal pass over the real history
    (padding rows read nothing) and only the candidate row is sparse. There is no score dropout (HPGR
    refuses ``attn_dropout > 0`` with PGSA), so ``dropout`` is not used.
    """

    weights: torch.Tensor
    lengths: torch.Tensor
    norm_len: int
    rows: str = "all"
    impl: str = "gather"

    def __post_init__(self) -> None:
        if self.rows not in ROWS or self.impl not in IMPLS:
            raise ValueError(f"pgsa: rows must be one of {ROWS} and impl one of {IMPLS}, got {self.rows!r}, "
                             f"{self.impl!r}")

    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, temperature: float | None = None,
                 bias: torch.Tensor | None = None, dropout: Callable[[torch.Tensor], torch.Tensor] | None = None
                 ) -> torch.Tensor:
        """q, k: (B, N+1, h, dqk); v: (B, N+1, h, dv). Returns (B, N+1, h*dv)."""
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # (B, h, N+1, d)
        if temperature is not None:
            q = q / temperature
        w, lengths, norm_len = self.weights, self.lengths, self.norm_len
        if self.rows == "all":
            return pgsa_attention(q, k, v, w, lengths, norm_len, bias, rows="all", impl=self.impl)
        N = q.shape[2] - 1
        real = torch.arange(N, device=q.device)[None, :] < lengths[:, None]  # (B, N)
        hist_mask = causal_valid_mask(lengths, N) & real[:, :, None]  # (B, N, N) real rows only
        hist_bias = None if bias is None else bias[:, :N, :N]
        o_hist = hstu_pointwise_attention(q[:, :, :N], k[:, :, :N], v[:, :, :N], hist_bias, hist_mask, norm_len)
        o_cand = pgsa_attention(q, k, v, w, lengths, norm_len, bias, rows="candidate", impl=self.impl)  # (B, 1, .)
        return torch.cat([o_hist, o_cand], dim=1)


def pgsa(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, table: torch.Tensor, candidates: torch.Tensor,
    history: torch.Tensor, lengths: torch.Tensor, norm_len: int, cfg: PGSAConfig | None = None,
    bias: torch.Tensor | BiasFn | None = None,
) -> torch.Tensor:
    """Relevance -> weights -> attention in one call (shapes as in :func:`pgsa_attention`)."""
    cfg = cfg or PGSAConfig()
    r = pgsa_relevance(table, candidates, history, lengths)  # (B, N)
    w = pgsa_weights(r, lengths, cfg.top_k, cfg.sigma, cfg.eps, cfg.window, cfg.sigma_r)  # (B, N)
    return pgsa_attention(q, k, v, w, lengths, norm_len, bias, rows=cfg.rows, impl=cfg.impl)
