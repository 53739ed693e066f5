"""GAMER's incremental decoding: prefill the prompt once, then one token per SID position for every beam.

Split from :mod:`genrec.models.gamer` (which re-exports ``DecodeState``); :class:`Decoding` is a mixin of
:class:`~genrec.models.gamer.GAMER`. Two states, one ``step``:

- ``SharedState`` (``model.beam_memory: shared``, the default): the prompt's keys/values stay one row per
  user for the whole search, in a plain object (:class:`PrefixCache`) that beam reordering passes through; only
  the generated tokens' keys/values (at most ``m - 1`` per row) have B*beam rows. Each generated token attends
  to [its user's prompt keys, read by grouping the user's beam rows (no copy) ; its own beam's generated keys]
  (:func:`~genrec.models.gamer_layers.split_attention`). The prompt is about a hundred tokens and the generated
  part 1-3, so the per-step copies of the per-row state (reorder, cache concatenation, key heads repeated for
  grouped-query attention) are gone.
- ``DecodeState`` (``beam_memory: per_row``, or ``step_fn(prompts, shared=False)``): every row carries the
  whole cache, reordered and extended every step. The original path, kept as the reference the shared one is
  tested against; the two return the same beams, the scores equal to fp32 rounding (exactly equal in float64).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

import torch

from genrec.errors import ConfigError, DataError
from genrec.models.gamer_layers import LayerInputs, SplitKV
from genrec.nn.rope import rope_cos_sin
from genrec.sid.beam import beams_per_user

BEAM_MEMORY = ("shared", "per_row")  # model.beam_memory, as TIGER's

if TYPE_CHECKING:
    from genrec.models.gamer import GAMER


class DecodeState(NamedTuple):
    """Per-row decoding state; every tensor leads with the row dim so beam search can reorder it."""

    caches: list[tuple[torch.Tensor, ...]]  # per layer (k, v[, k_cross, v_cross]) each (R, kvh, S, dk)
    key_real: torch.Tensor  # (R, S)
    key_level: torch.Tensor  # (R, S)
    next_pos: torch.Tensor  # (R,) RoPE position of the next token
    behavior: torch.Tensor  # (R,) behavior id being generated
    logits: torch.Tensor  # (R, V) next-token logits, already divided by the temperature


class PrefixCache:
    """The prompt's part of the decoding state, one row per user: a plain object, so beam reordering
    (:func:`~genrec.sid.beam.reorder_tensors`) passes it through instead of copying it for every beam."""

    def __init__(self, caches: list[tuple[torch.Tensor, ...]], self_allowed: torch.Tensor,
                 cross_allowed: torch.Tensor, next_pos: torch.Tensor, behavior: torch.Tensor) -> None:
        self.caches = caches  # per layer (k, v[, k_cross, v_cross]) each (B, kvh, S, dk)
        self.self_allowed = self_allowed  # (B, S) the real prompt tokens
        self.cross_allowed = cross_allowed  # (B, S) real prompt tokens of a level below the generated behavior's
        self.next_pos = next_pos  # (B,) RoPE position of the first generated token
        self.behavior = behavior  # (B,) behavior id being generated

    def rows(self, users: torch.Tensor) -> PrefixCache:
        """A copy with one row per entry of ``users`` (R,): for rows that are not runs per user."""
        return PrefixCache([tuple(x[users] for x in c) for c in self.caches], self.self_allowed[users],
                           self.cross_allowed[users], self.next_pos[users], self.behavior[users])


class SharedState(NamedTuple):
    """Shared-prefix decoding state: the tensors lead with the row dim (B, then B*beam) for beam reordering."""

    prefix: PrefixCache  # per user, never reordered
    row_user: torch.Tensor  # (R,) the user of each row
    generated: list[tuple[torch.Tensor, ...]]  # per layer (k, v[, k_cross, v_cross]) each (R, kvh, t, dk)
    logits: torch.Tensor | None  # (R, V) next-token logits / temperature; None once ``step`` has read them


class Decoding:
    """KV-cached decoding of :class:`~genrec.models.gamer.GAMER` (a mixin: it reads the model's layers)."""

    def prefill(self: GAMER, prompts: torch.Tensor) -> DecodeState:
        """Run left-padded prompts (B, T) ending with a behavior token; cache every layer's keys/values."""
        h, route, caches = self.hidden(prompts)
        last = prompts[:, -1]
        if bool(((last < self.beh_offset) | (last >= self.sid_offset)).any()):
            raise DataError("gamer: every prompt must end with a behavior token (left-pad the prompts)")
        logits = self.logits(h[:, -1]) / self.cfg.temperature  # (B, V)
        return DecodeState(caches, route.real, route.level, route.positions[:, -1] + 1, route.behavior[:, -1],
                           logits)

    def shared_state(self: GAMER, st: DecodeState) -> SharedState:
        """A prefilled per-row state (B rows, one per user) as the shared-prefix state of those B users."""
        level = self.behavior_levels[st.behavior][:, None]  # (B, 1)
        prefix = PrefixCache(st.caches, st.key_real, st.key_real & (st.key_level < level), st.next_pos, st.behavior)
        empty = [tuple(x[:, :, :0] for x in c) for c in st.caches]  # (B, kvh, 0, dk) each
        return SharedState(prefix, torch.arange(st.logits.shape[0], device=st.logits.device), empty, st.logits)

    def _token_inputs(self: GAMER, codes: torch.Tensor, p: int, next_pos: torch.Tensor, behavior: torch.Tensor,
                      self_allowed: torch.Tensor | None, cross_allowed: torch.Tensor | None
                      ) -> tuple[torch.Tensor, LayerInputs]:
        """The code chosen for SID position ``p`` (R,) as a token (R, 1) and its layer inputs."""
        tok = (self.sid_offset + p * self.cfg.codebook_size + codes.long())[:, None]  # (R, 1)
        beh = behavior[:, None] + 1  # (R, 1)
        cos, sin = rope_cos_sin(next_pos[:, None], self.cfg.head_dim, self.cfg.rope_theta)
        return tok, LayerInputs(cos, sin, beh, beh, torch.full_like(tok, p + 2), self_allowed, cross_allowed)

    def _advance(self: GAMER, codes: torch.Tensor, p: int, st: DecodeState) -> DecodeState:
        """Feed the code chosen for SID position ``p`` (R,) and compute the logits of position ``p + 1``."""
        r = codes.shape[0]
        level = self.behavior_levels[st.behavior][:, None]  # (R, 1)
        key_real = torch.cat([st.key_real, torch.ones(r, 1, dtype=torch.bool, device=codes.device)], 1)  # (R, S)
        key_level = torch.cat([st.key_level, level], 1)
        self_allowed = key_real[:, None, :]  # (R, 1, S): every cached real key and itself
        cross_allowed = (key_real & (key_level < level))[:, None, :]  # (R, 1, S)
        tok, li = self._token_inputs(codes, p, st.next_pos, st.behavior, self_allowed, cross_allowed)
        x = self.tokens(tok)  # (R, 1, d)
        caches = []
        for layer, past in zip(self.layers, st.caches):
            x, cache, _ = layer(x, li, past)
            caches.append(cache)
        logits = self.logits(self.norm(x)[:, 0]) / self.cfg.temperature  # (R, V)
        return DecodeState(caches, key_real, key_level, st.next_pos + 1, st.behavior, logits)

    def _advance_shared(self: GAMER, codes: torch.Tensor, p: int, st: SharedState) -> SharedState:
        """``_advance`` on the shared state: the prompt's keys stay per user, the new token's are appended per row."""
        users, pre = st.row_user, st.prefix
        tok, li = self._token_inputs(codes, p, pre.next_pos[users] + p, pre.behavior[users], None, None)
        if beams_per_user(users, pre.next_pos.shape[0]) is None:  # rows in another order: a prefix per row
            pre = pre.rows(users)
        x = self.tokens(tok)  # (R, 1, d)
        generated = []
        for layer, own, past in zip(self.layers, pre.caches, st.generated):
            split = tuple(SplitKV(own[i], own[i + 1], pre.self_allowed if i == 0 else pre.cross_allowed, past[i],
                                  past[i + 1], i == 0) for i in range(0, len(own), 2))  # self[, cross-level]
            x, cache, _ = layer(x, li, split)
            generated.append(tuple(t for kv in cache for t in (kv.k, kv.v)))  # (R, kvh, t+1, dk) each
        logits = self.logits(self.norm(x)[:, 0]) / self.cfg.temperature  # (R, V)
        return SharedState(st.prefix, users, generated, logits)

    def position_logits(self: GAMER, logits: torch.Tensor, t: int) -> torch.Tensor:
        """(R, V) full-vocabulary logits -> (R, C + 1): codes of SID position ``t`` + log-sum-exp of the rest."""
        c = self.cfg.codebook_size
        lo = self.sid_offset + t * c
        rest = logits.float().clone()
        rest[:, lo:lo + c] = float("-inf")
        return torch.cat([logits[:, lo:lo + c].float(), torch.logsumexp(rest, dim=1, keepdim=True)], dim=1)

    def step(self: GAMER, codes: torch.Tensor, state: DecodeState | SharedState
             ) -> tuple[torch.Tensor, DecodeState | SharedState]:
        """``beam_search`` step: (R, t) codes so far -> (R, C + 1) scores of SID position t, new state."""
        t = codes.shape[1]
        if t >= self.cfg.sid_length:
            raise ConfigError(f"gamer: asked for SID position {t} of {self.cfg.sid_length}")
        if isinstance(state, SharedState):
            if t > 0:
                state = self._advance_shared(codes[:, -1], t - 1, state)
            assert state.logits is not None, "gamer: a shared state's logits are read once, by the step after it"
            return self.position_logits(state.logits, t), state._replace(logits=None)  # nothing (R, V) to reorder
        if t > 0:
            state = self._advance(codes[:, -1], t - 1, state)
        return self.position_logits(state.logits, t), state

    def step_fn(self: GAMER, prompts: torch.Tensor, shared: bool | None = None):
        """Prefill the prompts and return ``(step, initial_state)`` for :func:`genrec.sid.beam.beam_search`;
        ``shared`` (default: ``model.beam_memory == "shared"``) False gives the per-row reference state."""
        st = self.prefill(prompts)
        if shared is None:
            shared = self.cfg.beam_memory == "shared"
        return self.step, self.shared_state(st) if shared else st
