"""TIGER (Rajput et al., NeurIPS 2023): recommend by generating the next item's semantic id.

A T5-style encoder-decoder reads ``[user token, SID tokens of the last <= max_len items]`` and decodes the
next item's SID one position at a time (spec §2.2-2.3). Design points:

- **One vocabulary, disjoint ranges.** ``PAD = 0``, ``BOS = 1``, then SID position ``p`` code ``c`` is token
  ``2 + p * codebook_size + c`` (so ``c_1 = 5`` and ``c_2 = 5`` are different tokens, as in the paper's
  per-level namespaces), then the hashed user buckets.
- **Per-position output slices.** The decoder's logits at step ``t`` cover only the codes of SID position
  ``t`` (``(B, codebook_size)``), with codes beyond that position's codebook masked to ``-inf``. Training and
  beam search therefore normalise over the same set, which is what ``genrec.sid.beam`` expects.
- **The SID table lives in the weights.** ``item_sids`` (a persistent buffer) maps item id -> SID, so a
  checkpoint can only be reloaded with the table it was trained on, and ``generate`` needs nothing else.
- **T5 details kept:** pre-norm RMSNorm blocks without biases, bucketed relative position bias shared across
  the layers of a stack (bidirectional in the encoder, causal in the decoder), ReLU feed-forward, dropout on
  embeddings, residual branches, attention weights and the final stack outputs.
- **Incremental decoding.** ``step_fn`` caches every decoder layer's self-attention keys/values (per beam row,
  reordered by ``beam_search``) and the cross-attention keys/values of the encoder output, once per user: the
  beams of a user are one attention over that user's memory (``beam_memory: shared``), where copying the
  memory for every beam and step (``per_row``, the original path, kept as the reference) cost most of a search.
  The two agree to float rounding (about 1e-6 in the scores), not bit for bit.
- **Training kernels** (``kernels``): ``reference`` or ``fused`` (see :mod:`genrec.models.tiger_layers`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import nn

from genrec.data.sequences import pad_windows
from genrec.errors import ConfigError, DataError
from genrec.models.base import Generator, GeneratorBatch, SIDLogits
from genrec.models.registry import register
from genrec.models.tiger_layers import (
    DecoderLayer,
    Dropout,
    EncoderLayer,
    Fuse,
    MaskedBias,
    RMSNorm,
    check_kernels,
    relative_buckets,
    set_fused,
    stacked_keys_values,
)
from genrec.sid.beam import BeamResult, beam_search, beams_per_user, list_length, reorder_tensors
from genrec.sid.codebook import SIDTable
from genrec.sid.trie import SIDTrie

PAD = 0
BOS = 1
NUM_SPECIAL = 2
BEAM_MEMORY = ("shared", "per_row")
_HASH_MULT = 2654435761  # Knuth's multiplicative hash constant; spreads consecutive user ids over buckets


class Encoded(NamedTuple):
    """Encoder output for a batch of users; the step function's initial state is built from it."""

    memory: torch.Tensor  # (B, S, d) final encoder states
    mask: torch.Tensor  # (B, S) bool, True on real tokens


class UserMemory:
    """Cross-attention keys/values of the encoder memory, one row per user: a plain object, so beam reordering
    (:func:`~genrec.sid.beam.reorder_tensors`) passes it through instead of copying it for every beam."""

    def __init__(self, cross: list[tuple[torch.Tensor, torch.Tensor]], bias: torch.Tensor) -> None:
        self.cross = cross  # per layer (k, v), each (B, h, S, dk)
        self.bias = bias  # (B, 1, 1, S) 0 on real memory tokens, -inf on padding


class DecodeState(NamedTuple):
    """Per-row decoding state; the tensors lead with the row dim (B, then B*beam) for beam reordering."""

    memory: UserMemory  # per user, never reordered
    row_user: torch.Tensor  # (R,) the user of each row
    cache: list[tuple[torch.Tensor, torch.Tensor]]  # per layer self-attention (k, v), each (R, h, t, dk)


