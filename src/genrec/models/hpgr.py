"""HPGR stage 2: the preference-aware ranker (``HPGRRanker``, registered as ``"hpgr"``).

HPGR (arXiv 2603.00980); the paper's method section is not public, this follows the reconstruction of
spec_hpgr_hstu_mtgr.md §5.3(c)-(e): the HSTU ranker of ``hstu_ranker.py`` initialised from the stage-1
item table, with Preference-Guided Sparse Attention (``genrec.nn.sparse``) in every layer and, optionally,
the frozen stage-1 SEM's session-aware event vectors. Stage 1 (the SEM) is in ``hpgr_sem.py``; its public
names are re-exported here.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from genrec.data.sequences import SeqBatch
from genrec.errors import ConfigError
from genrec.models.hpgr_sem import (  # noqa: F401  (re-exported)
    MASK_ID,
    Encoder,
    SEMOutput,
    SessionEncoder,
    SessionLayout,
    TransformerLayer,
    intra_session_mask,
    session_layout,
)
from genrec.models.hstu_ranker import ColumnMask, HSTURanker
from genrec.models.pretrained import Pretrained, PretrainedSettings, check_stage1, model_stage1, stage1_sem
from genrec.models.registry import register
from genrec.nn.cross_features import Features, per_candidate_rows
from genrec.nn.hstu_block import DenseAttention, HSTUBlock
from genrec.nn.jagged import Packing
from genrec.nn.sparse import IMPLS, ROWS, WINDOWS, PGSAAttention, kept_columns, pgsa_relevance, pgsa_weights


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


def pgsa_layer(layer: HSTUBlock, x: torch.Tensor, weights: torch.Tensor, lengths: torch.Tensor,
               norm_len: int, rows: str = "all", impl: str = "gather") -> torch.Tensor:
    """One ranker layer with PGSA instead of its dense masked attention: x (B, N+1, D) -> (B, N+1, D).

    x: history in slots 0..N-1 and one candidate in slot N; weights: (B, N) PGSA column weights.
    """
    return layer(x, PGSAAttention(weights, lengths, norm_len, rows, impl))


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


RELEVANCE = ("table", "sem")  # model.relevance: what the candidate is compared with (see HPGRRanker.relevance)


class _PacksWith:
    """``packs`` as its settings decide (the model's, or the class defaults'), as a ``ConfigCapability``: the dense
    ranker (``pgsa=false``) and PGSA's gathered all-rows layers have a packed path, the other PGSA variants not."""

    def __get__(self, model: HPGRRanker | None, owner: type) -> bool:
        cfg = owner.Config() if model is None else model.cfg
        return not cfg.pgsa or (cfg.impl == "gather" and cfg.rows == "all")


