"""GLASS (arXiv 2602.05663): TIGER over a short window, plus two cheap routes into a long history (spec §4).

The history is cut into the short window (the last ``data.max_len`` items, the encoder's SID tokens, exactly
as in TIGER) and the long window before it (up to ``model.long_len`` items, spec A-L7), which is reached only
through:

- **SID-Tier** (§4.4, switch ``sid_tier``): a (level-1 code x similarity tier) histogram of the long window
  (:mod:`genrec.sid.sid_tier`), turned by an MLP into one extra encoder token placed right after the short
  window's tokens. It informs the first SID token and depends only on the long-window items.
- **Semantic hard search with gated fusion** (§4.5, switch ``hard_search``): once ``sid_1`` is known (the
  ground truth in training, each beam's own token in beam search) the most recent ``retrieve_max`` long-window
  items with that code are embedded (sum of their SID-token embeddings + a learned recency bucket, A-L3/A-L4);
  every decoder layer (``gate_layers``, A-L5) attends to them with a second cross-attention and mixes the two
  outputs with a gate ``g = sigmoid([Z_s; Z_r] W_g)`` (or a fixed ``fixed_gate``): ``Z = (1-g) Z_s + g Z_r``
  (``gate_init``, ``gate_temperature``, ``gate_shape``, ``gate_penalty`` keep it unsaturated: :mod:`.glass_gate`).
  The first decoder position (predicting ``sid_1``) has no key and uses ``Z_s`` only.
- **Semantic neighbour augmentation** (§4.6, ``neighbour_codes`` k > 0): a key with fewer than
  ``neighbour_min`` matches also takes items under its k nearest codes (prototype cosine).
- **Mean-pooled long history** (baseline switch ``long_pool``): the long window's item embeddings averaged
  into one more encoder token (the "TIGER + pooled long history" comparison of spec §5.4).

With ``sid_tier``, ``hard_search`` and ``long_pool`` all off (or ``long_len: 0``) the model computes exactly
what TIGER computes. Codebook resizing (§4.6) is a property of the SID table (``sid.first_codebook_size``).

Under bf16 autocast the hard-search branch (the retrieved items' keys/values, their cross-attention and the gate)
still runs in fp32 (:func:`_fp32`): next to 1 bf16 steps by 2^-8, so the saturated learned gate rounds to exactly
1 (0 weight and 0 gradient for ``Z_s``, 0 gradient for the gate: the open interval it is built to stay in is
lost), and the CUDA runs of the hard-search variants hit NaN losses in bf16 that fp32 never did. The branch is
``m`` queries over at most ``retrieve_max`` keys: fp32 there costs little. In fp32 nothing changes.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import nn

from genrec.errors import ConfigError, DataError
from genrec.models.base import GeneratorBatch, SIDLogits
from genrec.models.glass_gate import GateSink, check_gate, gate_penalty, gate_values, learned_gates
from genrec.models.registry import register
from genrec.models.tiger import PAD, TIGER, DecodeState, Encoded, _key_bias
from genrec.models.tiger_layers import Attention, RMSNorm, relative_buckets
from genrec.sid.beam import reorder_tensors
from genrec.sid.codebook import SIDTable
from genrec.sid.hard_search import hard_search, split_history
from genrec.sid.sid_tier import (
    TIER_NORMS,
    bin_dtype,
    code_prototypes,
    cosine_neighbours,
    tier_bins,
    tier_feature_dim,
    tier_features,
    tier_histogram,
)

_TIER_CHUNK = 1 << 22  # (rows x long items x codes) gathered at once when building SID-Tier tables


class GlassInputs(NamedTuple):
    """Everything the model reads about a batch of users; all of it is a function of the two windows."""

    tokens: torch.Tensor  # (B, S) encoder tokens: [user], short-window SID tokens, PAD placeholders for extras
    mask: torch.Tensor  # (B, S) bool
    slots: torch.Tensor  # (B, E) column of each extra token (SID-Tier, pooled history), E may be 0
    tier: torch.Tensor  # (B, K*N + 1) SID-Tier features, or (B, 0) when SID-Tier is off
    long: torch.Tensor  # (B, L) long-window item ids, oldest first, 0 = padding
    long_len: torch.Tensor  # (B,) real items in ``long``


class Retrieved(NamedTuple):
    """Hard-search results of R rows, embedded."""

    emb: torch.Tensor  # (R, M, d)
    mask: torch.Tensor  # (R, M) bool; an empty row keeps slot 0 visible (its gate is forced to 0)
    has: torch.Tensor  # (R,) bool: at least one item was retrieved
    index: torch.Tensor  # (R, M) positions in the long window (-1 = empty)


class GlassState(NamedTuple):
    """Beam-search state. ``long`` / ``long_len`` have one row per user and are never reordered."""

    dec: DecodeState  # TIGER's per-row caches (R rows)
    row_user: torch.Tensor  # (R,) user of each row
    ret_kv: list[tuple[torch.Tensor, torch.Tensor]]  # per fused layer (k, v) of the retrieved items, (R, h, M, dk)
    ret_bias: torch.Tensor  # (R, 1, 1, M) additive key mask of the retrieved items
    ret_has: torch.Tensor  # (R,) bool
    long: torch.Tensor  # (B, L)
    long_len: torch.Tensor  # (B,)


@register("glass")
class GLASS(TIGER):
    """TIGER + SID-Tier token + semantic hard search with gated dual cross-attention."""

    @dataclass
    class Config(TIGER.Config):
        long_len: int = 1000  # long window before the short one (spec A-L7); short window = data.max_len
        sid_tier: bool = True  # SID-Tier token (§4.4)
        num_tiers: int = 20  # N equal similarity bins over [-1, 1] (§4.4 example, §6 item 4)
        tier_norm: str = "fraction"  # fraction | count (A-L2)
        tier_hidden: int = 256  # MLP hidden width (not reported; inferred)
        hard_search: bool = True  # semantic hard search + gated fusion (§4.5)
        retrieve_max: int = 64  # M most recent matches (A-L4)
        recency_buckets: int = 32  # learned recency embedding over T5-style log buckets (A-L4)
        gate: str = "learned"  # learned | fixed (§4.5, Fig. 4)
        fixed_gate: float = 0.5  # the gate value when gate = fixed
        gate_init: str = "default"  # default | zero (W_g and its bias zero: g = 0.5 at the first step)
        gate_temperature: float = 1.0  # g = sigmoid(logit / tau); tau > 1 flattens the sigmoid
        gate_shape: str = "dim"  # dim (Linear(2d, d), the spec's) | token (Linear(2d, 1): one g per position)
        gate_penalty: float = 0.0  # lambda * mean (logit / tau)^2 over the used gates, added to the mean loss
        gate_layers: str = "all"  # all | last decoder layer(s) get the second cross-attention (A-L5)
        neighbour_codes: int = 0  # semantic neighbour augmentation: k nearest codes; 0 = off (A-L6: k = 3)
        neighbour_min: int = 4  # ... used when fewer than tau exact matches (A-L6: tau = 4)
        long_pool: bool = False  # baseline: mean-pooled long history as one extra encoder token

    def __init__(self, cfg: Config, num_items: int, max_len: int = 50) -> None:
        super().__init__(cfg, num_items, max_len)
        _check(cfg)
        d, c = cfg.d_model, cfg.codebook_size
        self.short_len = max_len
        self.max_len = max_len + cfg.long_len  # the history the model asks for: short + long window
        self.num_extra = int(cfg.sid_tier) + int(cfg.long_pool)
        self.tier_mlp = nn.Sequential(nn.Linear(tier_feature_dim(c, cfg.num_tiers), cfg.tier_hidden), nn.ReLU(),
                                      nn.Dropout(cfg.dropout), nn.Linear(cfg.tier_hidden, d)) if cfg.sid_tier else None
        self.pool_proj = nn.Linear(d, d) if cfg.long_pool else None
        n_dec = cfg.num_decoder_layers
        self.fused = list(range(n_dec)) if cfg.gate_layers == "all" else [n_dec - 1]
        self.gates: nn.ModuleList | None = None  # learned gates exist with hard search only (and gate "learned")
        if cfg.hard_search:
            self.ret_attn = nn.ModuleList(Attention(d, cfg.num_heads, cfg.head_dim, cfg.dropout) for _ in self.fused)
            self.gates = learned_gates(cfg, len(self.fused)) if cfg.gate == "learned" else None
            self.recency = nn.Embedding(cfg.recency_buckets, d)
            self.match_type = nn.Embedding(2, d)  # 0 = exact level-1 match, 1 = semantic neighbour
            self.ret_norm = RMSNorm(d, cfg.norm_eps)
        rows = num_items + 1 if cfg.sid_tier else 1
        self.register_buffer("tier_bins", torch.zeros(rows, c, dtype=bin_dtype(cfg.num_tiers)))
        self.register_buffer("code_neighbours", torch.zeros(c, max(cfg.neighbour_codes, 1), dtype=torch.long))
        self.register_buffer("has_vectors", torch.zeros((), dtype=torch.bool))
        self.gate_log: list[torch.Tensor] | None = None  # set to [] to record every gate value (diagnostics)

    # ---- item content (SID-Tier prototypes, neighbour codes) ---------------------------------------------
    @property
    def needs_item_vectors(self) -> bool:
        """Whether :meth:`set_item_vectors` must be called before use (trainers read the embeddings then)."""
        return bool(self.cfg.sid_tier or (self.cfg.hard_search and self.cfg.neighbour_codes > 0))

    def set_sid_table(self, table: SIDTable) -> None:
        super().set_sid_table(table)
        self.has_vectors.fill_(False)  # prototypes belong to a table: install the vectors again

    @torch.no_grad()
    def set_item_vectors(self, item_ids: np.ndarray | torch.Tensor, vectors: torch.Tensor) -> None:
        """Content vectors (N, D) of items ``item_ids`` (N,) -> level-1 prototypes, per-item tiers, neighbours.

        Call after :meth:`set_sid_table`. Only the derived tables are kept (in the weights), not the vectors.
        """
        ids = torch.as_tensor(np.asarray(item_ids.cpu() if isinstance(item_ids, torch.Tensor) else item_ids),
                              dtype=torch.long)
        vec = torch.as_tensor(vectors).float().cpu()
        if vec.ndim != 2 or vec.shape[0] != ids.shape[0]:
            raise DataError(f"glass: need (N, D) vectors for N item ids, got {tuple(vec.shape)} for {len(ids)} ids")
        sids = self.item_sids.cpu()
        with_sid = torch.nonzero((sids[1:] >= 0).all(1)).squeeze(1) + 1  # (n,) items that have a SID
        if with_sid.numel() == 0:
            raise DataError("glass: install the SID table before the item vectors")
        pos = {int(i): k for k, i in enumerate(ids.tolist())}
        missing = [int(i) for i in with_sid.tolist() if int(i) not in pos]
        if missing:
            raise DataError(f"glass: item vectors lack {len(missing)} item(s) of the SID table (e.g. {missing[:5]})")
        x = vec[torch.tensor([pos[int(i)] for i in with_sid.tolist()], dtype=torch.long)]  # (n, D)
        if not torch.isfinite(x).all():
            raise DataError("glass: item vectors contain NaN or infinite values")
        k0 = int(self.code_valid[0].sum())
        protos = code_prototypes(x, sids[with_sid, 0], self.cfg.codebook_size)  # (C, D), zero beyond k0
        dev = self.tier_bins.device
        if self.cfg.sid_tier:
            bins = torch.zeros_like(self.tier_bins, device="cpu")
            bins[with_sid] = tier_bins(x, protos, self.cfg.num_tiers).to(bins.dtype)
            self.tier_bins.copy_(bins.to(dev))
        if self.cfg.hard_search and self.cfg.neighbour_codes > 0:
            near = torch.zeros_like(self.code_neighbours, device="cpu")
            near[:k0] = cosine_neighbours(protos[:k0], self.cfg.neighbour_codes)
            self.code_neighbours.copy_(near.to(dev))
        self.has_vectors.fill_(True)

    def _require_vectors(self) -> None:
        if self.needs_item_vectors and not bool(self.has_vectors):
            raise DataError("glass: SID-Tier / neighbour codes need item content vectors "
                            "(call set_item_vectors after set_sid_table)")

    # ---- inputs -------------------------------------------------------------------------------------------
    def encoder_inputs(self, items: torch.Tensor, users: torch.Tensor | None = None) -> GlassInputs:  # type: ignore[override]
        """(B, T) item ids, oldest first, 0 = padding (right); (B,) user ids -> :class:`GlassInputs`.

        The last ``max_len`` items of ``items`` are read: the short window goes to the encoder as in TIGER,
        the long window (the ``long_len`` items before it) only feeds SID-Tier, pooling and hard search.
        """
        self._require_vectors()
        w = split_history(items.long(), self.short_len, self.cfg.long_len)
        tok, mask = super().encoder_inputs(w.short, users)  # (B, S0)
        tok, mask, slots = _append_slots(tok, mask, self.num_extra)
        b = items.shape[0]
        tier = self.tier_table(w.long) if self.cfg.sid_tier else torch.zeros(b, 0, device=items.device)
        return GlassInputs(tok, mask, slots, tier, w.long, w.long_len)

    def tier_table(self, long: torch.Tensor) -> torch.Tensor:
        """(B, L) long-window items -> (B, K*N + 1) SID-Tier features (a pure function of these items)."""
        b, length = long.shape
        c, n = self.cfg.codebook_size, self.cfg.num_tiers
        step = max(1, _TIER_CHUNK // max(length * c, 1))
        out = []
        valid = (long > 0) & (self.item_sids[long.clamp(0, self.num_items), 0] >= 0)  # (B, L)
        for s in range(0, b, step):  # row chunks bound the (rows, L, K) gather; no per-user loop
            part = long[s:s + step]
            bins = self.tier_bins[part.clamp(0, self.num_items)]  # (b', L, K) small ints
            out.append(tier_histogram(bins, valid[s:s + step], n))
        counts = torch.cat(out) if out else torch.zeros(0, c, n, device=long.device)
        return tier_features(counts, valid.sum(1), self.cfg.tier_norm)

    def item_embeddings(self, items: torch.Tensor) -> torch.Tensor:
        """(...) item ids -> (..., d) sum of the item's SID-token embeddings (shared with the decoder, A-L3)."""
        m, c = self.cfg.sid_length, self.cfg.codebook_size
        codes = self.item_sids[items.clamp(0, self.num_items)]  # (..., m)
        real = (codes >= 0) & (items > 0)[..., None]
        tok = self.sid_offset + torch.arange(m, device=items.device) * c + codes.clamp(min=0)  # (..., m)
        return (self.tokens(tok) * real[..., None].to(self.tokens.weight.dtype)).sum(-2)  # (..., d)

    # ---- network ------------------------------------------------------------------------------------------
    def encode_inputs(self, inp: GlassInputs) -> Encoded:
        """Encoder states of the short window plus the extra tokens (SID-Tier first, then the pooled history)."""
        extras = []
        if self.tier_mlp is not None:
            extras.append(self.tier_mlp(inp.tier))  # (B, d)
        if self.pool_proj is not None:
            emb = self.item_embeddings(inp.long)  # (B, L, d)
            real = (inp.long > 0)[..., None].to(emb.dtype)
            extras.append(self.pool_proj((emb * real).sum(1) / real.sum(1).clamp_min(1.0)))  # (B, d)
        extra = None
        if extras:
            b, s = inp.tokens.shape
            vals = torch.stack(extras, 1)  # (B, E, d)
            extra = vals.new_zeros(b, s, vals.shape[-1]).scatter(1, inp.slots[..., None].expand_as(vals), vals)
        return self.encode(inp.tokens, inp.mask, extra)

    def retrieve(self, long: torch.Tensor, long_len: torch.Tensor, keys: torch.Tensor,
                 row_user: torch.Tensor | None = None) -> Retrieved:
        """Hard search for R rows: (B, L) long windows, (B,) lengths, (R,) level-1 keys, (R,) user of each row."""
        cfg = self.cfg
        if row_user is None:
            row_user = torch.arange(long.shape[0], device=long.device)
        first = self.item_sids[:, 0][long.clamp(0, self.num_items)]  # (B, L) level-1 code, once per user
        codes = torch.where(long > 0, first, torch.full_like(first, -1))[row_user]  # (R, L)
        near = self.code_neighbours if cfg.neighbour_codes > 0 else None
        hs = hard_search(codes, keys, cfg.retrieve_max, near, cfg.neighbour_min)
        items = torch.where(hs.mask, long[row_user[:, None], hs.index.clamp(min=0)], torch.zeros_like(hs.index))
        dist = (long_len[row_user][:, None] - 1 - hs.index).clamp(min=0)  # (R, M) 0 = the newest long-window item
        rec = relative_buckets(-dist, False, cfg.recency_buckets, max(cfg.long_len, 2))
        emb = self.item_embeddings(items) + self.recency(rec) + self.match_type(hs.neighbour.long())
        emb = self.drop(self.ret_norm(emb))  # (R, M, d)
        has = hs.mask.any(1)
        mask = hs.mask.clone()
        mask[:, 0] |= ~has  # an all-masked row would make attention NaN; its gate is zeroed instead
        return Retrieved(emb, mask, has, hs.index)

    def _gate(self, j: int, z_s: torch.Tensor, z_r: torch.Tensor, sink: GateSink | None = None,
              apply: torch.Tensor | None = None) -> torch.Tensor:
        """(R, T, d) both cross-attention outputs -> gate in (0, 1): (R, T, d), (R, T, 1) or a scalar tensor.
        ``sink`` (``gate_penalty``) collects each sigmoid argument with ``apply`` (R|1, T, 1), where it is used."""
        if self.gates is None:
            return z_s.new_tensor(self.cfg.fixed_gate)
        logit, g = gate_values(self.gates[j], z_s, z_r, self.cfg.gate_temperature)  # (R, T, d|1) each
        if sink is not None and apply is not None:
            sink.append((logit, apply))
        if self.gate_log is not None:
            self.gate_log.append(g.detach())
        return g

    def _fuses(self, ret_kv: list[tuple[torch.Tensor, torch.Tensor]], ret_bias: torch.Tensor,
               apply: torch.Tensor, sink: GateSink | None = None) -> list[Any]:
        """One fuse callable per decoder layer; ``apply`` (R|1, T, 1) says where the retrieved branch is used."""
        fuses: list[Any] = [None] * self.cfg.num_decoder_layers
        for j, layer_idx in enumerate(self.fused):
            def fuse(h: torch.Tensor, z_s: torch.Tensor, j: int = j) -> torch.Tensor:
                with _fp32(h):  # the whole branch in fp32, also under autocast (module doc)
                    h, z_s = h.float(), z_s.float()
                    z_r = self.ret_attn[j].attend(h, *ret_kv[j], ret_bias)  # (R, T, d)
                    g = self._gate(j, z_s, z_r, sink, on := apply.to(z_s.dtype)) * on
                    return z_s + g * (z_r - z_s)  # (1 - g) Z_s + g Z_r
            fuses[layer_idx] = fuse
        return fuses

    def _ret_kv(self, ret: Retrieved) -> list[tuple[torch.Tensor, torch.Tensor]]:
        with _fp32(ret.emb):
            return [attn.keys_values(ret.emb.float()) for attn in self.ret_attn]  # per fused layer, (R, h, M, dk)

    def training_inputs(self, batch: GeneratorBatch) -> tuple[GlassInputs, torch.Tensor]:  # type: ignore[override]
        """Histories (short + long window), users and target items -> :class:`GlassInputs` and target SIDs (B, m)."""
        return self.encoder_inputs(batch.items, batch.users), self.item_sids[batch.targets]

    def sid_logits(self, inputs: tuple[GlassInputs, torch.Tensor]) -> SIDLogits:  # type: ignore[override]
        """Teacher forcing as in TIGER, hard search keyed by the true ``sid_1``; ``aux``: the gate penalty x count."""
        inp, target_sids = inputs
        if self.gates is None or self.cfg.gate_penalty == 0:
            return SIDLogits(self.teacher_logits(inp, target_sids), target_sids, None)
        sink: GateSink = []
        logits = self.teacher_logits(inp, target_sids, sink)
        aux = self.cfg.gate_penalty * gate_penalty(sink, logits) * target_sids.numel()
        return SIDLogits(logits, target_sids, None, aux)

    def teacher_logits(self, inp: GlassInputs, target_sids: torch.Tensor,
                       sink: GateSink | None = None) -> torch.Tensor:
        """Teacher forcing: (B, m) target SIDs -> (B, m, C) logits of every SID position (``sink``: see _gate)."""
        enc = self.encode_inputs(inp)
        dec_input = self.decoder_inputs(target_sids[:, :-1])  # (B, m)
        fuses = None
        if self.cfg.hard_search and target_sids.shape[1] > 1:
            ret = self.retrieve(inp.long, inp.long_len, target_sids[:, 0])
            pos = torch.arange(dec_input.shape[1], device=dec_input.device)
            apply = (pos[None, :] >= 1) & ret.has[:, None]  # (B, T): no key before sid_1 is known
            fuses = self._fuses(self._ret_kv(ret), _key_bias(ret.mask), apply[..., None], sink)
        return self.decode(enc, dec_input, fuses)

    # ---- incremental decoding -----------------------------------------------------------------------------
    def step_fn(self, *inputs: torch.Tensor):  # type: ignore[override]
        """Encode once and return ``(step, initial_state)`` for :func:`genrec.sid.beam.beam_search`."""
        inp = GlassInputs(*inputs)
        dec = self.initial_state(self.encode_inputs(inp))
        b = inp.tokens.shape[0]
        dev = inp.tokens.device
        state = GlassState(dec, torch.arange(b, device=dev), [], torch.zeros(b, 1, 1, 0, device=dev),
                           torch.zeros(b, dtype=torch.bool, device=dev), inp.long, inp.long_len)
        return self.step, state

    def step(self, codes: torch.Tensor, state: GlassState) -> tuple[torch.Tensor, GlassState]:  # type: ignore[override]
        """(R, t) codes so far -> (R, C) logits of SID position t; hard search runs once, when t == 1."""
        t = codes.shape[1]
        fuses = None
        if self.cfg.hard_search and t >= 1:
            if t == 1:  # sid_1 of every row is now known: search and cache the retrieved keys/values
                ret = self.retrieve(state.long, state.long_len, codes[:, 0], state.row_user)
                state = state._replace(ret_kv=self._ret_kv(ret), ret_bias=_key_bias(ret.mask), ret_has=ret.has)
            fuses = self._fuses(state.ret_kv, state.ret_bias, state.ret_has[:, None, None])
        logits, dec = TIGER.step(self, codes, state.dec, fuses)
        return logits, state._replace(dec=dec)

    def reorder_state(self, state: Any, rows: torch.Tensor) -> Any:
        """Reorder the per-row parts of the state; the per-user long windows stay as they are."""
        if not isinstance(state, GlassState):
            return reorder_tensors(state, rows)
        return GlassState(reorder_tensors(state.dec, rows), state.row_user[rows], reorder_tensors(state.ret_kv, rows),
                          state.ret_bias[rows], state.ret_has[rows], state.long, state.long_len)


