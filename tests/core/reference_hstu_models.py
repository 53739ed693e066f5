"""The four HSTU-family models assembled from the pre-refactor layers, kept only as a test oracle.

Each class subclasses today's model and overrides exactly the methods that built or called the old
layers, with their pre-refactor bodies copied verbatim (``super().__init__`` spelled as the base class
call it resolved to): the layer construction in ``__init__`` (so a seed consumes the RNG as it used to)
and the forward that ran the layers. Everything else (embeddings, masks, heads) is inherited unchanged.
Do not edit: a change here weakens the oracle.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from genrec.data.sequences import SeqBatch
from genrec.models.base import Retriever, l2norm
from genrec.models.hpgr import HPGRRanker, _per_candidate, kept_columns
from genrec.models.hstu import HSTU, copy_pretrained_table
from genrec.models.hstu_ranker import ColumnMask, HSTURanker, target_aware_mask
from genrec.models.mtgr import CROSS_FEATURES, MTGR, Features, _mlp, mtgr_mask
from genrec.nn.attention import causal_valid_mask
from genrec.nn.position import next_event_times
from tests.core.reference_hstu_layers import HSTULayer, HSTURankerLayer, MTGRLayer, pgsa_layer


class ReferenceHSTU(HSTU):
    """``hstu`` with ``HSTULayer``."""

    Config = HSTU.Config

    def __init__(self, cfg: Config, num_items: int, max_len: int) -> None:
        Retriever.__init__(self, num_items, max_len)
        self.cfg = cfg
        d = cfg.d_model
        dqk = cfg.dqk or d // cfg.num_heads
        dv = cfg.dv or d // cfg.num_heads
        self.item_emb = nn.Embedding(num_items + 1, d, padding_idx=0)
        nn.init.trunc_normal_(self.item_emb.weight, std=0.02)
        with torch.no_grad():
            self.item_emb.weight[0].zero_()
        if cfg.pretrained:
            copy_pretrained_table(self.item_emb, cfg.pretrained, num_items, "hstu")
        self.pos_emb = nn.Embedding(max_len, d)
        nn.init.xavier_normal_(self.pos_emb.weight)  # as the reference code's reset_params ends up
        self.input_dropout = nn.Dropout(cfg.dropout)
        self.layers = nn.ModuleList(
            HSTULayer(d, cfg.num_heads, dqk, dv, cfg.linear_dropout, max_len, cfg.time_bias, cfg.position_bias)
            for _ in range(cfg.num_layers)
        )

    def embed(self, batch: SeqBatch) -> tuple[torch.Tensor, torch.Tensor]:
        L = batch.items.shape[1]
        valid = batch.mask  # (B, L)
        x = self.item_emb(batch.items) * math.sqrt(self.cfg.d_model)
        x = x + self.pos_emb.weight[:L][None]
        x = self.input_dropout(x) * valid[..., None]
        return x, valid

    def sequence_output(self, batch: SeqBatch, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        x, valid = self.embed(batch)  # (B, L, D)
        L = x.shape[1]
        mask = causal_valid_mask(batch.lengths, L) if attn_mask is None else attn_mask  # (B, L, L)
        qt = next_event_times(batch.timestamps, batch.lengths, batch.query_time)
        for layer in self.layers:
            x = layer(x, mask, batch.timestamps, qt, self.max_len)
            x = x * valid[..., None]
        return l2norm(x)


class ReferenceHSTURanker(HSTURanker):
    """``hstu_ranker`` with ``HSTURankerLayer``."""

    Config = HSTURanker.Config

    def __init__(self, cfg: Config, num_items: int, max_len: int) -> None:
        nn.Module.__init__(self)
        if cfg.time_bucket_fn not in ("sqrt", "log"):
            raise ValueError(f"hstu_ranker: time_bucket_fn must be 'sqrt' or 'log', got {cfg.time_bucket_fn!r}")
        self.cfg, self.num_items, self.max_len = cfg, num_items, max_len
        d = cfg.d_model
        dqk = cfg.dqk or d // cfg.num_heads
        dv = cfg.dv or d // cfg.num_heads
        self.item_emb = nn.Embedding(num_items + 1, d, padding_idx=0)
        nn.init.trunc_normal_(self.item_emb.weight, std=0.02)
        with torch.no_grad():
            self.item_emb.weight[0].zero_()
        self.pos_emb = nn.Embedding(max_len + 1, d)  # 0 = candidate, k = k-th event from the end
        self.time_emb = nn.Embedding(cfg.num_time_buckets + 1, d)
        self.action_emb = nn.Embedding(cfg.num_behaviors + 2, d)  # 0 = none, 1.. = levels, last = unknown
        for emb in (self.pos_emb, self.time_emb, self.action_emb):
            nn.init.normal_(emb.weight, std=0.02)
        self.input_dropout = nn.Dropout(cfg.dropout)
        self.layers = nn.ModuleList(
            HSTURankerLayer(d, cfg.num_heads, dqk, dv, cfg.linear_dropout, cfg.attn_dropout, cfg.group_norm)
            for _ in range(cfg.num_layers)
        )
        hidden = cfg.head_hidden or max(1, d // 2)
        self.head = nn.Sequential(nn.LayerNorm(d), nn.Linear(d, hidden), nn.SiLU(), nn.Linear(hidden, 1))

    def _layer_mask(self, base: torch.Tensor, column_mask: torch.Tensor | None, N: int) -> torch.Tensor:
        """Apply an optional history-column mask: (B, N) to every row, (B, C, N) to candidate rows only."""
        if column_mask is None:
            return base
        m = base.to(torch.float32)
        if column_mask.dim() == 2:
            m[:, :, :N] = m[:, :, :N] * column_mask[:, None, :].to(m.dtype)
        else:
            m[:, N:, :N] = m[:, N:, :N] * column_mask.to(m.dtype)
        return m

    def candidate_outputs(self, batch: SeqBatch, candidates: torch.Tensor,
                          column_mask: ColumnMask = None) -> torch.Tensor:
        """(B, C, D) encoder outputs at the candidate tokens.

        ``column_mask`` is the hook for PGSA-style sparse attention: weights on the history columns,
        (B, N) for all rows or (B, C, N) for the candidate rows only; one tensor for every layer or a
        sequence with one entry (or None) per layer. 0 drops a column; the mask stays multiplicative.
        """
        N, C = batch.items.shape[1], candidates.shape[1]
        x, real = self.embed(batch, candidates)
        base = target_aware_mask(batch.lengths, N, C)  # (B, N+C, N+C)
        per_layer = (list(column_mask) if isinstance(column_mask, Sequence) and not isinstance(column_mask, torch.Tensor)
                     else [column_mask] * len(self.layers))
        if len(per_layer) != len(self.layers):
            raise ValueError(f"column_mask: got {len(per_layer)} entries for {len(self.layers)} layers")
        cache: dict[int, torch.Tensor] = {}
        for layer, cm in zip(self.layers, per_layer):
            key = id(cm)
            if key not in cache:
                cache[key] = self._layer_mask(base, cm, N)
            x = layer(x, cache[key], self.max_len) * real[..., None]
        return x[:, N:]


class ReferenceHPGRRanker(HPGRRanker, ReferenceHSTURanker):
    """``hpgr`` on ``ReferenceHSTURanker`` (the MRO puts it under ``HPGRRanker``), with ``pgsa_layer``.

    The old ``super().candidate_outputs`` calls are spelled ``ReferenceHSTURanker.candidate_outputs``, the
    method they resolved to before the refactor.
    """

    Config = HPGRRanker.Config

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
            return ReferenceHSTURanker.candidate_outputs(self, batch, candidates, column_mask)
        if column_mask is not None:
            raise ValueError("hpgr: PGSA builds its own column mask; pass column_mask only with model.pgsa=false")
        cfg = self.cfg
        B, N = batch.items.shape
        C = candidates.shape[1]
        flat, cand = _per_candidate(batch, candidates)  # (B*C, N), (B*C, 1): the mask depends on the candidate
        w = self.column_weights(flat, cand[:, 0])  # (B*C, N)
        if cfg.impl == "dense":
            if cfg.rows == "candidate":  # history rows are candidate-free: one shared pass
                return ReferenceHSTURanker.candidate_outputs(self, batch, candidates, w.view(B, C, N))
            return ReferenceHSTURanker.candidate_outputs(self, flat, cand, w).reshape(B, C, -1)
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


class ReferenceMTGR(MTGR):
    """``mtgr`` with ``MTGRLayer``."""

    Config = MTGR.Config

    def __init__(self, cfg: Config, num_items: int, max_len: int) -> None:
        nn.Module.__init__(self)
        self._check(cfg, num_items, max_len)
        self.cfg, self.num_items, self.max_len = cfg, num_items, max_len
        d = cfg.d_model
        dqk = cfg.dqk or d // cfg.num_heads
        dv = cfg.dv or d // cfg.num_heads
        di, df = cfg.item_dim or d, cfg.feat_dim
        self.item_emb = nn.Embedding(num_items + 1, di, padding_idx=0)
        self.time_emb = nn.Embedding(cfg.num_time_buckets + 1, df)
        self.action_emb = nn.Embedding(cfg.num_behaviors + 1, df)  # 0 = no action column / padding
        self.seq_mlp = nn.ModuleList([_mlp(di + 2 * df, d), _mlp(di + 2 * df, d)])  # S, R
        self.profile_emb = nn.Embedding(cfg.profile_buckets + 1, d)  # 0 = missing value
        self.field_emb = nn.Embedding(cfg.max_profile_fields, d)
        self.cat_emb = nn.Embedding(cfg.category_buckets + 1, df)  # 0 = no category
        self.cross_emb = nn.ModuleDict({name: nn.Embedding(v, df) for name, v in CROSS_FEATURES.items()})
        self.cand_mlp = _mlp(di + df + len(CROSS_FEATURES) * df, d)
        for emb in (self.item_emb, self.time_emb, self.action_emb, self.profile_emb, self.field_emb, self.cat_emb,
                    *self.cross_emb.values()):
            nn.init.normal_(emb.weight, std=0.02)
        with torch.no_grad():
            self.item_emb.weight[0].zero_()
        self.input_dropout = nn.Dropout(cfg.dropout)
        self.layers = nn.ModuleList(
            MTGRLayer(d, cfg.num_heads, dqk, dv, cfg.ffn_hidden or d, cfg.linear_dropout, cfg.group_norm)
            for _ in range(cfg.num_layers)
        )
        hidden = cfg.head_hidden or max(1, d // 2)
        self.head = nn.Sequential(nn.LayerNorm(d), nn.Linear(d, hidden), nn.SiLU(), nn.Linear(hidden, 1))

    def candidate_outputs(self, batch: SeqBatch, candidates: torch.Tensor, features: Features = None,
                          candidate_times: torch.Tensor | None = None) -> torch.Tensor:
        """(B, C, D) encoder outputs at the candidate tokens."""
        x, groups, times, real, Fn = self.tokens(batch, candidates, features, candidate_times)
        mask = mtgr_mask(groups, times, real, self.cfg.mask, self.cfg.history_mask)
        norm = (Fn + batch.lengths + 1).to(x.dtype)  # (B,) tokens of one candidate's sample
        weights = mask.to(x.dtype) / norm[:, None, None]
        for layer in self.layers:
            x = layer(x, groups, weights) * real[..., None]
        return x[:, x.shape[1] - candidates.shape[1]:]
