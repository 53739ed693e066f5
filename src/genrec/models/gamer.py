"""GAMER (arXiv 2511.03155): a decoder-only generator over multi-behavior semantic-id sequences.

Layout (spec §3.3): every interaction is ``<behavior_b> c_1 ... c_m``, so ``P = m + 1`` tokens per
interaction; no BOS, no user token. The prompt for "the next item with behavior b" ends with ``<behavior_b>``
and the model generates the ``m`` SID tokens. Architecture (spec §3.4, the authors' ``Qwen3Multi``):

- pre-norm layers: grouped-query self-attention (per-head RMSNorm on q/k, RoPE, plain causal mask);
- **cross-level interaction layer** in the top ``cross_layers`` layers: a second attention in which token
  ``t`` reads only earlier tokens ``s`` of *strictly lower* behavior level (``s <= t, λ(s) < λ(t)``);
  per-behavior embeddings are added to every head's q, k and v, and the output is gated by
  ``SiLU(W_g z)``;
- **position-routed SwiGLU experts** in every layer (one per position in the interaction: pad, behavior
  token, SID level 1..m); in the bottom ``injection_layers`` layers the expert input is
  ``[RMSNorm(h); E[behavior]]`` (behavior injection);
- tied input/output embeddings over the whole vocabulary; next-token cross-entropy on SID tokens only,
  logits divided by ``temperature``.

**Masking defect (spec A-G1).** Tokens of the lowest level have no admissible key in the cross-level layer.
The released code adds ``finfo.min`` to every masked logit, which turns such a row into a *uniform*
average over every position, future ones included. By default their cross-level output is zero instead;
``released_mask=True`` reproduces the released behaviour for comparison.

**Beam scores.** The model is trained with a softmax over the full vocabulary. ``step`` returns the
codes of SID position ``t`` plus one extra column holding the log-sum-exp of every other token, so the
beam search's ``log_softmax`` yields exactly the full-vocabulary log-probabilities (the extra column
lies outside every codebook and is masked afterwards). Decoding uses the trained distribution
(``logits / temperature``). Beams share their user's prompt keys/values (:mod:`genrec.models.gamer_decode`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from genrec.data.sequences import pad_windows
from genrec.errors import ConfigError, DataError
from genrec.models.base import MULTI_BEHAVIOR, Generator, GeneratorBatch, SIDLogits
from genrec.models.gamer_decode import (  # noqa: F401  (DecodeState re-exported: it used to live here)
    BEAM_MEMORY,
    DecodeState,
    Decoding,
    PrefixCache,
    SharedState,
)
from genrec.models.gamer_layers import (  # noqa: F401  (re-exported: the layer pieces used to live here)
    Attention,
    Layer,
    LayerInputs,
    Route,
    cross_level_mask,
    masked_attention,
    rope_positions,
    self_mask,
    visible,
)
from genrec.models.registry import register
from genrec.models.tiger_layers import RMSNorm
from genrec.nn.rope import rope_cos_sin
from genrec.sid.beam import BeamResult, beam_search, list_length, with_known_items
from genrec.sid.codebook import SIDTable
from genrec.sid.trie import SIDTrie

PAD = 0
NUM_SPECIAL = 1
LEVEL_PAD = 100  # level of padding: above every behavior, so no token reads a pad in the cross-level layer


@register("gamer")
class GAMER(Decoding, Generator):
    """Decoder-only multi-behavior generator over semantic ids."""

    protocol = MULTI_BEHAVIOR
    needs_behavior_levels = True

    @dataclass
    class Config:
        d_model: int = 256
        num_layers: int = 8
        num_heads: int = 6
        num_kv_heads: int = 3  # grouped-query attention: num_heads / num_kv_heads queries share a key head
        head_dim: int = 64  # also the width of the per-head behavior embeddings of the cross-level layer
        d_ff: int = 512
        dropout: float = 0.2  # residual branches, attention weights and expert hidden units
        norm_eps: float = 1e-6
        rope_theta: float = 1_000_000.0
        cross_layers: int = 4  # the top layers with a cross-level interaction layer (0 = ablation)
        injection_layers: int = 4  # the bottom layers whose experts read a behavior embedding (0 = ablation)
        behavior_dim: int = 64
        position_experts: bool = True  # one feed-forward expert per position in the interaction
        released_mask: bool = False  # reproduce the released code's uniform rows in the cross-level layer
        temperature: float = 0.7  # logits / temperature in the loss and in decoding
        num_behaviors: int = 4
        codebook_size: int = 256  # token range per SID position; every level (collision level too) must fit
        sid_length: int = 4  # m
        beam_memory: str = "shared"  # shared: beams read their user's prompt keys/values | per_row: copy them per beam

    def __init__(self, cfg: Config, num_items: int, max_len: int = 50) -> None:
        super().__init__()
        if cfg.num_heads % cfg.num_kv_heads:
            raise ConfigError(f"model.num_heads {cfg.num_heads} must be a multiple of num_kv_heads {cfg.num_kv_heads}")
        if not 0 <= cfg.cross_layers <= cfg.num_layers or not 0 <= cfg.injection_layers <= cfg.num_layers:
            raise ConfigError(f"model.cross_layers / injection_layers must lie in 0..num_layers ({cfg.num_layers})")
        if cfg.sid_length < 1 or cfg.codebook_size < 1 or cfg.num_behaviors < 1:
            raise ConfigError("model: sid_length, codebook_size and num_behaviors must be >= 1")
        if cfg.temperature <= 0 or cfg.head_dim % 2:
            raise ConfigError("model: temperature must be > 0 and head_dim even (RoPE)")
        if cfg.beam_memory not in BEAM_MEMORY:
            raise ConfigError(f"model.beam_memory: '{cfg.beam_memory}' is not one of {list(BEAM_MEMORY)}")
        self.cfg = cfg
        self.num_items = num_items
        self.max_len = max_len  # history window in interactions
        nb, m, c = cfg.num_behaviors, cfg.sid_length, cfg.codebook_size
        self.beh_offset = NUM_SPECIAL
        self.sid_offset = NUM_SPECIAL + nb
        self.vocab_size = self.sid_offset + m * c
        self.tokens = nn.Embedding(self.vocab_size, cfg.d_model)
        self.layers = nn.ModuleList(
            Layer(cfg, cross=i >= cfg.num_layers - cfg.cross_layers, inject=i < cfg.injection_layers)
            for i in range(cfg.num_layers))
        self.norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.register_buffer("item_sids", torch.full((num_items + 1, m), -1, dtype=torch.long))
        self.register_buffer("behavior_levels", torch.arange(nb, dtype=torch.long))
        self._tries: dict[tuple[str, str], SIDTrie] = {}
        self.last_attention: list[dict[str, Any]] | None = None
        self.apply(_init_weights)

    # ---- tables -------------------------------------------------------------------------------------
    def set_sid_table(self, table: SIDTable) -> None:
        """Install the item -> SID map (stored in the weights)."""
        self.item_sids.copy_(table.item_code_matrix(self.num_items, self.cfg.sid_length, self.cfg.codebook_size,
                                                    "gamer"))  # (I+1, m)
        self._tries = {}

    def set_behavior_levels(self, levels: Sequence[int] | np.ndarray) -> None:
        """Level of each behavior id (the dataset's order, or an override); stored in the weights."""
        lv = torch.as_tensor(np.asarray(levels), dtype=torch.long)
        if lv.shape != (self.cfg.num_behaviors,):
            raise ConfigError(f"gamer: {lv.numel()} behavior levels for model.num_behaviors={self.cfg.num_behaviors}")
        if int(lv.max()) >= LEVEL_PAD or int(lv.min()) < 0:
            raise ConfigError(f"gamer: behavior levels must lie in 0..{LEVEL_PAD - 1}")
        self.behavior_levels.copy_(lv)

    def _load_from_state_dict(self, *args: Any, **kwargs: Any) -> None:
        super()._load_from_state_dict(*args, **kwargs)
        self._tries = {}

    def trie(self, candidates: np.ndarray | Sequence[int] | None = None) -> SIDTrie:
        """Prefix trie over the SIDs of ``candidates`` (default: every item with a SID), cached per set."""
        dev = self.item_sids.device
        has = (self.item_sids >= 0).all(1)
        has[0] = False
        if candidates is None:
            ids = torch.nonzero(has).squeeze(1).cpu()
        else:
            ids = torch.as_tensor(np.unique(np.asarray(candidates, dtype=np.int64)))
            if ids.numel() == 0 or int(ids.min()) < 1 or int(ids.max()) > self.num_items:
                raise DataError(f"gamer: candidate items must be a non-empty subset of 1..{self.num_items}")
            if not bool(has.cpu()[ids].all()):
                raise DataError("gamer: some candidate items have no SID")
        key = (hashlib.sha1(ids.numpy().tobytes()).hexdigest(), str(dev))
        if key not in self._tries:
            if ids.numel() == 0:
                raise DataError("gamer: no SID table installed (call set_sid_table first)")
            sizes = (self.cfg.codebook_size,) * self.cfg.sid_length
            self._tries[key] = SIDTrie.from_codes(self.item_sids.cpu()[ids], ids, sizes).to(dev)
        return self._tries[key]

    # ---- token layout -------------------------------------------------------------------------------
    def interaction_tokens(self, items: torch.Tensor, behaviors: torch.Tensor) -> torch.Tensor:
        """(B, L) item ids (0 = none) and behavior ids -> (B, L*P) tokens ``<b> c_1 .. c_m`` per interaction."""
        b, length = items.shape
        m, c = self.cfg.sid_length, self.cfg.codebook_size
        codes = self.item_sids[items.clamp(0, self.num_items)]  # (B, L, m)
        real = (items > 0) & (codes >= 0).all(-1)  # (B, L)
        sid_tok = self.sid_offset + torch.arange(m, device=items.device) * c + codes.clamp(min=0)  # (B, L, m)
        beh_tok = (self.beh_offset + behaviors.long())[..., None]  # (B, L, 1)
        tok = torch.cat([beh_tok, sid_tok], dim=-1)  # (B, L, P)
        tok = torch.where(real[..., None], tok, torch.full_like(tok, PAD))
        return tok.reshape(b, length * (m + 1))

    def prompt_tokens(self, items: torch.Tensor, behaviors: torch.Tensor, behavior: int | torch.Tensor
                      ) -> torch.Tensor:
        """Histories (B, L) (oldest first, 0 = none) + the evaluated behavior -> (B, T) left-padded prompts.

        Every prompt ends with ``<behavior>``; the history keeps its last ``max_len`` interactions.
        """
        tok = self.interaction_tokens(items, behaviors)  # (B, L*P)
        b = tok.shape[0]
        beh = torch.as_tensor(behavior, device=tok.device).long().expand(b)
        if int(beh.min()) < 0 or int(beh.max()) >= self.cfg.num_behaviors:
            raise ConfigError(f"gamer: behavior ids must lie in 0..{self.cfg.num_behaviors - 1}")
        tok = torch.cat([tok, (self.beh_offset + beh)[:, None]], dim=1)  # (B, L*P + 1)
        order = torch.argsort((tok != PAD).long(), dim=1, stable=True)  # pads first, real tokens in order
        tok = torch.gather(tok, 1, order)
        keep = self.max_len * (self.cfg.sid_length + 1) + 1  # whole interactions + the behavior token
        return tok[:, -keep:]

    def route(self, tokens: torch.Tensor, segment: torch.Tensor | None = None) -> Route:
        """Side information of every token of (B, T) token rows (layout ``<b> c_1..c_m`` repeated)."""
        m, c = self.cfg.sid_length, self.cfg.codebook_size
        real = tokens != PAD
        is_beh = (tokens >= self.beh_offset) & (tokens < self.sid_offset)
        pos = torch.where(is_beh, torch.ones_like(tokens),
                          torch.where(tokens >= self.sid_offset, (tokens - self.sid_offset) // c + 2,
                                      torch.zeros_like(tokens)))
        t = tokens.shape[1]
        idx = torch.arange(t, device=tokens.device).expand_as(tokens)
        last_beh = torch.cummax(torch.where(is_beh, idx, torch.full_like(idx, -1)), dim=1).values  # (B, T)
        beh = torch.gather(tokens, 1, last_beh.clamp(min=0)) - self.beh_offset
        beh = torch.where(real & (last_beh >= 0), beh, torch.full_like(beh, -1))
        level = torch.where(beh >= 0, self.behavior_levels[beh.clamp(min=0)], torch.full_like(beh, LEVEL_PAD))
        seg = torch.zeros_like(tokens) if segment is None else segment.long()
        positions = rope_positions(real, seg)
        if bool((pos > m + 1).any()):
            raise DataError("gamer: token ids beyond the SID vocabulary")
        return Route(pos, beh, level, positions, real, seg)

    # ---- network ------------------------------------------------------------------------------------
    def _inputs(self, route: Route, self_allowed: torch.Tensor, cross_allowed: torch.Tensor) -> LayerInputs:
        cos, sin = rope_cos_sin(route.positions, self.cfg.head_dim, self.cfg.rope_theta)
        return LayerInputs(cos, sin, route.beh_att, route.beh_ffn, route.pos_in_item, self_allowed, cross_allowed)

    def hidden(self, tokens: torch.Tensor, segment: torch.Tensor | None = None, need_weights: bool = False
               ) -> tuple[torch.Tensor, Route, list[tuple[torch.Tensor, ...]]]:
        """(B, T) tokens -> final states (B, T, d), the route and every layer's keys/values."""
        route = self.route(tokens, segment)
        li = self._inputs(route, self_mask(route), cross_level_mask(route))
        x = self.tokens(tokens)  # (B, T, d)
        caches, weights = [], []
        for layer in self.layers:
            x, cache, w = layer(x, li, None, need_weights)
            caches.append(cache)
            weights.append(w)
        self.last_attention = weights if need_weights else None
        return self.norm(x), route, caches

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        """(..., d) states -> (..., V) logits over the whole vocabulary (tied embeddings), not yet / τ."""
        return h @ self.tokens.weight.T

    def forward(self, tokens: torch.Tensor, segment: torch.Tensor | None = None,
                need_weights: bool = False) -> torch.Tensor:
        """(B, T) tokens -> (B, T, V) next-token logits (teacher forcing), divided by the temperature."""
        h, _, _ = self.hidden(tokens, segment, need_weights)
        return self.logits(h) / self.cfg.temperature

    def training_inputs(self, batch: GeneratorBatch) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Interaction windows (B, L) of items and behaviors (0 = none) -> tokens (B, L*P) and, for validation
        branches, the (B, L*P) segment of every token (``batch.segments`` repeated over each interaction)."""
        assert batch.behaviors is not None, "gamer: training batches carry behaviors"
        tokens = self.interaction_tokens(batch.items, batch.behaviors)
        seg = None if batch.segments is None else batch.segments.repeat_interleave(self.cfg.sid_length + 1, dim=1)
        return tokens, seg

    def sid_logits(self, inputs: tuple[torch.Tensor, torch.Tensor | None]) -> SIDLogits:
        """Next-token logits (B, T-1, V) of every token, trained on SID tokens only (behavior tokens and padding are
        not targets; a validation branch's first token is not predicted from the previous branch)."""
        tokens, segment = inputs
        logits = self(tokens, segment)[:, :-1]  # (B, T-1, V)
        target = tokens[:, 1:]  # (B, T-1)
        use = target >= self.sid_offset
        if segment is not None:
            use = use & ((segment[:, 1:] == segment[:, :-1]) | (segment[:, :-1] == 0))
        return SIDLogits(logits, target, use)

    # ---- recommendation -----------------------------------------------------------------------------
    def history_tensors(self, items: Sequence[Sequence[int] | np.ndarray] | torch.Tensor,
                        behaviors: Sequence[Sequence[int] | np.ndarray] | torch.Tensor
                        ) -> tuple[torch.Tensor, torch.Tensor]:
        """Histories as lists (oldest first) or right-padded (B, L) tensors -> (B, L) item and behavior tensors."""
        dev = self.item_sids.device
        if isinstance(items, torch.Tensor):
            return items.long().to(dev), torch.as_tensor(behaviors).long().to(dev)
        for i, (hi, hb) in enumerate(zip(items, behaviors)):
            ni, nb = min(len(hi), self.max_len), min(len(hb), self.max_len)  # what the window keeps of each
            if ni != nb:
                raise DataError(f"gamer: history {i} has {ni} items but {nb} behaviors")
        it, bh = pad_windows(items, self.max_len)[0], pad_windows(behaviors, self.max_len)[0]
        return torch.from_numpy(it).to(dev), torch.from_numpy(bh).to(dev)

    @torch.no_grad()
    def generate(self, items: Sequence[Sequence[int] | np.ndarray] | torch.Tensor,
                 behaviors: Sequence[Sequence[int] | np.ndarray] | torch.Tensor, behavior: int,
                 beam_size: int = 20, k: int | None = None, candidates: np.ndarray | None = None,
                 constrained: bool = True, known: torch.Tensor | None = None) -> BeamResult:
        """Top-``k`` next items with ``behavior`` per history, by beam search over ``candidates``' SIDs;
        ``known`` (B, H) items (0 = none) are also scored exactly and merged in (:func:`with_known_items`)."""
        k = list_length(k, beam_size, "gamer.generate")
        was_training = self.training
        self.eval()
        try:
            it, bh = self.history_tensors(items, behaviors)
            prompts = self.prompt_tokens(it, bh, behavior)
            step, state = self.step_fn(prompts)
            res = beam_search(step, self.trie(candidates), prompts.shape[0], beam_size, state, constrained)
            if known is not None:
                return with_known_items(res, known, self.item_sids, lambda: self.step_fn(prompts), k, candidates)
        finally:
            self.train(was_training)
        return res.top(k)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


def _init_weights(module: nn.Module) -> None:
    """Qwen-style init: N(0, 0.02) for every linear and embedding weight."""
    if isinstance(module, (nn.Linear, nn.Embedding)):
        nn.init.normal_(module.weight, std=0.02)
