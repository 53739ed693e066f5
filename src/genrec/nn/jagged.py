"""Packed (jagged) sequences: token-wise layers on the real tokens only, attention per group of similar lengths.

A left-aligned (B, L) batch holds ``T = sum(lengths)`` real tokens. :class:`Packing` says where they are, so the
token-wise layers (embeddings, norms, projections, feed-forward, output) run on a (T, D) tensor and never touch a
padding slot. Attention still needs each sequence's tokens side by side: the rows are sorted by length and cut
into groups whose padding stays under ``max_padding`` (as the evaluation batches queries), each group is laid out
padded to its own longest row for one batched attention call, and the outputs are read back at the real tokens.

Inside a group only the causal mask is needed: the rows are left-aligned, so a real query ``i < length`` reads
keys ``j <= i``, all real; padding slots (which repeat packed token 0, any finite value does) are read only by
padding query rows, whose outputs are dropped and get no gradient. The rankers pack each row's history followed
by its candidates and pass one mask per group instead: ``hstu_ranker`` and ``hpgr`` the M-FALCON mask at the real
tokens (:func:`target_aware_masks`: a candidate reads the history and itself, never another candidate), MTGR its
dynamic mask built on each group's layout.

Long histories (an HPGR ranker with dense attention at N = 2,048) make a group's (G, h, Lg, Lg) scores the whole
memory bill. Inside :func:`attention_budget` a group's score plane ``G * Lg * Lg`` stays under the budget (groups
are cut by size as well as by padding) and, while gradients are recorded, each group's attention is recomputed in
the backward pass instead of stored (``torch.utils.checkpoint``, dropout masks replayed): memory then follows one
group, not the batch, for about one more attention forward per step.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from genrec.nn.attention import hstu_pointwise_attention

MAX_PADDING = 0.05  # a group is cut where its padding would pass this share (as the evaluation's query batches)
# score elements G * Lg * Lg allowed per length group (one head), 0 = no limit and no recomputation
_BUDGET: ContextVar[int] = ContextVar("genrec_attention_budget", default=0)


@contextmanager
def attention_budget(mb: float) -> Iterator[None]:
    """Within: packed attention keeps each length group's one-head fp32 score plane under ``mb`` MB and recomputes
    it in the backward pass (module doc); ``mb = 0`` leaves everything as it is. A row longer than the budget
    allows forms a group of its own."""
    if mb < 0:
        raise ValueError(f"attention_budget: mb must be >= 0 (got {mb})")
    token = _BUDGET.set(max(1, int(mb * 2**20 / 4)) if mb > 0 else 0)  # fp32 elements; any budget > 0 is on
    try:
        yield
    finally:
        _BUDGET.reset(token)


@dataclass(frozen=True, eq=False)
class LengthGroup:
    """Rows of similar length, attended together, padded to ``width``."""

    rows: torch.Tensor  # (G,) batch rows, longest first
    width: int  # Lg: the group's longest length
    causal: torch.Tensor  # (1, Lg, Lg) bool, key j <= query i

    @property
    def slots(self) -> int:
        return len(self.rows) * self.width


@dataclass(frozen=True, eq=False)
class Packing:
    """The real tokens of a left-aligned (B, L) batch, in row-major order, and their length groups."""

    lengths: torch.Tensor  # (B,)
    width: int  # L of the padded batch
    index: torch.Tensor  # (T,) flat index in B*L of each real token
    positions: torch.Tensor  # (T,) its position inside its sequence
    groups: tuple[LengthGroup, ...]
    gather: torch.Tensor  # (S,) packed token of each slot of the groups' padded layouts, one after the other
    back: torch.Tensor  # (T,) the slot of packed token t in that layout

    @classmethod
    def of(cls, lengths: torch.Tensor, width: int, max_padding: float = MAX_PADDING) -> Packing:
        """The packing of rows of ``lengths`` (B,) in a batch padded to ``width``."""
        lens = lengths.detach().cpu().numpy().astype(np.int64)  # (B,)
        dev = lengths.device
        offsets = np.concatenate([[0], np.cumsum(lens)])  # (B+1,)
        if offsets[-1] == 0:
            raise ValueError("Packing: the batch has no real token (every length is 0)")
        row_of = np.repeat(np.arange(len(lens)), lens)  # (T,)
        pos = np.arange(int(offsets[-1])) - offsets[row_of]  # (T,)
        groups, gather, back, base = [], [], np.zeros(int(offsets[-1]), np.int64), 0
        for rows in length_groups(lens, max_padding, _BUDGET.get()):
            w = int(lens[rows[0]])
            col = np.arange(w)[None, :]  # (1, Lg)
            real = col < lens[rows][:, None]  # (G, Lg)
            tok = offsets[rows][:, None] + col  # (G, Lg) packed token of each slot
            gather.append(np.where(real, tok, 0).ravel())
            back[tok[real]] = base + np.flatnonzero(real.ravel())
            base += real.size
            groups.append(LengthGroup(_t(rows, dev), w, torch.ones(w, w, dtype=torch.bool, device=dev).tril()[None]))
        return cls(lengths, width, _t(row_of * width + pos, dev), _t(pos, dev), tuple(groups),
                   _t(np.concatenate(gather), dev), _t(back, dev))

    @property
    def num_tokens(self) -> int:
        return len(self.index)

    def pack(self, x: torch.Tensor) -> torch.Tensor:
        """(B, L, ...) padded -> (T, ...) its real tokens."""
        return x.reshape(-1, *x.shape[2:]).index_select(0, self.index)  # index_select: a cheap backward

    def unpack(self, x: torch.Tensor) -> torch.Tensor:
        """(T, ...) -> (B, L, ...) padded with zeros (for code that wants the padded layout)."""
        out = x.new_zeros(len(self.lengths) * self.width, *x.shape[1:])
        return out.index_copy(0, self.index, x).view(len(self.lengths), self.width, *x.shape[1:])

    def laid_out(self, *xs: torch.Tensor) -> list[list[torch.Tensor]]:
        """Every group's padded layout of the packed inputs: ``[[x (G, Lg, ...) for x in xs] for each group]``; a
        layout's padding slots repeat packed token 0 (:meth:`real_slots` says which slots are real)."""
        sizes = [g.slots for g in self.groups]
        laid = [x.index_select(0, self.gather).split(sizes) for x in xs]  # one gather per input, (S, ...) split
        return [[part[i].view(len(g.rows), g.width, *part[i].shape[1:]) for part in laid]
                for i, g in enumerate(self.groups)]

    def real_slots(self, g: LengthGroup) -> torch.Tensor:
        """(G, Lg) bool: the real slots of a group's layout (each row's first ``length`` slots)."""
        return torch.arange(g.width, device=g.rows.device)[None] < self.lengths[g.rows][:, None]

    def per_group(self, fn: Callable[[int, LengthGroup, list[torch.Tensor]], torch.Tensor],
                  *xs: torch.Tensor) -> torch.Tensor:
        """Run ``fn(i, group, [x padded (G, Lg, ...) for x in xs]) -> (G, Lg, W)`` on every group; (T, W) back.
        Inside :func:`attention_budget`, with gradients on, each call is recomputed in the backward pass."""
        outs = []
        recompute = _BUDGET.get() > 0 and torch.is_grad_enabled()
        for i, (g, laid) in enumerate(zip(self.groups, self.laid_out(*xs))):
            o = checkpoint(fn, i, g, laid, use_reentrant=False) if recompute else fn(i, g, laid)  # (G, Lg, W)
            outs.append(o.reshape(-1, o.shape[-1]))  # (G*Lg, W)
        return (outs[0] if len(outs) == 1 else torch.cat(outs)).index_select(0, self.back)  # (T, W)

    def padded_share(self) -> float:
        """Padding share of the slots attention computes (0 for the token-wise layers)."""
        return 1 - self.num_tokens / len(self.gather)