def _fp32(x: torch.Tensor) -> AbstractContextManager:
    """Autocast off on ``x``'s device (a no-op when it was not on)."""
    return torch.autocast(x.device.type, enabled=False)


def _append_slots(tok: torch.Tensor, mask: torch.Tensor, extra: int
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(B, S) tokens/mask -> (B, S+E) with E visible PAD placeholders right after each row's last real token."""
    b, s = tok.shape
    dev = tok.device
    if extra == 0:
        return tok, mask, torch.zeros(b, 0, dtype=torch.long, device=dev)
    last = torch.where(mask, torch.arange(s, device=dev)[None, :], torch.full_like(tok, -1)).max(1).values  # (B,)
    slots = last[:, None] + 1 + torch.arange(extra, device=dev)[None, :]  # (B, E)
    tok = torch.cat([tok, torch.full((b, extra), PAD, dtype=tok.dtype, device=dev)], 1)
    mask = torch.cat([mask, torch.zeros(b, extra, dtype=torch.bool, device=dev)], 1)
    tok = tok.scatter(1, slots, PAD)  # the slots may sit on earlier padding: make sure they read PAD
    mask = mask.scatter(1, slots, True)
    return tok, mask, slots


def _check(cfg: GLASS.Config) -> None:
    """Clear errors for settings the model cannot honour."""
    if cfg.long_len < 0:
        raise ConfigError(f"model.long_len must be >= 0, got {cfg.long_len}")
    if cfg.num_tiers < 1:
        raise ConfigError(f"model.num_tiers must be >= 1, got {cfg.num_tiers}")
    if cfg.tier_norm not in TIER_NORMS:
        raise ConfigError(f"model.tier_norm '{cfg.tier_norm}' is not one of {list(TIER_NORMS)}")
    if cfg.tier_hidden < 1 or cfg.retrieve_max < 1 or cfg.recency_buckets < 2:
        raise ConfigError("model: tier_hidden and retrieve_max must be >= 1, recency_buckets >= 2")
    check_gate(cfg)
    if cfg.neighbour_codes < 0 or cfg.neighbour_min < 0:
        raise ConfigError("model.neighbour_codes and model.neighbour_min must be >= 0")
    if cfg.neighbour_codes >= cfg.codebook_size:
        raise ConfigError(f"model.neighbour_codes={cfg.neighbour_codes} must be below the codebook size "
                          f"{cfg.codebook_size}")
    if cfg.neighbour_codes > 0 and not cfg.hard_search:
        raise ConfigError("model.neighbour_codes augments the hard search: set model.hard_search: true")
    if cfg.num_decoder_layers < 1 and cfg.hard_search:
        raise ConfigError("model.hard_search needs at least one decoder layer")