@register("hpgr")
class HPGRRanker(HSTURanker):
    """HPGR stage 2: the target-aware HSTU ranker, pre-trained item table, PGSA in every layer.

    Same API as :class:`HSTURanker` (``score`` (B, C) logits, ``score_candidates``), plus a stage-1 table.
    Each (user, candidate) pair gets its own pass, because the PGSA mask depends on the candidate.
    Relevance ``r_j = <Ê[c], Ê[i_j]>`` comes from a frozen copy of the pre-trained table
    (``freeze_relevance``), or from the ranker's own table, detached, when there is no pre-training (a
    frozen *random* table would pick random anchors) or ``freeze_relevance=False``. Top-K never passes
    gradients either way. ``model.cross_features`` (the HSTU ranker's switch) adds the candidate cross features to
    the candidate token only; the relevance and the PGSA selection still read item ids alone.
    """

    accepts_pretrained = True
    packs = _PacksWith()  # type: ignore[assignment]

    @dataclass
    class Config(HSTURanker.Config, PretrainedSettings):
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
        relevance: str = "table"  # r_j by <Ê[c], Ê[i_j]> ("table") or by <Ê[c], u_j> of the SEM ("sem", as use_sem)

    @classmethod
    def check_config(cls, cfg: Config) -> None:
        """The option checks that need no data, so a two-stage run refuses a bad value before stage 1."""
        for name, value, options in (("impl", cfg.impl, IMPLS), ("rows", cfg.rows, ROWS),
                                     ("window", cfg.window, WINDOWS), ("relevance", cfg.relevance, RELEVANCE)):
            if value not in options:
                raise ConfigError(f"hpgr: model.{name} must be one of {list(options)}, got {value!r}")
        if cfg.top_k < 1 or cfg.sigma < 0 or not 0 < cfg.eps < 1:
            raise ConfigError(f"hpgr: need model.top_k >= 1, sigma >= 0, 0 < eps < 1 "
                              f"(got {cfg.top_k}, {cfg.sigma}, {cfg.eps})")
        if cfg.relevance == "sem" and not cfg.use_sem:
            raise ConfigError("hpgr: model.relevance='sem' reads the frozen SEM's event vectors; it needs "
                              "model.use_sem=true")
        if cfg.pgsa and cfg.attn_dropout > 0:
            raise ConfigError("hpgr: PGSA attention has no score dropout; set model.attn_dropout=0")

    def __init__(self, cfg: Config, num_items: int, max_len: int) -> None:
        self.check_config(cfg)
        super().__init__(cfg, num_items, max_len)
        self.cfg: HPGRRanker.Config = cfg
        self.sem: SessionEncoder | None = None
        self.sem_proj: nn.Linear | None = None
        self.session_rule: tuple[int | None, int | None] = (None, None)  # stage 1's (gap, cap), for the SEM
        if cfg.pretrained:
            self._build_stage1_parts(num_items, max_len)

    def _build_stage1_parts(self, num_items: int, max_len: int) -> None:
        """The parts that follow from ``model.stage1``: the frozen SEM and ``W_sem`` (``use_sem``), or the frozen
        relevance table; their values come from the artifact (:meth:`init_from_pretrained`) or the weights."""
        s1 = model_stage1(self.cfg, num_items, "hpgr")
        sem = stage1_sem(s1)  # (also built without use_sem: the random draws of earlier versions, see stage1_sem)
        dp = s1.sem.d_model
        if self.cfg.use_sem:
            if not sem.cfg.use_sessions and max_len > sem.max_len:
                raise ConfigError(f"hpgr: the session-free pre-trained encoder holds {sem.max_len} positions, "
                                  f"data.max_len is {max_len}; raise pretrain.max_len or set model.use_sem=false")
            sem.requires_grad_(False)
            self.sem = sem.eval()
            self.sem_proj = nn.Linear(dp, self.cfg.d_model, bias=False)
            nn.init.zeros_(self.sem_proj.weight)  # at init the model is the SEM-free one
            self.session_rule = (s1.session_gap, s1.max_session_len)
        if self.cfg.freeze_relevance and self.sem is None:
            self.register_buffer("relevance_table", torch.zeros(num_items + 1, dp))  # (I+1, Dp) frozen Ê

    def init_from_pretrained(self, pre: Pretrained) -> None:
        """Start from the stage-1 artifact: the item table (fitted to ``d_model``), the SEM, the relevance table.

        Called by the trainer once, when a run starts fresh; a reopened run has them in its weights.
        """
        check_stage1(pre, self.cfg, "hpgr")
        table = pre.item_table  # (I+1, Dp)
        with torch.no_grad():
            self.item_emb.weight.copy_(fit_table(table, self.cfg.d_model))
            if self.sem is not None:
                self.sem.load_state_dict(pre.sem.state_dict())
            elif self.cfg.freeze_relevance:
                self.relevance_table.copy_(table)

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

    def relevance(self, batch: SeqBatch, candidates: torch.Tensor, sem: torch.Tensor | None = None) -> torch.Tensor:
        """(B, N) relevance of each history item to the candidate (B,); -inf on padding; no gradient.

        ``relevance="sem"`` scores the candidate's pre-trained vector against the SEM's event vector u_j instead
        of the event's own item vector: MIM trained u_j to predict an item from its session, so the same item
        read in two sessions can rank differently (spec §5.4 #8). ``sem``: the (B, N, Dp) event vectors, if at hand.
        """
        vectors = None
        if self.cfg.relevance == "sem" and self.sem is not None:  # without stage 1 there is no SEM (as use_sem)
            vectors = self.sem_features(batch) if sem is None else sem  # (B, N, Dp)
        return pgsa_relevance(self.relevance_source(), candidates, batch.items, batch.lengths,
                              history_vectors=vectors).detach()

    def column_weights(self, batch: SeqBatch, candidates: torch.Tensor, sem: torch.Tensor | None = None
                       ) -> torch.Tensor:
        """(B, N) PGSA column weights for one candidate (B,) per row (``sem``: as :meth:`relevance`)."""
        c = self.cfg
        return pgsa_weights(self.relevance(batch, candidates, sem), batch.lengths, c.top_k, c.sigma, c.eps,
                            c.window, c.sigma_r)

    @torch.no_grad()
    def sem_features(self, batch: SeqBatch, packed: bool = False) -> torch.Tensor:
        """(B, N, Dp) frozen SEM event vectors u_j of the history window (zeros on padding); ``packed``: the SEM
        computed on packed tokens (:meth:`SessionEncoder.packed_events`), laid back out (B, N)."""
        assert self.sem is not None
        sids = window_sessions(batch.timestamps, batch.lengths, *self.session_rule) if self.sem.cfg.use_sessions \
            else None
        if not packed:
            return self.sem(batch.items, batch.timestamps, sids, batch.lengths).events
        events, valid = self.sem.packed_events(batch.items, batch.timestamps, sids, batch.lengths)  # (Te, Dp)
        return events.new_zeros(*valid.shape, events.shape[-1]).index_put_((valid,), events)

    def embed(self, batch: SeqBatch, candidates: torch.Tensor, sem: torch.Tensor | None = None,
              features: Features = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The ranker's inputs, plus ``W_sem u_j`` on the history tokens when the SEM is used."""
        x, real = super().embed(batch, candidates, features)  # (B, N+C, D), (B, N+C)
        if self.sem is None:
            return x, real
        assert self.sem_proj is not None
        N = batch.items.shape[1]
        sem = self.sem_features(batch) if sem is None else sem  # (B, N, Dp)
        hist = x[:, :N] + self.sem_proj(sem.to(x.dtype)) * real[:, :N, None]
        return torch.cat([hist, x[:, N:]], dim=1), real

    def candidate_outputs(self, batch: SeqBatch, candidates: torch.Tensor, column_mask: ColumnMask = None,
                          features: Features = None) -> torch.Tensor:
        """(B, C, D) encoder outputs at the candidates, PGSA in every layer (one mask for all layers).

        impl="dense": the ranker's own masked attention with the PGSA weights as its ``column_mask``.
        impl="gather", rows="all": only the K' kept history tokens and the candidate are run through the
        layers. Exact, because the mask is the same in every layer: a dropped column is never read, so
        its row can never reach the candidate. Cost per layer O(K'^2 d + K' d^2) instead of O(N^2 d + N d^2).
        impl="gather", rows="candidate": causal history pass plus the candidate row on its kept columns.
        """
        if not self.cfg.pgsa:
            return super().candidate_outputs(batch, candidates, column_mask, features)
        if column_mask is not None:
            raise ValueError("hpgr: PGSA builds its own column mask; pass column_mask only with model.pgsa=false")
        cfg = self.cfg
        B, N = batch.items.shape
        C = candidates.shape[1]
        flat, cand = _per_candidate(batch, candidates)  # (B*C, N), (B*C, 1): the mask depends on the candidate
        sem = None
        if self.sem is not None:
            sem = self.sem_features(batch)  # (B, N, Dp), once per user, not per candidate
            sem = sem.repeat_interleave(C, dim=0) if C > 1 else sem
        w = self.column_weights(flat, cand[:, 0], sem)  # (B*C, N)
        flat_features = per_candidate_rows(features, C)  # (B*C, 1) each, as the candidates
        if cfg.impl == "dense":
            if cfg.rows == "candidate":  # history rows are candidate-free: one shared pass
                return super().candidate_outputs(batch, candidates, w.view(B, C, N), features)
            return super().candidate_outputs(flat, cand, w, flat_features).reshape(B, C, -1)
        x, real = self.embed(flat, cand, sem, flat_features)  # (B*C, N+1, D)
        if cfg.rows == "candidate":
            attention = PGSAAttention(w, flat.lengths, self.max_len, "candidate", "gather")
            for layer in self.layers:
                x = layer(x, attention) * real[..., None]
            return x[:, N].reshape(B, C, -1)
        idx, colw = kept_columns(w)  # (B*C, K'+1), slot N (the candidate) last with weight 1
        xg = x.gather(1, idx[..., None].expand(-1, -1, x.shape[-1]))  # (B*C, K'+1, D)
        keep = colw > 0
        keep[:, -1] = real[:, N]
        causal = idx[:, None, :] <= idx[:, :, None]  # by original slot
        mask = (causal & keep[:, :, None] & keep[:, None, :]).to(x.dtype) * colw[:, None, :]  # (B*C, K'+1, K'+1)
        attention = DenseAttention(mask, self.max_len)
        for layer in self.layers:
            xg = layer(xg, attention) * keep[..., None]
        return xg[:, -1].reshape(B, C, -1)

    # -- packed path (train.packed) ---------------------------------------------------------------
    def token_inputs(self, batch: SeqBatch, candidates: torch.Tensor, src: torch.Tensor, features: Features = None,
                     sem: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The ranker's packed inputs plus ``W_sem u_j`` on the history tokens (as :meth:`embed`)."""
        x, slot, real = super().token_inputs(batch, candidates, src, features)  # (T, D), (T,), (T,)
        if self.sem is None:
            return x, slot, real
        assert self.sem_proj is not None
        N, C = batch.items.shape[1], candidates.shape[1]
        sem = self.sem_features(batch, packed=True) if sem is None else sem  # (B, N, Dp), the frozen SEM
        at = torch.nonzero(slot < N).squeeze(1)  # packed history tokens
        u = sem.reshape(-1, sem.shape[-1]).index_select(0, (src // (N + C)).index_select(0, at) * N
                                                         + slot.index_select(0, at))  # (Th, Dp)
        return x.index_copy(0, at, x.index_select(0, at) + self.sem_proj(u.to(x.dtype))), slot, real

    def packed_candidate_outputs(self, batch: SeqBatch, candidates: torch.Tensor,
                                 features: Features = None) -> torch.Tensor:
        """(B, C, D) :meth:`candidate_outputs` on packed tokens: with PGSA (gathered, all rows) each pass packs
        its kept history columns and its candidate, so neither the batch's padding nor the slots of columns other
        rows keep are computed; the relevance still reads the padded (B, N) window (a gather, no layer)."""
        if not self.cfg.pgsa:
            return super().packed_candidate_outputs(batch, candidates, features)
        if not self.packs:
            raise ConfigError("train.packed: hpgr packs PGSA's gathered path with rows=all only "
                              f"(model.impl={self.cfg.impl!r}, model.rows={self.cfg.rows!r})")
        B, N = batch.items.shape
        C = candidates.shape[1]
        flat, cand = _per_candidate(batch, candidates)  # (B*C, N), (B*C, 1)
        sem = None
        if self.sem is not None:
            sem = self.sem_features(batch, packed=True)  # (B, N, Dp), once per user
            sem = sem.repeat_interleave(C, dim=0) if C > 1 else sem
        w = self.column_weights(flat, cand[:, 0], sem)  # (B*C, N)
        keep = w > 0
        kept = keep.sum(1)  # (B*C,)
        packing = Packing.of(kept + 1, N + 1)  # tokens per pass: its kept columns, then its candidate
        row, pos = packing.index // (N + 1), packing.positions  # (T,) each
        cols = torch.nonzero(keep)[:, 1]  # (Th,) kept columns, row by row, ascending
        hist = pos < kept.index_select(0, row)
        if len(cols):
            at = ((torch.cumsum(kept, 0) - kept).index_select(0, row) + pos).clamp(max=len(cols) - 1)
            slot = torch.where(hist, cols.index_select(0, at), torch.full_like(pos, N))
        else:
            slot = torch.full_like(pos, N)
        src = row * (N + 1) + slot  # (T,) slot in the padded (B*C, N+1) layout
        x, slot, real = self.token_inputs(flat, cand, src, per_candidate_rows(features, C), sem)
        weights = torch.cat([w, torch.ones_like(w[:, :1])], 1).reshape(-1).index_select(0, src)  # (T,) key weights
        x = self.packed_layers(x, packing, slot, real, N, weights.to(x.dtype))
        return x[slot >= N].view(B, C, -1)
