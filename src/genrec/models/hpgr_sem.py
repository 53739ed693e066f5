"""HPGR stage 1: the Session Enhancement Module (SEM), pre-trained with session MIM (``genrec.train.pretrain``).

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
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from genrec.nn.embedding import item_embedding
from genrec.nn.jagged import LengthGroup, Packing
from genrec.nn.position import log_time_bucket

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

    def packed(self, x: torch.Tensor, packing: Packing) -> torch.Tensor:
        """The same layer on packed tokens x (T, D), each packed sequence attending over its own tokens
        (bidirectional), per length group of ``packing``. Returns (T, D)."""
        T, D = x.shape
        qkv = self.qkv(self.ln1(x)).view(T, 3, self.h, D // self.h)

        def one(i: int, g: LengthGroup, parts: list[torch.Tensor]) -> torch.Tensor:
            q, k, v = parts[0].permute(2, 0, 3, 1, 4)  # (G, h, Lg, dh) each
            real = packing.real_slots(g)  # (G, Lg)
            eye = torch.eye(g.width, dtype=torch.bool, device=x.device)[None]
            mask = real[:, None, :] | (eye & ~real[:, :, None])  # the row's tokens; layout padding reads itself
            o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask[:, None],
                                               dropout_p=self.p if self.training else 0.0)  # (G, h, Lg, dh)
            return o.transpose(1, 2).reshape(len(g.rows), g.width, D)

        x = x + self.drop(self.proj(packing.per_group(one, qkv)))
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

    def packed(self, x: torch.Tensor, packing: Packing) -> torch.Tensor:
        """:meth:`forward` on packed tokens x (T, D), one bidirectional sequence per packed row."""
        for layer in self.layers:
            x = layer.packed(x, packing)
        return self.norm(x)


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
        self.item_emb = item_embedding(num_items, d)  # (I+1, D), row 0 = padding
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

    def packed_events(self, items: torch.Tensor, timestamps: torch.Tensor, session_ids: torch.Tensor | None,
                      lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """((Te, D) :meth:`forward`'s ``events`` at its ``event_valid`` slots, row-major; (B, N) ``event_valid``).

        Packed (``train.packed``): the intra-session encoder runs once per session (its events, then its [SES]
        token; sessions of similar length attended together), the inter-session encoder once per row of kept
        sessions, every token-wise layer on real tokens only: the padded path's block-diagonal mask over
        ``[events | SES tokens]`` made explicit. Attention is permutation-equivariant here (positions are
        added embeddings), so the order inside a packed session changes nothing. The other layouts
        (``session_repr="mean"``, ``use_sessions=False``) run :meth:`forward` and keep its valid events.
        """
        cfg = self.cfg
        if not cfg.use_sessions or cfg.session_repr != "token" or session_ids is None:
            out = self(items, timestamps, session_ids, lengths)
            return out.events[out.event_valid], out.event_valid
        lay = session_layout(timestamps, session_ids, lengths, cfg.max_sessions, cfg.num_time_buckets)
        valid, s_valid = lay.event_valid, lay.session_valid  # (B, N), (B, M)
        pos = lay.intra_pos.clamp(max=cfg.max_intra_pos - 1)
        x_ev = self.item_input(items[valid]) + self.pos_emb(pos[valid]) + self.gap_emb(lay.gap_bucket[valid])  # (Te, D)
        if not len(x_ev):
            return x_ev, valid
        ses_of = ((torch.cumsum(lay.num_sessions, 0) - lay.num_sessions)[:, None] + lay.event_session)[valid]  # (Te,)
        sizes = torch.bincount(ses_of, minlength=int(lay.num_sessions.sum()))  # (Ts,) events of each kept session
        intra = Packing.of(sizes + 1, int(sizes.max()) + 1)  # each session: its events, then its [SES] token
        seq, p = intra.index // intra.width, intra.positions  # (T,) each
        n = sizes.index_select(0, seq)
        which = torch.where(p < n, (torch.cumsum(sizes, 0) - sizes).index_select(0, seq) + p, len(x_ev) + seq)
        x = torch.cat([x_ev, self.ses_token.expand(len(sizes), -1).to(x_ev.dtype)]).index_select(0, which)
        out = self.intra.packed(self.drop(x), intra)  # (T, D)
        back = torch.empty_like(which).index_copy_(0, which, torch.arange(len(which), device=which.device))
        h, z = out.index_select(0, back[: len(x_ev)]), out.index_select(0, back[len(x_ev):])  # (Te, D), (Ts, D)
        rec = lay.session_recency.clamp(max=cfg.max_sessions - 1)[s_valid]  # (Ts,)
        zs = z + self.sess_pos_emb(rec) + self.sess_gap_emb(lay.session_gap_bucket[s_valid])
        g = self.inter.packed(self.drop(zs), Packing.of(lay.num_sessions, s_valid.shape[1]))  # (Ts,) row-major
        return self.out_norm(h + self.fuse(g.index_select(0, ses_of))), valid