def length_groups(lengths: np.ndarray, max_padding: float = MAX_PADDING, max_elems: int = 0) -> list[np.ndarray]:
    """Rows (B,) sorted longest first and cut greedily where a group's padding would pass ``max_padding`` or
    (``max_elems`` > 0) its score plane G * Lg * Lg would pass ``max_elems``; empty rows join no group. Adding a
    shorter row only lowers a group's fill, so the greedy cut is exact."""
    order = np.argsort(-lengths, kind="stable")
    order = order[lengths[order] > 0]
    groups, start, total = [], 0, 0
    for i, r in enumerate(order):
        n, width = int(lengths[r]), int(lengths[order[start]])
        too_big = max_elems > 0 and (i - start + 1) * width * width > max_elems
        if i > start and ((total + n) < (1 - max_padding) * (i - start + 1) * width or too_big):
            groups.append(order[start:i])
            start, total = i, 0
        total += n
    if len(order):
        groups.append(order[start:])
    return groups


def _t(a: np.ndarray, device: torch.device) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a, dtype=np.int64)).to(device)


def target_aware_masks(packing: Packing, slot: torch.Tensor, real: torch.Tensor, history: int,
                       weights: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:
    """One (G, Lg, Lg) mask per length group for the rankers' target-aware layout (the M-FALCON mask, packed).

    ``slot`` (T,): each packed token's slot in the padded layout it stands for (history slots ``< history``, the
    candidates after them); ``real`` (T,): False for a padding candidate. Query i reads key j iff both are real
    and either key j is a history token at or before query i's slot or j is i: a history token reads the
    history up to itself, a candidate reads the history and itself, never another candidate. ``weights`` (T,)
    scale the keys (HPGR's PGSA column weights; the mask is then float).
    """
    out = []
    for g, (s, r, *w) in zip(packing.groups, packing.laid_out(slot, real, *([] if weights is None else [weights]))):
        r = r & packing.real_slots(g)  # (G, Lg): layout padding is not real
        col = torch.arange(g.width, device=s.device)
        reads = ((s[:, None, :] <= s[:, :, None]) & (s[:, None, :] < history)) | (col[:, None] == col[None])[None]
        m = reads & r[:, :, None] & r[:, None, :]  # (G, Lg, Lg)
        out.append(m.to(w[0].dtype) * w[0][:, None, :] if w else m)
    return tuple(out)


@dataclass(frozen=True, eq=False)
class JaggedAttention:
    """HSTU pointwise attention over packed tokens: an ``AttentionFn`` taking (T, h, d) and giving (T, h*dv).

    ``times``: the padded batch's (B, L) timestamps and next-event times, from which each layer's relative bias
    is built per group (:meth:`relative_bias`, which the HSTU block calls instead of building a (B, L, L) bias).
    The temperature divides the scores (``scale_at="scores"``, the retriever's and the production ranker's).
    ``masks``: one (G, Lg, Lg) mask per group instead of the causal one (bool, or float weights: the rankers'
    :func:`target_aware_masks`, MTGR's dynamic mask over its normaliser). ``scale_at="query"`` divides the queries
    instead (MTGR's rounding, as ``DenseAttention``).
    """

    packing: Packing
    norm_len: int | float
    times: tuple[torch.Tensor, torch.Tensor] | None = None
    masks: tuple[torch.Tensor, ...] | None = None
    scale_at: str = "scores"

    def relative_bias(self, rab: nn.Module) -> list[torch.Tensor]:
        """One (G, Lg, Lg) bias per group from the layer's ``rab`` module."""
        if self.times is None:
            raise ValueError("JaggedAttention: a relative bias needs the batch's timestamps (times=...)")
        ts, qt = self.times
        return [rab(ts[g.rows, : g.width], qt[g.rows, : g.width]) for g in self.packing.groups]

    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, temperature: float | None = None,
                 bias: Sequence[torch.Tensor] | None = None,
                 dropout: Callable[[torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
        def one(i: int, g: LengthGroup, qkv: list[torch.Tensor]) -> torch.Tensor:
            qg, kg, vg = (t.transpose(1, 2) for t in qkv)  # (G, h, Lg, d)
            b = None if bias is None else bias[i]
            mask = g.causal if self.masks is None else self.masks[i]
            t = temperature
            if t is not None and self.scale_at == "query":
                qg, t = qg / t, None
            return hstu_pointwise_attention(qg, kg, vg, b, mask, self.norm_len, t, dropout)

        return self.packing.per_group(one, q, k, v)
