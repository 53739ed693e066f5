"""HPGR: the stage-1 Session Enhancement Module (SEM, pre-trained with session MIM) and the stage-2 ranker.

HPGR (arXiv 2603.00980) splits a user's history into sessions and encodes it hierarchically before
the HSTU ranker of stage 2 sees it. The paper's method section is not public; this is the
reconstruction of spec_hpgr_hstu_mtgr.md §5.3(b) with the defaults of its ambiguity table §5.4:

    x_j = E[i_j] + P_in[min(p(j), 63)] + T_gap[bucket(t_j - t_{j-1})]       per event
    h_j, z_m = IntraTransformer([x ; SES_1..SES_M])   bidirectional inside each session (block mask)
    g_m = InterTransformer(z_m + P_sess[M_b-1-m] + G_sess[bucket(start_m - end_{m-1})])  over sessions
    u_j = LN(h_j + W_f g_{m(j)})                                               hierarchical fusion

Layout: the batch is left-aligned (``n_b`` real events, then padding 0). Session tokens are *appended*
after the event slots instead of being interleaved: attention with additive position embeddings is
permutation-equivariant, so the block-diagonal mask over ``[events | SES tokens]`` is exactly "prepend
one [SES] per session", and the index tensors stay plain ``(B, N)`` / ``(B, M)`` gathers with no
per-event Python loop. Switches: ``session_repr="mean"`` (mean of ``h_j`` instead of [SES]) and
``use_sessions=False`` (a plain bidirectional Transformer over the events, the "no SEM" ablation).

Stage 2 (``HPGRRanker``, registered as ``"hpgr"``) is at the end of the file: the HSTU ranker of
``hstu_ranker.py`` initialised from the stage-1 item table, with PGSA (``genrec.nn.sparse``) in every layer.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from genrec.data.sequences import SeqBatch
from genrec.errors import ConfigError
from genrec.models.base import RANKER
from genrec.models.hstu_ranker import ColumnMask, HSTURanker, HSTURankerLayer, target_aware_mask
from genrec.models.registry import register
from genrec.nn.attention import hstu_pointwise_attention
from genrec.nn.position import log_time_bucket
from genrec.nn.sparse import IMPLS, ROWS, WINDOWS, kept_columns, pgsa_attention, pgsa_relevance, pgsa_weights

MASK_ID = -1  # an input item id meaning "the learned [MASK] vector" (set by objectives.mim)


@dataclass
class SessionLayout:
    """Per-batch session index tensors (all vectorised from the padded batch)."""

    event_valid: torch.Tensor  # (B, N) bool, real event inside the kept (most recent M_max) sessions
    event_session: torch.Tensor  # (B, N) int64, 0-based kept-session index of the event (0 where invalid)
    intra_pos: torch.Tensor  # (B, N) int64, position inside the session (uncapped)
    gap_bucket: torch.Tensor  # (B, N) int64, log bucket of t_j - t_{j-1}; num_buckets+1 = first event
    num_sessions: torch.Tensor  # (B,) int64, kept sessions per row
    session_valid: torch.Tensor  # (B, M) bool
    session_recency: torch.Tensor  # (B, M) int64, 0 = most recent session
    session_gap_bucket: torch.Tensor  # (B, M) int64, bucket(start_m - end_{m-1}); num_buckets+1 = first


def session_layout(
    timestamps: torch.Tensor, session_ids: torch.Tensor, lengths: torch.Tensor, max_sessions: int,
    num_time_buckets: int = 128,
) -> SessionLayout:
    """Index tensors for a padded batch; only the ``max_sessions`` most recent sessions of a row are kept.

    ``session_ids`` only need to change value at a session boundary (global ids from ``sessionize``).
    """
    B, N = timestamps.shape
    dev = timestamps.device
    ar = torch.arange(N, device=dev)
    real = ar[None, :] < lengths[:, None]  # (B, N)
    start = torch.ones_like(real)
    start[:, 1:] = session_ids[:, 1:] != session_ids[:, :-1]
    start = start & real
    sess = torch.cumsum(start.long(), 1) - 1  # (B, N) 0-based session index over all sessions
    total = start.sum(1)  # (B,)
    first_kept = (total - max_sessions).clamp(min=0)  # (B,)
    valid = real & (sess >= first_kept[:, None])
    sess = torch.where(valid, sess - first_kept[:, None], torch.zeros_like(sess))
    num = total - first_kept  # (B,)
    sess_start = torch.cummax(torch.where(start, ar[None, :].expand(B, N), torch.zeros_like(sess)), 1).values
    intra_pos = torch.where(valid, ar[None, :] - sess_start, torch.zeros_like(sess))
    gap = torch.full_like(sess, num_time_buckets + 1)  # first event of the row: its own bucket
    gap[:, 1:] = log_time_bucket(timestamps[:, 1:] - timestamps[:, :-1], num_time_buckets)
    gap = torch.where(valid & (intra_pos + sess > 0), gap, torch.full_like(gap, num_time_buckets + 1))
    gap = torch.where(valid, gap, torch.zeros_like(gap))

    M = max(1, int(num.max()) if B else 1)
    mar = torch.arange(M, device=dev)
    s_valid = mar[None, :] < num[:, None]  # (B, M)
    # first / last timestamp of each kept session, by scatter over the event slots
    big = torch.iinfo(torch.int64).max
    idx = torch.where(valid, sess, torch.full_like(sess, M))  # invalid events go to a dump column
    t_first = torch.full((B, M + 1), big, dtype=torch.int64, device=dev)
    t_first.scatter_reduce_(1, idx, timestamps.long(), reduce="amin")
    t_last = torch.full((B, M + 1), -big, dtype=torch.int64, device=dev)
    t_last.scatter_reduce_(1, idx, timestamps.long(), reduce="amax")
    t_first, t_last = t_first[:, :M], t_last[:, :M]
    s_gap = torch.full((B, M), num_time_buckets + 1, dtype=torch.int64, device=dev)
    if M > 1:
        d = torch.where(s_valid[:, 1:], t_first[:, 1:] - t_last[:, :-1], torch.zeros_like(t_first[:, 1:]))
        s_gap[:, 1:] = log_time_bucket(d, num_time_buckets)
    s_gap = torch.where(s_valid, s_gap, torch.zeros_like(s_gap))
    recency = torch.where(s_valid, num[:, None] - 1 - mar[None, :], torch.zeros_like(s_gap))
    return SessionLayout(valid, sess, intra_pos, gap, num, s_valid, recency, s_gap)


def intra_session_mask(layout: SessionLayout, with_session_tokens: bool = True) -> torch.Tensor:
    """(B, N+M, N+M) bool attention mask over ``[events | SES tokens]`` (or (B, N, N) without tokens).

    ``mask[b, i, j]`` is True iff slots i and j are both real and belong to the same session: a block
    diagonal over sessions (in the permuted slot order) that never reads or writes padding.
    """
    seg, valid = layout.event_session, layout.event_valid
    if with_session_tokens:
        M = layout.session_valid.shape[1]
        mar = torch.arange(M, device=seg.device).expand(seg.shape[0], M)
        seg = torch.cat([seg, mar], 1)  # (B, N+M)
        valid = torch.cat([valid, layout.session_valid], 1)
    return (seg[:, :, None] == seg[:, None, :]) & valid[:, :, None] & valid[:, None, :]


class TransformerLayer(nn.Module):
    """Pre-LN softmax self-attention + GELU FFN; the mask is a bool (B, L, L) "may attend" matrix."""

    def __init__(self, d: int, heads: int, dropout: float, ffn_mult: int = 4) -> None:
        super().__init__()
        if d % heads:
            raise ValueError(f"d_model {d} must be divisible by num_heads {heads}")
        self.h = heads
        self.ln1 = nn.LayerNorm(d)
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)
        self.ln2 = nn.LayerNorm(d)
        self.ffn = nn.Sequential(nn.Linear(d, ffn_mult * d), nn.GELU(), nn.Linear(ffn_mult * d, d))
        self.drop = nn.Dropout(dropout)
        self.p = dropout

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """x: (B, L, D), mask: (B, L, L) bool with at least one True per row. Returns (B, L, D)."""
        B, L, D = x.shape
        q, k, v = self.qkv(self.ln1(x)).view(B, L, 3, self.h, D // self.h).permute(2, 0, 3, 1, 4)  # (B,h,L,dh)
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask[:, None],
                                           dropout_p=self.p if self.training else 0.0)  # (B, h, L, dh)
        x = x + self.drop(self.proj(o.transpose(1, 2).reshape(B, L, D)))
        return x + self.drop(self.ffn(self.ln2(x)))


class Encoder(nn.Module):
    """A stack of TransformerLayer with a final LayerNorm; padding rows are zeroed."""

    def __init__(self, d: int, layers: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.layers = nn.ModuleList(TransformerLayer(d, heads, dropout) for _ in range(layers))
        self.norm = nn.LayerNorm(d)

    def forward(self, x: torch.Tensor, mask: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """x: (B, L, D); mask: (B, L, L); valid: (B, L). Padding rows attend to themselves (no NaN)."""
        eye = torch.eye(x.shape[1], dtype=torch.bool, device=x.device)[None]
        mask = mask | (eye & ~valid[:, :, None])
        for layer in self.layers:
            x = layer(x, mask)
        return self.norm(x) * valid[..., None].to(x.dtype)


@dataclass
class SEMOutput:
    """What the SEM returns; stage 2 and the MIM loss read ``events`` at ``event_valid`` slots."""

    events: torch.Tensor  # (B, N, D) u_j (zeros on padding / dropped sessions)
    event_valid: torch.Tensor  # (B, N) bool
    sessions: torch.Tensor | None  # (B, M, D) g_m (None without sessions)
    session_valid: torch.Tensor | None  # (B, M) bool


class SessionEncoder(nn.Module):
    """Session Enhancement Module: intra-session + inter-session Transformers and hierarchical fusion.

    It owns the item table ``item_emb`` ((num_items+1, D), row 0 = padding) and the learned [MASK]
    vector, because MIM pre-trains both and stage 2 initialises its item table from ``item_emb``.
    """

    @dataclass
    class Config:
        d_model: int = 64
        num_heads: int = 2
        intra_layers: int = 2  # L_a
        inter_layers: int = 2  # L_b
        dropout: float = 0.2
        max_intra_pos: int = 64  # P_in size; later positions share the last row
        max_sessions: int = 64  # M_max, most recent sessions kept
        num_time_buckets: int = 128  # HSTU log buckets of a gap in seconds
        session_repr: str = "token"  # "token" ([SES] output) or "mean" (mean of h_j)
        use_sessions: bool = True  # False = plain bidirectional Transformer over events (ablation)

    def __init__(self, cfg: Config, num_items: int, max_len: int) -> None:
        super().__init__()
        if cfg.session_repr not in ("token", "mean"):
            raise ValueError(f"SessionEncoder: session_repr must be 'token' or 'mean', got {cfg.session_repr!r}")
        self.cfg, self.num_items, self.max_len = cfg, num_items, max_len
        d, nb = cfg.d_model, cfg.num_time_buckets
        self.item_emb = nn.Embedding(num_items + 1, d, padding_idx=0)
        nn.init.trunc_normal_(self.item_emb.weight, std=0.02)
        with torch.no_grad():
            self.item_emb.weight[0].zero_()
        self.mask_token = nn.Parameter(torch.empty(d).normal_(0, 0.02))
        self.gap_emb = nn.Embedding(nb + 2, d)  # nb+1 = "first event"
        self.drop = nn.Dropout(cfg.dropout)
        if cfg.use_sessions:
            self.pos_emb = nn.Embedding(cfg.max_intra_pos, d)
            self.ses_token = nn.Parameter(torch.empty(d).normal_(0, 0.02))
            self.intra = Encoder(d, cfg.intra_layers, cfg.num_heads, cfg.dropout)
            self.sess_pos_emb = nn.Embedding(cfg.max_sessions, d)  # P_sess, by recency
            self.sess_gap_emb = nn.Embedding(nb + 2, d)
            self.inter = Encoder(d, cfg.inter_layers, cfg.num_heads, cfg.dropout)
            self.fuse = nn.Linear(d, d, bias=False)  # W_f
        else:  # same depth budget, absolute positions
            self.pos_emb = nn.Embedding(max_len, d)
            self.intra = Encoder(d, cfg.intra_layers + cfg.inter_layers, cfg.num_heads, cfg.dropout)
        self.out_norm = nn.LayerNorm(d)
        for emb in (self.pos_emb, self.gap_emb, *((self.sess_pos_emb, self.sess_gap_emb) if cfg.use_sessions
                                                  else ())):
            nn.init.normal_(emb.weight, std=0.02)

    def item_input(self, items: torch.Tensor) -> torch.Tensor:
        """(B, N) ids, ``MASK_ID`` = [MASK] -> (B, N, D) embeddings."""
        x = self.item_emb(items.clamp(min=0))
        return torch.where((items == MASK_ID)[..., None], self.mask_token.to(x.dtype), x)

    def forward(self, items: torch.Tensor, timestamps: torch.Tensor, session_ids: torch.Tensor | None,
                lengths: torch.Tensor) -> SEMOutput:
        """items/timestamps/session_ids: (B, N) left-aligned, lengths: (B,). Returns u_j (B, N, D)."""
        cfg = self.cfg
        B, N = items.shape
        if not cfg.use_sessions:
            if N > self.max_len:
                raise ValueError(f"SessionEncoder: sequence length {N} exceeds max_len {self.max_len}")
            valid = torch.arange(N, device=items.device)[None, :] < lengths[:, None]  # (B, N)
            gap = torch.full_like(items, cfg.num_time_buckets + 1)
            gap[:, 1:] = log_time_bucket(timestamps[:, 1:] - timestamps[:, :-1], cfg.num_time_buckets)
            x = self.item_input(items) + self.pos_emb.weight[:N][None] + self.gap_emb(gap)
            mask = valid[:, :, None] & valid[:, None, :]
            h = self.intra(self.drop(x), mask, valid)
            return SEMOutput(self.out_norm(h) * valid[..., None], valid, None, None)
        if session_ids is None:
            raise ValueError("SessionEncoder: session_ids are required when use_sessions=True")
        lay = session_layout(timestamps, session_ids, lengths, cfg.max_sessions, cfg.num_time_buckets)
        valid, s_valid = lay.event_valid, lay.session_valid  # (B, N), (B, M)
        M = s_valid.shape[1]
        pos = lay.intra_pos.clamp(max=cfg.max_intra_pos - 1)
        x = (self.item_input(items) + self.pos_emb(pos) + self.gap_emb(lay.gap_bucket)) * valid[..., None]
        tokens = cfg.session_repr == "token"
        if tokens:
            ses = self.ses_token.expand(B, M, -1) * s_valid[..., None]  # (B, M, D)
            x = torch.cat([x, ses.to(x.dtype)], 1)  # (B, N+M, D)
            all_valid = torch.cat([valid, s_valid], 1)
        else:
            all_valid = valid
        out = self.intra(self.drop(x), intra_session_mask(lay, tokens), all_valid)
        h = out[:, :N]  # (B, N, D)
        if tokens:
            z = out[:, N:]  # (B, M, D)
        else:  # mean of h_j per session, by scatter-add
            idx = torch.where(valid, lay.event_session, torch.full_like(lay.event_session, M))
            z = h.new_zeros(B, M + 1, h.shape[-1]).scatter_add_(1, idx[..., None].expand_as(h), h)[:, :M]
            cnt = torch.zeros(B, M + 1, device=h.device).scatter_add_(1, idx, valid.float())[:, :M]
            z = z / cnt.clamp(min=1)[..., None]
        rec = lay.session_recency.clamp(max=cfg.max_sessions - 1)
        zs = (z + self.sess_pos_emb(rec) + self.sess_gap_emb(lay.session_gap_bucket)) * s_valid[..., None]
        smask = s_valid[:, :, None] & s_valid[:, None, :]  # (B, M, M) bidirectional over sessions
        g = self.inter(self.drop(zs), smask, s_valid)  # (B, M, D)
        g_j = torch.gather(g, 1, lay.event_session[..., None].expand(B, N, g.shape[-1]))  # (B, N, D)
        u = self.out_norm(h + self.fuse(g_j)) * valid[..., None]
        return SEMOutput(u, valid, g, s_valid)


# ---------------------------------------------------------------------------------------------------
# Stage 2: preference-aware fine-tuning (spec §5.3(c)-(e))
# ---------------------------------------------------------------------------------------------------


def window_sessions(timestamps: torch.Tensor, lengths: torch.Tensor, gap: int | None,
                    max_session_len: int | None) -> torch.Tensor:
    """(B, N) session ids (1, 2, ... per row; 0 on padding) of a left-aligned history window.

    The rule of ``genrec.data.sessions.sessionize`` (a gap > ``gap`` seconds or ``max_session_len``
    events open a session), applied to the window only: stage 2 sees histories as windows, and the SEM
    only needs ids that change at boundaries.
    """
    B, N = timestamps.shape
    ar = torch.arange(N, device=timestamps.device)
    real = ar[None, :] < lengths[:, None]  # (B, N)
    start = torch.zeros_like(real)
    start[:, 0] = True
    if gap is not None and N > 1:
        start[:, 1:] = (timestamps[:, 1:] - timestamps[:, :-1]) > gap
    if max_session_len:
        seg = torch.cummax(torch.where(start, ar.expand(B, N), torch.zeros_like(ar).expand(B, N)), 1).values
        start = (ar[None, :] - seg) % int(max_session_len) == 0
    return torch.where(real, torch.cumsum(start.long(), 1), torch.zeros(B, N, dtype=torch.long,
                                                                        device=timestamps.device))


def fit_table(table: torch.Tensor, d: int) -> torch.Tensor:
    """(V, Dp) pre-trained table -> (V, d) initial ranker table.

    Same width: an exact copy. Wider ranker: zero-padding (every dot product kept). Narrower: projection
    on the table's top right-singular vectors, the rank-d map that best keeps its dot products (the
    quantity PGSA and MIM are built on).
    """
    dp = table.shape[1]
    if dp == d:
        return table.clone()
    if dp < d:
        return F.pad(table, (0, d - dp))
    _, _, vh = torch.linalg.svd(table[1:].double(), full_matrices=False)  # row 0 is padding
    return (table.double() @ vh[:d].T).to(table.dtype)


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


def _per_candidate(batch: SeqBatch, candidates: torch.Tensor) -> tuple[SeqBatch, torch.Tensor]:
    """(B, N) history and (B, C) candidates -> (B*C, N) copies and (B*C, 1): one PGSA pass per pair."""
    C = candidates.shape[1]
    if C == 1:
        return batch, candidates

    def rep(t: torch.Tensor | None) -> torch.Tensor | None:
        return None if t is None else t.repeat_interleave(C, dim=0)

    flat = SeqBatch(items=rep(batch.items), timestamps=rep(batch.timestamps), lengths=rep(batch.lengths),
                    query_time=rep(batch.query_time), behaviors=rep(batch.behaviors))
    return flat, candidates.reshape(-1, 1)


@register("hpgr")
class HPGRRanker(HSTURanker):
    """HPGR stage 2: the target-aware HSTU ranker, pre-trained item table, PGSA in every layer.

    Same API as :class:`HSTURanker` (``loss`` mean BCE, ``score`` (B, C) logits, ``score_candidates``).
    Each (user, candidate) pair gets its own pass, because the PGSA mask depends on the candidate.
    Relevance ``r_j = <Ê[c], Ê[i_j]>`` comes from a frozen copy of the pre-trained table
    (``freeze_relevance``), or from the ranker's own table, detached, when there is no pre-training (a
    frozen *random* table would pick random anchors) or ``freeze_relevance=False``. Top-K never passes
    gradients either way.
    """

    kinds: tuple[str, ...] = (RANKER,)

    @dataclass
    class Config(HSTURanker.Config):
        pretrained: str = ""  # stage-1 artifact folder; "" = no pre-training (random init)
        pgsa: bool = True  # False = dense target-aware attention (the "dense attention" ablation)
        impl: str = "gather"  # "gather" (cost grows with K) or "dense" (the masked reference)
        top_k: int = 32  # K anchors per (user, candidate)
        sigma: float = 2.0  # Gaussian window in positions; 0 = anchors only
        eps: float = 0.01  # window weights below eps are dropped
        window: str = "position"  # "position" (default) or "score" (relevance-Gaussian ablation)
        sigma_r: float = 0.25  # width of the score Gaussian
        rows: str = "all"  # "all" rows sparse, or "candidate" row only (cheap variant)
        freeze_relevance: bool = True  # relevance from the frozen pre-trained table
        use_sem: bool = True  # add the frozen pre-trained SEM's session-aware event vectors (needs pretrained)

    def __init__(self, cfg: Config, num_items: int, max_len: int) -> None:
        for name, value, options in (("impl", cfg.impl, IMPLS), ("rows", cfg.rows, ROWS),
                                     ("window", cfg.window, WINDOWS)):
            if value not in options:
                raise ConfigError(f"hpgr: model.{name} must be one of {list(options)}, got {value!r}")
        if cfg.top_k < 1 or cfg.sigma < 0 or not 0 < cfg.eps < 1:
            raise ConfigError(f"hpgr: need model.top_k >= 1, sigma >= 0, 0 < eps < 1 "
                              f"(got {cfg.top_k}, {cfg.sigma}, {cfg.eps})")
        if cfg.pgsa and cfg.attn_dropout > 0:
            raise ConfigError("hpgr: PGSA attention has no score dropout; set model.attn_dropout=0")
        super().__init__(cfg, num_items, max_len)
        self.cfg: HPGRRanker.Config = cfg
        self.sem: SessionEncoder | None = None
        self.sem_proj: nn.Linear | None = None
        self.session_rule: tuple[int | None, int | None] = (None, None)  # stage 1's (gap, cap), for the SEM
        if cfg.pretrained:
            self._load_pretrained(cfg.pretrained, num_items, max_len)

    def _load_pretrained(self, path: str, num_items: int, max_len: int) -> None:
        from pathlib import Path

        from genrec.train.pretrain import META_FILE, load_pretrained  # stage-1 code imports this module

        if not (Path(path) / META_FILE).exists():
            raise ConfigError(f"hpgr: model.pretrained={path!r} is not a stage-1 artifact; run the pretrain "
                              "stage first (stages: [pretrain, finetune]) or set model.pretrained=''")
        pre = load_pretrained(path, num_items=num_items)
        table = pre.item_table  # (I+1, Dp)
        with torch.no_grad():
            self.item_emb.weight.copy_(fit_table(table, self.cfg.d_model))
        if self.cfg.use_sem:
            sem = pre.sem
            if not sem.cfg.use_sessions and max_len > sem.max_len:
                raise ConfigError(f"hpgr: the session-free pre-trained encoder holds {sem.max_len} positions, "
                                  f"data.max_len is {max_len}; raise pretrain.max_len or set model.use_sem=false")
            sem.requires_grad_(False)
            self.sem = sem.eval()
            self.sem_proj = nn.Linear(table.shape[1], self.cfg.d_model, bias=False)
            nn.init.zeros_(self.sem_proj.weight)  # at init the model is the SEM-free one
            raw = pre.meta["config"]
            self.session_rule = (raw.get("session_gap"), raw.get("max_session_len"))
        if self.cfg.freeze_relevance and self.sem is None:
            self.register_buffer("relevance_table", table.clone())  # (I+1, Dp) frozen Ê

    def train(self, mode: bool = True) -> HPGRRanker:
        """The frozen SEM stays in eval mode (no dropout) while the ranker trains."""
        super().train(mode)
        if self.sem is not None:
            self.sem.eval()
        return self

    def relevance_source(self) -> torch.Tensor:
        """(V, D') table behind PGSA relevance: the frozen pre-trained copy, else the live table (detached)."""
        if self.cfg.pretrained and self.cfg.freeze_relevance:
            return self.sem.item_emb.weight if self.sem is not None else self.relevance_table
        return self.item_emb.weight.detach()

    def relevance(self, batch: SeqBatch, candidates: torch.Tensor) -> torch.Tensor:
        """(B, N) relevance of each history item to the candidate (B,); -inf on padding; no gradient."""
        return pgsa_relevance(self.relevance_source(), candidates, batch.items, batch.lengths).detach()

    def column_weights(self, batch: SeqBatch, candidates: torch.Tensor) -> torch.Tensor:
        """(B, N) PGSA column weights for one candidate (B,) per row."""
        c = self.cfg
        return pgsa_weights(self.relevance(batch, candidates), batch.lengths, c.top_k, c.sigma, c.eps, c.window,
                            c.sigma_r)

    @torch.no_grad()
    def sem_features(self, batch: SeqBatch) -> torch.Tensor:
        """(B, N, Dp) frozen SEM event vectors u_j of the history window (zeros on padding)."""
        assert self.sem is not None
        sids = window_sessions(batch.timestamps, batch.lengths, *self.session_rule) if self.sem.cfg.use_sessions \
            else None
        return self.sem(batch.items, batch.timestamps, sids, batch.lengths).events

    def embed(self, batch: SeqBatch, candidates: torch.Tensor,
              sem: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The ranker's inputs, plus ``W_sem u_j`` on the history tokens when the SEM is used."""
        x, real = super().embed(batch, candidates)  # (B, N+C, D), (B, N+C)
        if self.sem is None:
            return x, real
        assert self.sem_proj is not None
        N = batch.items.shape[1]
        sem = self.sem_features(batch) if sem is None else sem  # (B, N, Dp)
        hist = x[:, :N] + self.sem_proj(sem.to(x.dtype)) * real[:, :N, None]
        return torch.cat([hist, x[:, N:]], dim=1), real

    def candidate_outputs(self, batch: SeqBatch, candidates: torch.Tensor,
                          column_mask: ColumnMask = None) -> torch.Tensor:
        """(B, C, D) encoder outputs at the candidates, PGSA in every layer (one mask for all layers).

        impl="dense": the ranker's own masked attention with the PGSA weights as its ``column_mask``.
        impl="gather", rows="all": only the K' kept history tokens and the candidate are run through the
        layers. Exact, because the mask is the same in every layer: a dropped column is never read, so
        its row can never reach the candidate. Cost per layer O(K'^2 d + K' d^2) instead of O(N^2 d + N d^2).
        impl="gather", rows="candidate": causal history pass plus the candidate row on its kept columns.
        """
        if not self.cfg.pgsa:
            return super().candidate_outputs(batch, candidates, column_mask)
        if column_mask is not None:
            raise ValueError("hpgr: PGSA builds its own column mask; pass column_mask only with model.pgsa=false")
        cfg = self.cfg
        B, N = batch.items.shape
        C = candidates.shape[1]
        flat, cand = _per_candidate(batch, candidates)  # (B*C, N), (B*C, 1): the mask depends on the candidate
        w = self.column_weights(flat, cand[:, 0])  # (B*C, N)
        if cfg.impl == "dense":
            if cfg.rows == "candidate":  # history rows are candidate-free: one shared pass
                return super().candidate_outputs(batch, candidates, w.view(B, C, N))
            return super().candidate_outputs(flat, cand, w).reshape(B, C, -1)
        sem = None
        if self.sem is not None:
            sem = self.sem_features(batch)  # (B, N, Dp), once per user, not per candidate
            sem = sem.repeat_interleave(C, dim=0) if C > 1 else sem
        x, real = self.embed(flat, cand, sem)  # (B*C, N+1, D)
        if cfg.rows == "candidate":
            for layer in self.layers:
                x = pgsa_layer(layer, x, w, flat.lengths, self.max_len, "candidate", "gather") * real[..., None]
            return x[:, N].reshape(B, C, -1)
        idx, colw = kept_columns(w)  # (B*C, K'+1), slot N (the candidate) last with weight 1
        xg = x.gather(1, idx[..., None].expand(-1, -1, x.shape[-1]))  # (B*C, K'+1, D)
        keep = colw > 0
        keep[:, -1] = real[:, N]
        causal = idx[:, None, :] <= idx[:, :, None]  # by original slot
        mask = (causal & keep[:, :, None] & keep[:, None, :]).to(x.dtype) * colw[:, None, :]  # (B*C, K'+1, K'+1)
        for layer in self.layers:
            xg = layer(xg, mask, self.max_len) * keep[..., None]
        return xg[:, -1].reshape(B, C, -1)
