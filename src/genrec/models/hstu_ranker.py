"""HSTU ranker: the production (DLRM-HSTU) variant of HSTU used as a pCTR baseline and as HPGR's encoder.

Zhai et al., "Actions Speak Louder than Words", ICML 2024 (arXiv 2402.17152), §3 and the M-FALCON
inference of §3.4; layer semantics follow the authors' production modules (spec_hpgr_hstu_mtgr.md
§3.4) rather than the research code of ``hstu.py``:

- ``f1`` has a bias, the input LayerNorm and the output norm are affine, only ``u`` goes through SiLU;
- scores ``silu(alpha * q k^T) / N`` with ``alpha = 1/sqrt(d_qk)`` and ``N`` the fixed history cap;
- ``y = x + W_o(dropout(concat[u, o, u * Norm(o)]))``;
- positions are additive embeddings relative to the request: distance from the end of the history
  and a ``sqrt`` (or ``log``) bucket of ``request_time - t_j`` in minutes;
- candidates are appended after the (padded) history under the target-aware mask: each candidate row
  sees the real history and itself, history rows never see candidates, candidates never see each
  other. So ``C`` candidates are scored in one pass and each gets the score it would get alone.

Equal inputs (``model.cross_features``, default off): the candidate token also gets the sum of the embeddings of
the candidate cross features MTGR reads (:data:`genrec.data.features.CROSS_FEATURES`, each from events strictly
before the impression), so the rankers can be compared with the same inputs. Summed, not MTGR's concatenation
through an MLP: every other attribute of an HSTU token (item, position, time gap, action) is an added
embedding, and a sum adds no layer of its own, so a row with and a row without them differ in the features only.

Deviations: one CTR head (MLP on the candidate output) instead of the multi-task module; the action
encoder is one embedding per behaviour level (plus a learned "unknown action" for candidates)
instead of summed multi-hot action bits; no contextual prefix tokens and no local attention window.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from genrec.data.sequences import SeqBatch
from genrec.models.base import ConfigCapability, Ranker
from genrec.models.registry import register
from genrec.nn.attention import with_column_mask
from genrec.nn.cross_features import (
    Features,
    cross_feature_embeddings,
    cross_feature_tables,
    slice_candidates,
)
from genrec.nn.embedding import item_embedding
from genrec.nn.hstu_block import DenseAttention, HSTUBlock, head_widths
from genrec.nn.jagged import JaggedAttention, Packing, target_aware_masks

ColumnMask = torch.Tensor | Sequence[torch.Tensor | None] | None


def target_aware_mask(lengths: torch.Tensor, N: int, C: int) -> torch.Tensor:
    """(B, N+C, N+C) bool M-FALCON mask for a history padded to N followed by C candidates.

    History row i < n: columns j <= i, j < n. Candidate row N+c: columns j < n and N+c itself.
    Padding rows read nothing.
    """
    L = N + C
    ar = torch.arange(L, device=lengths.device)
    hist_col = ar[None, :] < lengths[:, None]  # (B, L) real history columns
    causal = ar[None, :] <= ar[:, None]  # (L, L)
    hist_rows = (ar < N)[None, :, None] & hist_col[:, :, None]  # (B, L, 1) real history rows
    m = hist_rows & causal[None] & hist_col[:, None, :]
    cand_rows = (ar >= N)[:, None]  # (L, 1)
    m = m | (cand_rows[None] & hist_col[:, None, :]) | (cand_rows & (ar[None, :] == ar[:, None]))[None]
    return m


def time_bucket(delta: torch.Tensor, num_buckets: int, fn: str = "sqrt") -> torch.Tensor:
    """Bucket of a time gap in seconds: int(sqrt(delta/60)) or int(log(delta/60)), clipped to [0, num_buckets]."""
    minutes = delta.clamp(min=0).to(torch.float32) / 60.0
    if fn == "sqrt":
        b = torch.sqrt(minutes)
    elif fn == "log":
        b = torch.log(minutes.clamp(min=1.0))
    else:
        raise ValueError(f"time_bucket: fn must be 'sqrt' or 'log', got {fn!r}")
    return b.floor().clamp(0, num_buckets).to(torch.int64)


@register("hstu_ranker")
class HSTURanker(Ranker):
    """Target-aware HSTU pCTR model: ``score(batch, candidates) -> (B, C)`` logits."""

    needs_features = ConfigCapability("cross_features")  # impression features only when the switch is on
    packs = True  # packed_score: the same logits on packed tokens (train.packed)

    @dataclass
    class Config:
        d_model: int = 64
        num_layers: int = 2
        num_heads: int = 2
        dqk: int = 0  # per-head query/key width; 0 = d_model // num_heads
        dv: int = 0  # per-head value width; 0 = d_model // num_heads
        dropout: float = 0.2  # input dropout
        linear_dropout: float = 0.1  # dropout before W_o
        attn_dropout: float = 0.0  # dropout on attention scores
        group_norm: bool = False  # per-head norm of the attention output
        num_time_buckets: int = 128
        time_bucket_fn: str = "sqrt"  # "sqrt" (production default) or "log"
        num_behaviors: int = 8  # behaviour levels the action embedding can hold
        head_hidden: int = 0  # hidden width of the CTR MLP; 0 = d_model // 2
        cross_features: bool = False  # True = the candidate token adds the sum of MTGR's cross-feature embeddings

    def __init__(self, cfg: Config, num_items: int, max_len: int) -> None:
        super().__init__()
        if cfg.time_bucket_fn not in ("sqrt", "log"):
            raise ValueError(f"hstu_ranker: time_bucket_fn must be 'sqrt' or 'log', got {cfg.time_bucket_fn!r}")
        self.cfg, self.num_items, self.max_len = cfg, num_items, max_len
        d = cfg.d_model
        dqk, dv = head_widths(d, cfg.num_heads, cfg.dqk, cfg.dv)
        self.item_emb = item_embedding(num_items, d)  # (I+1, D), row 0 = padding
        self.pos_emb = nn.Embedding(max_len + 1, d)  # 0 = candidate, k = k-th event from the end
        self.time_emb = nn.Embedding(cfg.num_time_buckets + 1, d)
        self.action_emb = nn.Embedding(cfg.num_behaviors + 2, d)  # 0 = none, 1.. = levels, last = unknown
        for emb in (self.pos_emb, self.time_emb, self.action_emb):
            nn.init.normal_(emb.weight, std=0.02)
        self.input_dropout = nn.Dropout(cfg.dropout)
        self.layers = nn.ModuleList(  # production STU: affine norms, biased f1, SiLU(u), concat_ux output
            HSTUBlock(d, cfg.num_heads, dqk, dv, dropout=cfg.linear_dropout, attn_dropout=cfg.attn_dropout,
                      norm="layer", head_norm=cfg.group_norm, proj_bias=True, silu_qkv=False, scaled=True,
                      output="concat_ux")
            for _ in range(cfg.num_layers)
        )
        hidden = cfg.head_hidden or max(1, d // 2)
        self.head = nn.Sequential(nn.LayerNorm(d), nn.Linear(d, hidden), nn.SiLU(), nn.Linear(hidden, 1))
        if cfg.cross_features:  # built last, so a seed draws every other weight as it does with the switch off
            self.cross_emb = cross_feature_tables(d)
            for emb in self.cross_emb.values():
                nn.init.normal_(emb.weight, std=0.02)

    @property
    def device(self) -> torch.device:
        return self.item_emb.weight.device

    def embed(self, batch: SeqBatch, candidates: torch.Tensor,
              features: Features = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, N+C, D) inputs of history then candidates, and the (B, N+C) bool mask of real tokens.

        ``features`` (``model.cross_features`` only): the candidates' cross features, (B,) or (B, C) each.
        """
        N = batch.items.shape[1]
        dev = batch.items.device
        ar = torch.arange(N, device=dev)
        valid = ar[None, :] < batch.lengths[:, None]  # (B, N)
        dist = (batch.lengths[:, None] - ar[None, :]).clamp(0, self.max_len)  # (B, N) 1 = last event
        dt = batch.query_time[:, None] - batch.timestamps  # (B, N) seconds before the request
        tb = time_bucket(dt, self.cfg.num_time_buckets, self.cfg.time_bucket_fn)
        act = batch.behaviors.clamp(0, self.cfg.num_behaviors) if batch.behaviors is not None else torch.zeros_like(
            batch.items)
        hist = self.item_emb(batch.items) + self.pos_emb(dist) + self.time_emb(tb) + self.action_emb(act)
        unknown = torch.full_like(candidates, self.cfg.num_behaviors + 1)
        zero = torch.zeros_like(candidates)
        cand = self.item_emb(candidates) + self.pos_emb(zero) + self.time_emb(zero) + self.action_emb(unknown)
        if self.cfg.cross_features:
            B, C = candidates.shape
            for e in cross_feature_embeddings(self.cross_emb, features, B, C, dev, self.registry_name):
                cand = cand + e  # (B, C, D)
        x = torch.cat([hist * valid[..., None], cand], dim=1)  # (B, N+C, D)
        real = torch.cat([valid, candidates > 0], dim=1)  # (B, N+C)
        return self.input_dropout(x) * real[..., None], real

    def candidate_outputs(self, batch: SeqBatch, candidates: torch.Tensor, column_mask: ColumnMask = None,
                          features: Features = None) -> torch.Tensor:
        """(B, C, D) encoder outputs at the candidate tokens (``features``: as :meth:`embed`).

        ``column_mask`` is the hook for PGSA-style sparse attention: weights on the history columns,
        (B, N) for all rows or (B, C, N) for the candidate rows only; one tensor for every layer or a
        sequence with one entry (or None) per layer. 0 drops a column; the mask stays multiplicative.
        """
        N, C = batch.items.shape[1], candidates.shape[1]
        x, real = self.embed(batch, candidates, features=features)
        base = target_aware_mask(batch.lengths, N, C)  # (B, N+C, N+C)
        per_layer = (list(column_mask) if isinstance(column_mask, Sequence) and not isinstance(column_mask, torch.Tensor)
                     else [column_mask] * len(self.layers))
        if len(per_layer) != len(self.layers):
            raise ValueError(f"column_mask: got {len(per_layer)} entries for {len(self.layers)} layers")
        cache: dict[int, DenseAttention] = {}
        for layer, cm in zip(self.layers, per_layer):
            key = id(cm)
            if key not in cache:
                cache[key] = DenseAttention(with_column_mask(base, cm, N), self.max_len)
            x = layer(x, cache[key]) * real[..., None]
        return x[:, N:]

    def score(self, batch: SeqBatch, candidates: torch.Tensor, column_mask: ColumnMask = None,
              micro_batch: int | None = None, features: Features = None) -> torch.Tensor:
        """(B, C) logits for candidates (B, C); ``micro_batch`` splits C into chunks (M-FALCON's b_m).

        ``features``: the impression features (:func:`genrec.data.features.impression_features`), read only
        with ``model.cross_features``; missing ones read as "no earlier data".
        """
        if candidates.dim() == 1:
            candidates = candidates[:, None]
        C = candidates.shape[1]
        if micro_batch and micro_batch < C:
            if column_mask is not None and not (isinstance(column_mask, torch.Tensor) and column_mask.dim() == 3):
                raise ValueError("score: micro_batch needs a (B, C, N) candidate-row column_mask or none")
            return torch.cat([
                self.score(batch, candidates[:, i : i + micro_batch],
                           None if column_mask is None else column_mask[:, i : i + micro_batch],
                           features=slice_candidates(features, i, i + micro_batch))
                for i in range(0, C, micro_batch)
            ], dim=1)
        kw = {"features": features} if self.cfg.cross_features else {}
        return self.head(self.candidate_outputs(batch, candidates, column_mask, **kw)).squeeze(-1)  # (B, C)

    # -- packed path (train.packed) ---------------------------------------------------------------
    def token_inputs(self, batch: SeqBatch, candidates: torch.Tensor, src: torch.Tensor,
                     features: Features = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """:meth:`embed` at the flat slots ``src`` (T,) of its (B, N+C) layout only: ((T, D) inputs after the input
        dropout, (T,) slot in the row, (T,) bool real). The integer attributes are laid out padded (cheap), every
        float op runs on the T tokens, in :meth:`embed`'s order, so they equal its rows at ``src``."""
        B, N = batch.items.shape
        C = candidates.shape[1]
        ar = torch.arange(N, device=batch.items.device)
        dist = (batch.lengths[:, None] - ar[None, :]).clamp(0, self.max_len)  # (B, N)
        tb = time_bucket(batch.query_time[:, None] - batch.timestamps, self.cfg.num_time_buckets,
                         self.cfg.time_bucket_fn)
        act = batch.behaviors.clamp(0, self.cfg.num_behaviors) if batch.behaviors is not None else torch.zeros_like(
            batch.items)
        zero = torch.zeros_like(candidates)
        cols = (torch.cat([h, c], 1).reshape(-1).index_select(0, src) for h, c in (
            (batch.items, candidates), (dist, zero), (tb, zero), (act, torch.full_like(candidates,
                                                                                    self.cfg.num_behaviors + 1))))
        ids, pos, tim, acts = cols  # (T,) each
        x = self.item_emb(ids) + self.pos_emb(pos) + self.time_emb(tim) + self.action_emb(acts)  # (T, D)
        slot = src % (N + C)  # (T,)
        at = torch.nonzero(slot >= N).squeeze(1)  # packed tokens that are candidates
        if self.cfg.cross_features:
            which = (src // (N + C)).index_select(0, at) * C + slot.index_select(0, at) - N  # (Tc,) b*C + c
            xc = x.index_select(0, at)
            for e in cross_feature_embeddings(self.cross_emb, features, B, C, x.device, self.registry_name):
                xc = xc + e.reshape(B * C, -1).index_select(0, which)
            x = x.index_copy(0, at, xc)
        real = (slot < N) | (ids > 0)  # (T,) every history token; a candidate unless it is padding (0)
        return self.input_dropout(x) * real[:, None], slot, real

    def packed_layers(self, x: torch.Tensor, packing: Packing, slot: torch.Tensor, real: torch.Tensor, history: int,
                      weights: torch.Tensor | None = None) -> torch.Tensor:
        """The layers on packed tokens x (T, D), attention per length group under the target-aware mask."""
        attention = JaggedAttention(packing, self.max_len,
                                    masks=target_aware_masks(packing, slot, real, history, weights))
        for layer in self.layers:
            x = layer(x, attention) * real[:, None]
        return x

    def packed_candidate_outputs(self, batch: SeqBatch, candidates: torch.Tensor,
                                 features: Features = None) -> torch.Tensor:
        """(B, C, D) :meth:`candidate_outputs` (no column mask) computed on the real tokens only: each row's
        history then its candidates, attention per group of rows of similar length (``genrec.nn.jagged``)."""
        B, N = batch.items.shape
        C = candidates.shape[1]
        packing = Packing.of(batch.lengths + C, N + C)  # tokens per row: its history, then its C candidates
        row, pos = packing.index // (N + C), packing.positions  # (T,) each
        n = batch.lengths.index_select(0, row)
        src = row * (N + C) + torch.where(pos < n, pos, N + pos - n)  # (T,) slot in the padded (B, N+C) layout
        x, slot, real = self.token_inputs(batch, candidates, src, features)
        x = self.packed_layers(x, packing, slot, real, N)
        return x[slot >= N].view(B, C, -1)  # rows in order, each row's candidates last and in order

    def packed_score(self, batch: SeqBatch, candidates: torch.Tensor, features: Features = None) -> torch.Tensor:
        """(B, C) :meth:`score` logits from :meth:`packed_candidate_outputs` (``train.packed``: no token of
        padding in the token-wise layers; with dropout the masks are drawn in the packed shape)."""
        if candidates.dim() == 1:
            candidates = candidates[:, None]
        kw = {"features": features} if self.cfg.cross_features else {}
        return self.head(self.packed_candidate_outputs(batch, candidates, **kw)).squeeze(-1)  # (B, C)