@register("tiger")
class TIGER(Generator):
    """Encoder-decoder generator over semantic ids."""

    @dataclass
    class Config:
        d_model: int = 128
        num_encoder_layers: int = 4
        num_decoder_layers: int = 4
        num_heads: int = 6
        head_dim: int = 64  # attention inner width = num_heads * head_dim (384), independent of d_model
        d_ff: int = 1024
        dropout: float = 0.1
        activation: str = "relu"  # relu (paper) | gelu
        norm_eps: float = 1e-6
        codebook_size: int = 256  # token range per SID position; every level (collision level too) must fit
        sid_length: int = 4  # m: 3 RQ-VAE levels + the collision level
        num_user_buckets: int = 2000  # hashed user token; 0 = no user token (the paper's ablation)
        relative_buckets: int = 32  # T5 relative position bias
        relative_max_distance: int = 128
        tie_embeddings: bool = False  # score codes with the (scaled) input token embeddings, as T5 v1.0 does
        kernels: str = "reference"  # training kernels: reference | fused (cheap dropout masks, fewer passes)
        beam_memory: str = "shared"  # shared: beams read their user's encoder memory | per_row: copy it per beam

    def __init__(self, cfg: Config, num_items: int, max_len: int = 20) -> None:
        super().__init__()
        if cfg.sid_length < 1 or cfg.codebook_size < 1:
            raise ConfigError("model: sid_length and codebook_size must be >= 1")
        if cfg.num_user_buckets < 0:
            raise ConfigError("model.num_user_buckets must be >= 0")
        if cfg.beam_memory not in BEAM_MEMORY:
            raise ConfigError(f"model.beam_memory: '{cfg.beam_memory}' is not one of {list(BEAM_MEMORY)}")
        self.cfg = cfg
        self.num_items = num_items
        self.max_len = max_len
        m, c = cfg.sid_length, cfg.codebook_size
        self.sid_offset = NUM_SPECIAL
        self.user_offset = NUM_SPECIAL + m * c
        self.vocab_size = self.user_offset + cfg.num_user_buckets
        self.tokens = nn.Embedding(self.vocab_size, cfg.d_model)
        self.enc_rel = nn.Embedding(cfg.relative_buckets, cfg.num_heads)
        self.dec_rel = nn.Embedding(cfg.relative_buckets, cfg.num_heads)
        self.encoder = nn.ModuleList(EncoderLayer(cfg) for _ in range(cfg.num_encoder_layers))
        self.decoder = nn.ModuleList(DecoderLayer(cfg) for _ in range(cfg.num_decoder_layers))
        self.enc_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.dec_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.fused_kernels = check_kernels(cfg)  # (GLASS's ``fused`` names its gated layers)
        self.drop = Dropout(cfg.dropout, self.fused_kernels)
        self.head = None if cfg.tie_embeddings else nn.Linear(cfg.d_model, m * c, bias=False)
        # item id -> SID (-1 = no SID; row 0 is padding) and which codes exist at each position
        self.register_buffer("item_sids", torch.full((num_items + 1, m), -1, dtype=torch.long))
        self.register_buffer("code_valid", torch.ones(m, c, dtype=torch.bool))
        self._trie: SIDTrie | None = None
        set_fused(self, self.fused_kernels)  # the final norms too

    @property
    def user_token(self) -> bool:
        """Whether the encoder reads a hashed user token (``num_user_buckets > 0``)."""
        return self.cfg.num_user_buckets > 0

    # ---- SID table --------------------------------------------------------------------------------------
    def set_sid_table(self, table: SIDTable) -> None:
        """Install the item -> SID map this model is trained on (stored in the weights)."""
        c = self.cfg.codebook_size
        self.item_sids.copy_(table.item_code_matrix(self.num_items, self.cfg.sid_length, c, "tiger"))  # (I+1, m)
        valid = torch.arange(c)[None, :] < torch.as_tensor(table.codebook_sizes)[:, None]  # (m, C)
        self.code_valid.copy_(valid)
        self._trie = None

    def _load_from_state_dict(self, *args: Any, **kwargs: Any) -> None:
        super()._load_from_state_dict(*args, **kwargs)
        self._trie = None  # the SID buffers may have changed

    def trie(self) -> SIDTrie:
        """The prefix trie of every item's SID (built once per table and device)."""
        dev = self.item_sids.device
        if self._trie is None or self._trie.device != dev:
            has = (self.item_sids >= 0).all(1)
            if not bool(has.any()):
                raise DataError("tiger: no SID table installed (call set_sid_table first)")
            sizes = tuple(int(s) for s in self.code_valid.sum(1).tolist())
            ids = torch.nonzero(has).squeeze(1)
            self._trie = SIDTrie.from_codes(self.item_sids[ids].cpu(), ids.cpu(), sizes).to(dev)
        return self._trie

    # ---- inputs -----------------------------------------------------------------------------------------
    def user_tokens(self, users: torch.Tensor) -> torch.Tensor:
        """(B,) raw user ids -> (B,) user-bucket tokens (hashing trick over ``num_user_buckets``)."""
        bucket = (users.long() * _HASH_MULT) % (2**32) % self.cfg.num_user_buckets
        return self.user_offset + bucket

    def encoder_inputs(self, items: torch.Tensor, users: torch.Tensor | None = None
                       ) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, L) item ids, oldest first, 0 = padding; (B,) user ids -> tokens, mask (B, S), S = [1 +] L*m.

        Items without a SID are masked out. A row with nothing to read keeps one PAD token visible so
        attention never sees an all-masked row.
        """
        b, length = items.shape
        m, c = self.cfg.sid_length, self.cfg.codebook_size
        codes = self.item_sids[items.clamp(0, self.num_items)]  # (B, L, m)
        real = (items > 0)[..., None] & (codes >= 0)  # (B, L, m)
        tok = self.sid_offset + torch.arange(m, device=items.device) * c + codes.clamp(min=0)  # (B, L, m)
        tok = torch.where(real, tok, torch.full_like(tok, PAD)).reshape(b, length * m)
        mask = real.reshape(b, length * m)
        if self.cfg.num_user_buckets > 0:
            u = torch.zeros(b, dtype=torch.long, device=items.device) if users is None else users.to(items.device)
            tok = torch.cat([self.user_tokens(u)[:, None], tok], 1)
            mask = torch.cat([torch.ones(b, 1, dtype=torch.bool, device=items.device), mask], 1)
        if tok.shape[1] == 0:
            tok = torch.full((b, 1), PAD, dtype=torch.long, device=items.device)
            mask = torch.zeros(b, 1, dtype=torch.bool, device=items.device)
        empty = ~mask.any(1)
        mask[:, 0] = mask[:, 0] | empty
        return tok, mask

    def decoder_inputs(self, sids: torch.Tensor) -> torch.Tensor:
        """(B, t) codes of the first t SID positions -> (B, t+1) decoder tokens ``[BOS, tok(c_1), ..., tok(c_t)]``."""
        b, t = sids.shape
        c = self.cfg.codebook_size
        tok = self.sid_offset + torch.arange(t, device=sids.device) * c + sids  # (B, t)
        return torch.cat([torch.full((b, 1), BOS, dtype=torch.long, device=sids.device), tok], 1)

    # ---- network ----------------------------------------------------------------------------------------
    def _rel_bias(self, table: nn.Embedding, q_pos: torch.Tensor, k_pos: torch.Tensor, bidirectional: bool
                  ) -> torch.Tensor:
        """(T,), (S,) positions -> (1, h, T, S) learned bias."""
        rel = k_pos[None, :] - q_pos[:, None]  # (T, S)
        b = relative_buckets(rel, bidirectional, self.cfg.relative_buckets, self.cfg.relative_max_distance)
        return table(b).permute(2, 0, 1)[None]

    def encode(self, enc_tokens: torch.Tensor, enc_mask: torch.Tensor, extra: torch.Tensor | None = None
               ) -> Encoded:
        """(B, S) tokens and mask -> encoder states (B, S, d).

        ``extra`` (B, S, d), optional, is added to the token embeddings: GLASS writes its continuous SID-Tier
        token into a placeholder slot this way.
        """
        s = enc_tokens.shape[1]
        pos = torch.arange(s, device=enc_tokens.device)
        bias = self._rel_bias(self.enc_rel, pos, pos, True)  # (1, h, S, S)
        if self.fused_kernels and self.training:  # padded keys are filled in place, per layer
            padded = None if bool(enc_mask.all()) else ~enc_mask[:, None, None, :]  # (B, 1, 1, S)
            bias = MaskedBias(bias, padded)
        else:
            bias = bias + _key_bias(enc_mask)  # (B, h, S, S)
        emb = self.tokens(enc_tokens)  # (B, S, d)
        x = self.drop(emb if extra is None else emb + extra.to(emb.dtype))  # (B, S, d)
        for layer in self.encoder:
            x = layer(x, bias)
        return Encoded(self.drop(self.enc_norm(x)), enc_mask)

    def _logits(self, h: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """(B, T, d) decoder outputs at SID positions ``positions`` (T,) -> (B, T, C) code logits."""
        m, c = self.cfg.sid_length, self.cfg.codebook_size
        if self.head is None:
            w = self.tokens.weight[self.sid_offset:self.user_offset].view(m, c, -1)[positions]  # (T, C, d)
            logits = torch.einsum("btd,tcd->btc", h * self.cfg.d_model ** -0.5, w)
        else:
            w = self.head.weight.view(m, c, -1)[positions]  # (T, C, d)
            logits = torch.einsum("btd,tcd->btc", h, w)
        return logits.masked_fill(~self.code_valid[positions][None], float("-inf"))

    def decode(self, enc: Encoded, dec_input: torch.Tensor, fuses: Sequence[Fuse | None] | None = None
               ) -> torch.Tensor:
        """Teacher forcing: (B, T) decoder tokens (T <= m) -> (B, T, C) logits of SID positions 0..T-1.

        ``fuses`` (optional, one entry per decoder layer) is handed to each layer (see ``DecoderLayer``).
        """
        t = dec_input.shape[1]
        if t > self.cfg.sid_length:
            raise ConfigError(f"tiger: decoder input of length {t} exceeds sid_length {self.cfg.sid_length}")
        pos = torch.arange(t, device=dec_input.device)
        causal = torch.ones(t, t, dtype=torch.bool, device=dec_input.device).tril()
        self_bias = self._rel_bias(self.dec_rel, pos, pos, False).masked_fill(~causal, float("-inf"))
        cross_bias = _key_bias(enc.mask)  # (B, 1, 1, S)
        x = self.drop(self.tokens(dec_input))  # (B, T, d)
        if self.fused_kernels and self.training and len(self.decoder):  # one norm and one q/k/v matmul per self-attention
            cross = stacked_keys_values([layer.cross_attn for layer in self.decoder], enc.memory)
            for i, layer in enumerate(self.decoder):
                x = layer(x, None, self_bias, cross[i], cross_bias, None if fuses is None else fuses[i])
            return self._logits(self.drop(self.dec_norm(x)), pos)
        for i, layer in enumerate(self.decoder):
            h = layer.norm1(x)
            x = layer(x, layer.self_attn.keys_values(h), self_bias, layer.cross_attn.keys_values(enc.memory),
                      cross_bias, None if fuses is None else fuses[i])
        return self._logits(self.drop(self.dec_norm(x)), pos)

    def forward(self, enc_tokens: torch.Tensor, enc_mask: torch.Tensor, dec_input: torch.Tensor) -> torch.Tensor:
        """(B, S) encoder tokens + mask, (B, T) decoder tokens -> (B, T, C) logits (teacher forcing)."""
        return self.decode(self.encode(enc_tokens, enc_mask), dec_input)

    def training_inputs(self, batch: GeneratorBatch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Histories (B, L), users (B,) and target items (B,) -> encoder tokens (B, S), mask (B, S), target SIDs (B, m)."""
        return (*self.encoder_inputs(batch.items, batch.users), self.item_sids[batch.targets])

    def sid_logits(self, inputs: tuple[torch.Tensor, torch.Tensor, torch.Tensor]) -> SIDLogits:
        """Teacher forcing: (B, m, C) logits of every SID position and the (B, m) target codes."""
        enc_tokens, enc_mask, target_sids = inputs
        logits = self(enc_tokens, enc_mask, self.decoder_inputs(target_sids[:, :-1]))  # (B, m, C)
        return SIDLogits(logits, target_sids, None)

    # ---- incremental decoding ---------------------------------------------------------------------------
    def initial_state(self, enc: Encoded) -> DecodeState:
        """Decoding state for B users: cross-attention keys/values computed once, empty self-attention caches."""
        b = enc.memory.shape[0]
        h, dk = self.cfg.num_heads, self.cfg.head_dim
        empty = enc.memory.new_zeros(b, h, 0, dk)
        cross = [layer.cross_attn.keys_values(enc.memory) for layer in self.decoder]
        return DecodeState(UserMemory(cross, _key_bias(enc.mask)), torch.arange(b, device=enc.memory.device),
                           [(empty, empty) for _ in self.decoder])

    def row_memory(self, state: DecodeState) -> tuple[list[tuple[torch.Tensor, torch.Tensor]], torch.Tensor]:
        """Cross keys/values and key bias for the state's R rows: the users' own when each user's rows are one
        consecutive run of equal length (beam search; :meth:`Attention.attend` groups the queries), else a
        copy per row (``beam_memory: per_row``, or rows in another order)."""
        mem, users = state.memory, state.row_user
        g = beams_per_user(users, mem.bias.shape[0])
        if g is not None and (g == 1 or self.cfg.beam_memory == "shared"):
            return mem.cross, mem.bias
        return [(k[users], v[users]) for k, v in mem.cross], mem.bias[users]

    def step(self, codes: torch.Tensor, state: DecodeState, fuses: Sequence[Fuse | None] | None = None
             ) -> tuple[torch.Tensor, DecodeState]:
        """``beam_search`` step: (R, t) codes decoded so far -> (R, C) logits of SID position t, new state.

        Only the newest decoder token is run; earlier positions come from the cache (which must hold t rows
        of keys/values, i.e. the state returned by the previous call, reordered by the search).
        """
        r, t = codes.shape
        if t >= self.cfg.sid_length:
            raise ConfigError(f"tiger: asked for SID position {t} of {self.cfg.sid_length}")
        if t == 0:
            tok = torch.full((r, 1), BOS, dtype=torch.long, device=codes.device)
        else:
            tok = self.sid_offset + (t - 1) * self.cfg.codebook_size + codes[:, -1:]  # (R, 1)
        dev = codes.device
        self_bias = self._rel_bias(self.dec_rel, torch.tensor([t], device=dev), torch.arange(t + 1, device=dev),
                                   False)  # (1, h, 1, t+1)
        cross, cross_bias = self.row_memory(state)
        x = self.drop(self.tokens(tok))  # (R, 1, d)
        cache = []
        for i, (layer, (k_old, v_old), kv_mem) in enumerate(zip(self.decoder, state.cache, cross)):
            k_new, v_new = layer.self_attn.keys_values(layer.norm1(x))  # (R, h, 1, dk)
            kv = (torch.cat([k_old, k_new], 2), torch.cat([v_old, v_new], 2))  # (R, h, t+1, dk)
            cache.append(kv)
            x = layer(x, kv, self_bias, kv_mem, cross_bias, None if fuses is None else fuses[i])
        logits = self._logits(self.drop(self.dec_norm(x)), torch.tensor([t], device=dev))[:, 0]  # (R, C)
        return logits, DecodeState(state.memory, state.row_user, cache)

    def step_fn(self, enc_tokens: torch.Tensor, enc_mask: torch.Tensor):
        """Encode once and return ``(step, initial_state)`` for :func:`genrec.sid.beam.beam_search`."""
        return self.step, self.initial_state(self.encode(enc_tokens, enc_mask))

    def reorder_state(self, state: Any, rows: torch.Tensor) -> Any:
        """Keep the rows of the surviving beams (every cached tensor leads with the row dim)."""
        return reorder_tensors(state, rows)

    # ---- recommendation ---------------------------------------------------------------------------------
    def history_tensor(self, histories: Sequence[Sequence[int] | np.ndarray] | torch.Tensor) -> torch.Tensor:
        """Item-id histories (oldest first) -> (B, L) left-aligned, zero-padded, last ``max_len`` items kept.

        A tensor is taken to be such a padded batch already.
        """
        if isinstance(histories, torch.Tensor):  # already padded by the caller: used as is
            return histories.long().to(self.item_sids.device)
        return torch.from_numpy(pad_windows(histories, self.max_len)[0]).to(self.item_sids.device)

    @torch.no_grad()
    def generate(self, histories: Sequence[Sequence[int] | np.ndarray] | torch.Tensor,
                 users: Sequence[int] | np.ndarray | torch.Tensor | None = None, beam_size: int = 20,
                 k: int | None = None, constrained: bool = True) -> BeamResult:
        """Top-``k`` next items (``k <= beam_size``) per history via (trie-constrained) beam search.

        Returns a ``BeamResult`` cut to ``k`` beams: ``items`` (B, k) (-1 = invalid SID), ``scores`` (B, k)
        summed log-probabilities, ``sids`` (B, k, m), ``valid``. ``users`` are raw user ids for the hashed
        user token (None = bucket of user 0).
        """
        k = list_length(k, beam_size, "tiger.generate")
        was_training = self.training
        self.eval()
        try:
            items = self.history_tensor(histories)  # (B, L)
            u = None if users is None else torch.as_tensor(np.asarray(users), dtype=torch.long)
            step, state = self.step_fn(*self.encoder_inputs(items, u))  # subclasses may return more inputs
            res = beam_search(step, self.trie(), items.shape[0], beam_size, state, constrained,
                              self.reorder_state)
        finally:
            self.train(was_training)
        return res.top(k)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


def _key_bias(mask: torch.Tensor) -> torch.Tensor:
    """(B, S) bool key mask -> (B, 1, 1, S) additive bias: 0 where visible, -inf where padded."""
    zero = torch.zeros(mask.shape, dtype=torch.float32, device=mask.device)
    return zero.masked_fill(~mask, float("-inf"))[:, None, None, :]
