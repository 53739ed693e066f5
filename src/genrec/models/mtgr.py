"""MTGR: Meituan's generative-recommendation ranker (Han et al., arXiv 2505.18654), spec §4.

A CTR model over one token sequence per (user, request):

    [ U: user-profile tokens | S: long history | R: real-time history | C: candidate tokens ]

- U: one ``d_model`` token per profile field (field embedding + hashed value embedding).
- S / R: one token per history event, ``MLP_group(concat(item, time-gap bucket, action))``; R is the
  most recent part of the history (events within ``realtime_window`` seconds of the request, at most
  ``realtime_max`` of them), S the rest. S and R have their own MLPs.
- C: one token per candidate, ``MLP(concat(item, category, cross features))``. Cross features (counts of
  earlier user x item / user x category events, popularity, ...) live only in candidate tokens and are
  computed by :func:`genrec.data.features.impression_features` from events strictly before the
  impression.

Each layer (spec §4.2), with ``GLN`` a LayerNorm whose affine parameters are chosen per token group:

    X~ = GLN(X);  u, v, q, k = split(W X~ + b);  u = silu(u)
    V~ = ((silu(q k^T / sqrt(d_qk)) / T_b) * M) v        # HSTU pointwise attention, no softmax
    X  = X + MLP(GLN(V~ * u))

``T_b`` = number of U + S + R tokens of the row + 1 (the token count of one candidate's sample; see
``docs/models/mtgr.md`` for why not + K). ``M`` is the dynamic mask of :func:`mtgr_mask`: U and S see
each other fully, R is causal by timestamp, a candidate sees U, the S/R events strictly before its own
exposure time and itself, never another candidate. So several candidates are scored in one pass and
each gets exactly the score it would get alone.

Deviations (all documented in docs/models/mtgr.md): one CTR head (public data has one label), the
``1/sqrt(d_qk)`` score scale of production HSTU, a time-gap embedding on history tokens (MTGR's paper
does not describe positional information), normaliser without the other candidates.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from genrec.data.features import CROSS_FEATURES
from genrec.data.sequences import SeqBatch
from genrec.errors import ConfigError
from genrec.models.base import Ranker
from genrec.models.hstu_ranker import time_bucket
from genrec.models.registry import register
from genrec.nn.cross_features import (
    Features,
    candidate_feature,
    cross_feature_embeddings,
    cross_feature_tables,
)
from genrec.nn.hstu_block import DenseAttention, HSTUBlock, head_widths
from genrec.nn.jagged import JaggedAttention, Packing

# token groups
GROUP_U, GROUP_S, GROUP_R, GROUP_C = 0, 1, 2, 3
NUM_GROUPS = 4

_P_VALUE, _P_FIELD = 1_000_003, 7_919


def mtgr_mask(groups: torch.Tensor, times: torch.Tensor, real: torch.Tensor, mode: str = "dynamic",
              history: str = "full") -> torch.Tensor:
    """(B, T, T) bool attention mask, row = query token i, column = key token j.

    groups (B, T): GROUP_U / GROUP_S / GROUP_R / GROUP_C per token; times (B, T): event time of S/R
    tokens and exposure time of candidates (ignored for U); real (B, T): False on padding.

    mode="dynamic" (MTGR, spec §4.3), for real i, j:
    - column U: every row;
    - column S: U, S and R rows (S rows only j <= i when ``history="causal"``), candidate rows when
      ``t_j < t_i``;
    - column R: R rows when ``t_j < t_i`` or j == i; candidate rows when ``t_j < t_i``;
    - column C: only itself (j == i).
    mode="causal" (ablation "w/o dynamic mask"): U/S/R rows see U/S/R columns j <= i in token order;
    candidate rows as above.
    """
    if mode not in ("dynamic", "causal"):
        raise ValueError(f"mtgr_mask: mode must be 'dynamic' or 'causal', got {mode!r}")
    if history not in ("full", "causal"):
        raise ValueError(f"mtgr_mask: history must be 'full' or 'causal', got {history!r}")
    T = groups.shape[1]
    ar = torch.arange(T, device=groups.device)
    eye = (ar[:, None] == ar[None, :])[None]  # (1, T, T)
    before = ar[None, :] <= ar[:, None]  # (T, T) j <= i in token order
    gi, gj = groups[:, :, None], groups[:, None, :]  # row / column groups
    earlier = times[:, None, :] < times[:, :, None]  # (B, T, T) t_j < t_i
    cand_row = gi == GROUP_C
    seen_by_cand = (gj == GROUP_U) | (((gj == GROUP_S) | (gj == GROUP_R)) & earlier)
    m = cand_row & (seen_by_cand | eye)
    seq_row = ~cand_row  # U, S, R rows
    if mode == "dynamic":
        s_rule = before[None] if history == "causal" else torch.ones_like(eye)
        us = (gj == GROUP_U) | ((gj == GROUP_S) & (((gi == GROUP_S) & s_rule) | (gi != GROUP_S)))
        r = (gj == GROUP_R) & (gi == GROUP_R) & (earlier | eye)
        m = m | (seq_row & (us | r))
    else:
        m = m | (seq_row & (gj != GROUP_C) & before[None])
    return m & real[:, :, None] & real[:, None, :]


def _mlp(d_in: int, d: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(d_in, d), nn.SiLU(), nn.Linear(d, d))


@register("mtgr")
class MTGR(Ranker):
    """MTGR pCTR model: ``score(batch, candidates, features=...) -> (B, C)`` logits."""

    needs_features = True
    packs = True  # packed_score: the same logits on packed tokens (train.packed)

    @dataclass
    class Config:
        d_model: int = 64
        num_layers: int = 3  # MTGR-small depth
        num_heads: int = 2
        dqk: int = 0  # per-head query/key width; 0 = d_model // num_heads
        dv: int = 0  # per-head value width; 0 = d_model // num_heads
        ffn_hidden: int = 0  # hidden width of each layer's output MLP; 0 = d_model
        dropout: float = 0.2  # input (token) dropout
        linear_dropout: float = 0.1  # dropout inside the output MLP
        item_dim: int = 0  # item-id embedding width; 0 = d_model
        feat_dim: int = 16  # embedding width of every other field (time, action, category, cross features)
        realtime_max: int = 32  # at most this many most-recent events form the real-time group R (0 = no R)
        realtime_window: int = 86400  # R = events at most this many seconds before the request; 0 = no time limit
        history_mask: str = "full"  # U/S attention among themselves: "full" (MTGR) or "causal"
        mask: str = "dynamic"  # "dynamic" (MTGR) or "causal" (ablation: token-order causal U|S|R)
        group_norm: bool = True  # False = one shared LayerNorm for all groups (ablation "w/o GLN")
        cross_features: bool = True  # False = cross features ignored (ablation "w/o cross features")
        max_profile_fields: int = 8  # most user-profile tokens a dataset may bring
        profile_buckets: int = 20011  # hashed (field, value) table of the profile tokens
        category_buckets: int = 4099  # hashed candidate-category table
        num_time_buckets: int = 128  # request_time - t_j buckets of history tokens
        time_bucket_fn: str = "sqrt"  # "sqrt" or "log" (hstu_ranker.time_bucket)
        num_behaviors: int = 8  # behaviour levels the action embedding can hold
        head_hidden: int = 0  # hidden width of the CTR MLP; 0 = d_model // 2

    def __init__(self, cfg: Config, num_items: int, max_len: int) -> None:
        super().__init__()
        self._check(cfg, num_items, max_len)
        self.cfg, self.num_items, self.max_len = cfg, num_items, max_len
        d = cfg.d_model
        dqk, dv = head_widths(d, cfg.num_heads, cfg.dqk, cfg.dv)
        di, df = cfg.item_dim or d, cfg.feat_dim
        self.item_emb = nn.Embedding(num_items + 1, di, padding_idx=0)
        self.time_emb = nn.Embedding(cfg.num_time_buckets + 1, df)
        self.action_emb = nn.Embedding(cfg.num_behaviors + 1, df)  # 0 = no action column / padding
        self.seq_mlp = nn.ModuleList([_mlp(di + 2 * df, d), _mlp(di + 2 * df, d)])  # S, R
        self.profile_emb = nn.Embedding(cfg.profile_buckets + 1, d)  # 0 = missing value
        self.field_emb = nn.Embedding(cfg.max_profile_fields, d)
        self.cat_emb = nn.Embedding(cfg.category_buckets + 1, df)  # 0 = no category
        self.cross_emb = cross_feature_tables(df)
        self.cand_mlp = _mlp(di + df + len(CROSS_FEATURES) * df, d)
        for emb in (self.item_emb, self.time_emb, self.action_emb, self.profile_emb, self.field_emb, self.cat_emb,
                    *self.cross_emb.values()):
            nn.init.normal_(emb.weight, std=0.02)
        with torch.no_grad():
            self.item_emb.weight[0].zero_()
        self.input_dropout = nn.Dropout(cfg.dropout)
        self.layers = nn.ModuleList(  # GLN -> (u, v, q, k) -> attention -> GLN(O * u) -> MLP -> residual
            HSTUBlock(d, cfg.num_heads, dqk, dv, dropout=cfg.linear_dropout, norm="group",
                      num_groups=NUM_GROUPS if cfg.group_norm else 1, proj_bias=True, silu_qkv=False, scaled=True,
                      output="norm_after_gate", ffn_hidden=cfg.ffn_hidden or d)
            for _ in range(cfg.num_layers)
        )
        hidden = cfg.head_hidden or max(1, d // 2)
        self.head = nn.Sequential(nn.LayerNorm(d), nn.Linear(d, hidden), nn.SiLU(), nn.Linear(hidden, 1))

    @staticmethod
    def _check(cfg: Config, num_items: int, max_len: int) -> None:
        def bad(key: str, why: str) -> ConfigError:
            return ConfigError(f"model.{key}: {why} (mtgr), got {getattr(cfg, key)!r}")

        for key in ("d_model", "num_layers", "num_heads", "feat_dim", "max_profile_fields", "profile_buckets",
                    "category_buckets", "num_time_buckets", "num_behaviors"):
            v = getattr(cfg, key)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise bad(key, "must be a positive integer")
        for key in ("dqk", "dv", "ffn_hidden", "item_dim", "realtime_max", "realtime_window", "head_hidden"):
            v = getattr(cfg, key)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise bad(key, "must be an integer >= 0")
        if (cfg.dqk == 0 or cfg.dv == 0) and cfg.d_model % cfg.num_heads:
            raise bad("num_heads", f"must divide d_model={cfg.d_model} when dqk or dv is 0")
        for key in ("dropout", "linear_dropout"):
            v = getattr(cfg, key)
            if not isinstance(v, (int, float)) or not 0.0 <= v < 1.0:
                raise bad(key, "must be in [0, 1)")
        choices = {"history_mask": ("full", "causal"), "mask": ("dynamic", "causal"), "time_bucket_fn": ("sqrt", "log")}
        for key, allowed in choices.items():
            if getattr(cfg, key) not in allowed:
                raise bad(key, f"must be one of {list(allowed)}")
        if num_items < 1 or max_len < 1:
            raise ConfigError(f"mtgr: num_items and max_len must be >= 1, got {num_items}, {max_len}")

    @property
    def device(self) -> torch.device:
        return self.item_emb.weight.device

    # ------------------------------------------------------------------ features
    def _profile_ids(self, features: Features, B: int) -> torch.Tensor:
        """(B, F) hashed profile ids (0 = missing); one all-missing field when no profile is given."""
        dev = self.device
        if not features or features.get("profile") is None:
            return torch.zeros(B, 1, dtype=torch.long, device=dev)
        p = torch.as_tensor(features["profile"], device=dev).long()
        if p.dim() == 1:
            p = p[:, None]
        if p.shape[0] != B:
            raise ValueError(f"mtgr: feature 'profile' has {p.shape[0]} rows for a batch of {B}")
        Fn = p.shape[1]
        if Fn > self.cfg.max_profile_fields:
            raise ConfigError(f"model.max_profile_fields: the data has {Fn} user-profile fields, "
                              f"more than max_profile_fields={self.cfg.max_profile_fields} (mtgr)")
        field = torch.arange(1, Fn + 1, device=dev)[None, :]
        h = 1 + (p * _P_VALUE + field * _P_FIELD) % self.cfg.profile_buckets
        return torch.where(p > 0, h, torch.zeros_like(h))

    # ------------------------------------------------------------------ tokens
    def _history(self, batch: SeqBatch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(B, N) each: real history slots, the real-time group R among them, time-gap bucket, action."""
        cfg = self.cfg
        N = batch.items.shape[1]
        ar = torch.arange(N, device=batch.items.device)
        valid = ar[None, :] < batch.lengths[:, None]  # (B, N)
        age = batch.query_time[:, None] - batch.timestamps  # (B, N) seconds before the request
        recent = valid & ((batch.lengths[:, None] - ar[None, :]) <= cfg.realtime_max)
        if cfg.realtime_window > 0:
            recent = recent & (age <= cfg.realtime_window)
        tb = time_bucket(age, cfg.num_time_buckets, cfg.time_bucket_fn)
        act = (batch.behaviors.clamp(0, cfg.num_behaviors) if batch.behaviors is not None
               else torch.zeros_like(batch.items))
        return valid, recent, tb, act

    def _history_tokens(self, items: torch.Tensor, tb: torch.Tensor, act: torch.Tensor,
                        recent: torch.Tensor) -> torch.Tensor:
        """(..., D) S / R tokens, each group's MLP over [item, time gap, action] (padded (B, N) or packed (T,))."""
        fields = torch.cat([self.item_emb(items), self.time_emb(tb), self.action_emb(act)], dim=-1)
        return torch.where(recent[..., None], self.seq_mlp[1](fields), self.seq_mlp[0](fields))

    def _candidate_tokens(self, features: Features, candidates: torch.Tensor) -> torch.Tensor:
        """(B, C, D) candidate tokens with item side features and cross features."""
        B, C = candidates.shape
        dev = candidates.device
        cat = candidate_feature(features, "cand_category", B, C, dev, "mtgr")
        cat = torch.where(cat > 0, 1 + (cat * _P_VALUE) % self.cfg.category_buckets, torch.zeros_like(cat))
        parts = [self.item_emb(candidates), self.cat_emb(cat),
                 *cross_feature_embeddings(self.cross_emb, features if self.cfg.cross_features else None, B, C, dev,
                                           "mtgr")]
        return self.cand_mlp(torch.cat(parts, dim=-1))

    @staticmethod
    def _attributes(batch: SeqBatch, candidates: torch.Tensor, Fn: int, valid: torch.Tensor, recent: torch.Tensor,
                    candidate_times: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(B, T) groups, times and real flags of the padded layout [U | history | candidates]."""
        B, C = candidates.shape
        dev = candidates.device
        groups = torch.cat([
            torch.full((B, Fn), GROUP_U, dtype=torch.long, device=dev),
            torch.where(recent, GROUP_R, GROUP_S),
            torch.full((B, C), GROUP_C, dtype=torch.long, device=dev),
        ], dim=1)
        if candidate_times is None:
            ct = batch.query_time[:, None].expand(B, C)
        else:
            ct = torch.as_tensor(candidate_times, device=dev).long().reshape(B, C)
        times = torch.cat([torch.zeros(B, Fn, dtype=torch.long, device=dev), batch.timestamps, ct], dim=1)
        real = torch.cat([torch.ones(B, Fn, dtype=torch.bool, device=dev), valid, candidates > 0], dim=1)
        return groups, times, real

    def tokens(self, batch: SeqBatch, candidates: torch.Tensor, features: Features = None,
               candidate_times: torch.Tensor | None = None):
        """Token inputs and per-token attributes.

        Returns x (B, T, D), groups (B, T), times (B, T), real (B, T) and the number of profile tokens
        F, with T = F + N + C: profile tokens, the (padded) history, then the candidates.
        """
        prof = self._profile_ids(features, batch.items.shape[0])  # (B, F) U: profile tokens
        Fn = prof.shape[1]
        xu = self.profile_emb(prof) + self.field_emb(torch.arange(Fn, device=prof.device))[None]
        valid, recent, tb, act = self._history(batch)
        xh = self._history_tokens(batch.items, tb, act, recent)  # (B, N, D) S / R
        x = torch.cat([xu, xh, self._candidate_tokens(features, candidates)], dim=1)  # (B, T, D)
        groups, times, real = self._attributes(batch, candidates, Fn, valid, recent, candidate_times)
        x = self.input_dropout(x) * real[..., None]
        return x, groups, times, real, Fn

    def candidate_outputs(self, batch: SeqBatch, candidates: torch.Tensor, features: Features = None,
                          candidate_times: torch.Tensor | None = None) -> torch.Tensor:
        """(B, C, D) encoder outputs at the candidate tokens."""
        x, groups, times, real, Fn = self.tokens(batch, candidates, features, candidate_times)
        mask = mtgr_mask(groups, times, real, self.cfg.mask, self.cfg.history_mask)
        norm = (Fn + batch.lengths + 1).to(x.dtype)  # (B,) tokens of one candidate's sample
        weights = mask.to(x.dtype) / norm[:, None, None]
        attention = DenseAttention(weights, 1, scale_at="query")  # the weights carry 1/T_b
        for layer in self.layers:
            x = layer(x, attention, groups=groups) * real[..., None]
        return x[:, x.shape[1] - candidates.shape[1]:]

    def score(self, batch: SeqBatch, candidates: torch.Tensor, features: Features = None,
              candidate_times: torch.Tensor | None = None) -> torch.Tensor:
        """(B, C) logits. ``features``: the arrays of ``impression_features`` for these samples, as
        tensors ((B,) or (B, C) per candidate feature, (B, F) profile); missing keys read as 0.
        ``candidate_times`` (B, C): exposure time of each candidate (default: ``batch.query_time``)."""
        if candidates.dim() == 1:
            candidates = candidates[:, None]
        return self.head(self.candidate_outputs(batch, candidates, features, candidate_times)).squeeze(-1)

    # ------------------------------------------------------------------ packed path (train.packed)
    def packed_candidate_outputs(self, batch: SeqBatch, candidates: torch.Tensor, features: Features = None,
                                 candidate_times: torch.Tensor | None = None) -> torch.Tensor:
        """(B, C, D) :meth:`candidate_outputs` on packed tokens: each row's profile tokens, real history and
        candidates (``genrec.nn.jagged``); the dynamic mask over 1/T_b per group of rows of similar length."""
        B, N = batch.items.shape
        C = candidates.shape[1]
        prof = self._profile_ids(features, B)  # (B, F)
        Fn, W = prof.shape[1], prof.shape[1] + N + C
        xu = self.profile_emb(prof) + self.field_emb(torch.arange(Fn, device=prof.device))[None]  # (B, F, D)
        valid, recent, tb, act = self._history(batch)
        xh = self._history_tokens(batch.items[valid], tb[valid], act[valid], recent[valid])  # (Th, D) real only
        parts = torch.cat([xu.reshape(B * Fn, -1), xh, self._candidate_tokens(features, candidates).flatten(0, 1)])
        packing = Packing.of(batch.lengths + Fn + C, W)  # tokens per row: U, its history, its candidates
        row, pos = packing.index // W, packing.positions  # (T,) each
        n = batch.lengths.index_select(0, row)
        start = (torch.cumsum(batch.lengths, 0) - batch.lengths).index_select(0, row)  # row's first history token
        which = torch.where(pos < Fn, row * Fn + pos, torch.where(  # (T,) each token's row of ``parts``
            pos < Fn + n, B * Fn + start + pos - Fn, B * Fn + len(xh) + row * C + pos - Fn - n))
        src = row * W + torch.where(pos < Fn + n, pos, N + pos - n)  # (T,) slot in the padded (B, T) layout
        attrs = self._attributes(batch, candidates, Fn, valid, recent, candidate_times)
        groups, times, real = (a.reshape(-1).index_select(0, src) for a in attrs)  # (T,) each
        x = self.input_dropout(parts.index_select(0, which)) * real[:, None]  # (T, D)
        norm = (Fn + batch.lengths + 1).to(x.dtype)  # (B,) tokens of one candidate's sample
        masks = tuple(mtgr_mask(gg, tt, rr & packing.real_slots(g), self.cfg.mask, self.cfg.history_mask).to(x.dtype)
                      / norm[g.rows][:, None, None]
                      for g, (gg, tt, rr) in zip(packing.groups, packing.laid_out(groups, times, real)))
        attention = JaggedAttention(packing, 1, masks=masks, scale_at="query")  # the masks carry 1/T_b
        for layer in self.layers:
            x = layer(x, attention, groups=groups) * real[:, None]
        return x[src % W >= Fn + N].view(B, C, -1)  # rows in order, each row's candidates last and in order

    def packed_score(self, batch: SeqBatch, candidates: torch.Tensor, features: Features = None,
                     candidate_times: torch.Tensor | None = None) -> torch.Tensor:
        """(B, C) :meth:`score` logits from :meth:`packed_candidate_outputs` (``train.packed``)."""
        if candidates.dim() == 1:
            candidates = candidates[:, None]
        return self.head(self.packed_candidate_outputs(batch, candidates, features, candidate_times)).squeeze(-1)
