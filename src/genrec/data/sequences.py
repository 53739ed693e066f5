"""Jagged user sequences (values + offsets) and padded mini-batches built from them.

Sequences are stored jagged (one flat array per column plus ``offsets``) because user histories
vary from a handful of events to thousands; a batch is padded only to its own longest row, and
rows of similar length are grouped together (``length_bucketing``) so little compute goes to
padding.

Every "last ``max_len`` events of a history" in genrec comes from :func:`event_windows` (flat spans of an
event log), through :meth:`UserSequences.windows` (a row prefix), :func:`pad_windows` (a list of histories)
or :func:`make_history_batch` (a model's inference batch), so the truncation and padding rules live once.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Any, Literal

import numpy as np
import torch

from genrec.data.schema import Interactions


@dataclass
class UserSequences:
    """All users' chronological sequences, jagged."""

    user_ids: np.ndarray  # (U,) internal user id of row u
    offsets: np.ndarray  # (U+1,) row u spans values[offsets[u]:offsets[u+1]]
    items: np.ndarray  # (E,)
    timestamps: np.ndarray  # (E,)
    behaviors: np.ndarray | None = None  # (E,)
    session_ids: np.ndarray | None = None  # (E,)

    @classmethod
    def from_interactions(cls, inter: Interactions) -> UserSequences:
        """Group a (user, time)-sorted interactions table into per-user rows."""
        users = inter.user_id
        if len(users) > 1 and np.any(users[1:] < users[:-1]):
            order = np.argsort(users, kind="stable")
        else:
            order = None

        def take(a: np.ndarray | None) -> np.ndarray | None:
            if a is None:
                return None
            return a if order is None else a[order]

        users = take(users)
        assert users is not None
        change = np.flatnonzero(np.diff(users)) + 1
        starts = np.concatenate([[0], change])
        offsets = np.concatenate([starts, [len(users)]]).astype(np.int64)
        return cls(
            user_ids=users[starts].astype(np.int64),
            offsets=offsets,
            items=take(inter.item_id).astype(np.int64),  # type: ignore[union-attr]
            timestamps=take(inter.timestamp).astype(np.int64),  # type: ignore[union-attr]
            behaviors=take(inter.behavior),
            session_ids=take(inter.session_id),
        )

    def __len__(self) -> int:
        return len(self.user_ids)

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def row(self, u: int) -> slice:
        return slice(int(self.offsets[u]), int(self.offsets[u + 1]))

    def windows(self, rows: np.ndarray, ends: np.ndarray, max_len: int | None,
                align: Literal["left", "right"] = "left") -> EventWindows:
        """The last ``<= max_len`` events before position ``ends[i]`` of row ``rows[i]`` (``ends`` counted from
        the row's start, i.e. a split's ``hist_end``); ``take`` a column (items, timestamps, ...) to read them."""
        starts = self.offsets[np.asarray(rows, dtype=np.int64)]  # (S,)
        return event_windows(starts, starts + np.asarray(ends, dtype=np.int64), max_len, align)


@dataclass(frozen=True)
class EventWindows:
    """Where each query's history window lies in a flat event log: an (S, L) gather, padded.

    ``index`` is 0 on padding so that :meth:`take` never reads out of range; ``real`` says which slots hold
    events. L is the longest window of the batch (at least 1).
    """

    index: np.ndarray  # (S, L) int64 flat event index, 0 on padding
    real: np.ndarray  # (S, L) bool, True on events
    lengths: np.ndarray  # (S,) int64 events in each window

    def take(self, values: np.ndarray, fill: Any = 0) -> np.ndarray:
        """(E,) event column -> (S, L) its values inside the windows, ``fill`` on padding (dtype kept)."""
        if len(values) == 0:  # no events at all: every slot is padding
            return np.full(self.real.shape, fill, dtype=np.asarray(values).dtype)
        return np.where(self.real, values[self.index], fill)


def event_windows(starts: np.ndarray, ends: np.ndarray, max_len: int | None,
                  align: Literal["left", "right"] = "left") -> EventWindows:
    """(S,) flat spans ``[starts, ends)`` of an event log -> the last ``min(ends - starts, max_len)`` events of
    each (every event with ``max_len=None``), oldest first.

    ``align="left"`` puts the oldest kept event in column 0 and pads on the right (every genrec batch);
    ``"right"`` ends every window in column L-1 and pads on the left (prompts that must end together).
    """
    if max_len is not None and max_len < 1:
        raise ValueError(f"history window max_len must be >= 1, got {max_len}")
    starts = np.asarray(starts, dtype=np.int64)
    ends = np.asarray(ends, dtype=np.int64)
    n = ends - starts  # (S,)
    lengths = n if max_len is None else np.minimum(n, max_len)  # (S,)
    width = max(int(lengths.max()) if lengths.size else 0, 1)
    col = np.arange(width)[None, :]  # (1, L)
    if align == "left":
        real = col < lengths[:, None]
        first = ends - lengths  # (S,) flat index of column 0
    elif align == "right":
        real = col >= width - lengths[:, None]
        first = ends - width
    else:
        raise ValueError(f"align must be 'left' or 'right', got {align!r}")
    return EventWindows(np.where(real, first[:, None] + col, 0), real, lengths)


def pad_windows(rows: Sequence[Sequence[int] | np.ndarray], max_len: int | None, fill: Any = 0,
                align: Literal["left", "right"] = "left", dtype: Any = np.int64) -> tuple[np.ndarray, np.ndarray]:
    """Variable-length histories (oldest first) -> ((S, L) the last ``<= max_len`` values of each, padded with
    ``fill``; (S,) their lengths). ``max_len=None`` keeps every value (plain padding)."""
    cut = [r if max_len is None else r[max(len(r) - max_len, 0):] for r in rows]  # histories outgrow windows
    arrays = [np.asarray(r, dtype=dtype) for r in cut]
    lengths = np.array([len(a) for a in arrays], dtype=np.int64)
    ends = np.cumsum(lengths)
    flat = np.concatenate(arrays) if arrays else np.zeros(0, dtype=dtype)
    w = event_windows(ends - lengths, ends, max_len, align)
    return w.take(flat, fill), w.lengths


@dataclass
class SeqBatch:
    """A padded, left-aligned batch. Position ``j < lengths[b]`` is real, the rest is padding (0).

    ``query_time`` is the timestamp of the event being predicted after the last real position
    (the request time); HSTU's time bias needs it.
    """

    items: torch.Tensor  # (B, L) int64
    timestamps: torch.Tensor  # (B, L) int64
    lengths: torch.Tensor  # (B,) int64
    query_time: torch.Tensor  # (B,) int64
    targets: torch.Tensor | None = None  # (B, L) next item at each position, 0 = no target
    target_times: torch.Tensor | None = None  # (B, L) timestamp of that next item
    behaviors: torch.Tensor | None = None  # (B, L)
    session_ids: torch.Tensor | None = None  # (B, L)
    user_rows: torch.Tensor | None = None  # (B,) row index into UserSequences

    def to(self, device: torch.device | str) -> SeqBatch:
        kw = {}
        for f in fields(self):
            v = getattr(self, f.name)
            kw[f.name] = v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v
        return SeqBatch(**kw)

    @property
    def mask(self) -> torch.Tensor:
        """(B, L) bool, True on real positions."""
        L = self.items.shape[1]
        return torch.arange(L, device=self.items.device)[None, :] < self.lengths[:, None]

    def jagged(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(values (T,), offsets (B+1,)) view of the items, for kernels that take jagged input."""
        offsets = torch.zeros(len(self.lengths) + 1, dtype=torch.int64, device=self.items.device)
        offsets[1:] = torch.cumsum(self.lengths, 0)
        return self.items[self.mask], offsets


def make_train_batch(seqs: UserSequences, rows: np.ndarray, ends: np.ndarray, max_len: int) -> SeqBatch:
    """Next-item training batch: for each row, the last ``max_len + 1`` events before ``ends[row]``.

    Inputs are events ``[s, e-1)`` and targets ``[s+1, e)``: every position supervises the next item.
    """
    rows = np.asarray(rows, dtype=np.int64)
    start = seqs.offsets[rows]  # (B,)
    e = start + np.asarray(ends)[rows]  # (B,) one past each row's last usable event
    s = np.maximum(start, e - max_len - 1)  # (B,) first event of the window
    stop = np.maximum(e - 1, s)
    inp, tgt = event_windows(s, stop, None), event_windows(s + 1, stop + 1, None)  # (B, L) each

    def col(w: EventWindows, values: np.ndarray | None) -> torch.Tensor | None:
        return None if values is None else torch.from_numpy(w.take(values).astype(np.int64, copy=False))

    has = stop > s  # (B,) rows with at least one target
    last = np.where(has, stop, 0)  # (B,) flat index of the last target (0 where none: masked below)
    qt = np.where(has, seqs.timestamps[last], 0) if len(seqs.timestamps) else np.zeros(len(rows), np.int64)
    return SeqBatch(
        items=col(inp, seqs.items),
        timestamps=col(inp, seqs.timestamps),
        lengths=torch.from_numpy(inp.lengths),
        query_time=torch.from_numpy(qt.astype(np.int64, copy=False)),
        targets=col(tgt, seqs.items),
        target_times=col(tgt, seqs.timestamps),
        behaviors=col(inp, seqs.behaviors),
        session_ids=col(inp, seqs.session_ids),
        user_rows=torch.from_numpy(rows),
    )


def make_history_batch(
    histories: list[np.ndarray],
    times: list[np.ndarray],
    query_time: np.ndarray,
    max_len: int,
    user_rows: np.ndarray | None = None,
) -> SeqBatch:
    """Inference batch: the last ``max_len`` events of each history, and the request time."""
    items, lengths = pad_windows(histories, max_len)  # (B, L), (B,)
    ts, _ = pad_windows(times, max_len)  # (B, L)
    if ts.shape != items.shape:
        raise ValueError("make_history_batch: every history needs one timestamp per item")
    return SeqBatch(
        items=torch.from_numpy(items),
        timestamps=torch.from_numpy(ts),
        lengths=torch.from_numpy(lengths),
        query_time=torch.from_numpy(np.asarray(query_time, dtype=np.int64)),
        user_rows=None if user_rows is None else torch.from_numpy(np.asarray(user_rows, dtype=np.int64)),
    )


def batch_order(
    lengths: np.ndarray, batch_size: int, rng: np.random.Generator, bucketing: bool = True, chunk: int = 64
) -> list[np.ndarray]:
    """Shuffled mini-batches of row indices; with bucketing, rows of similar length share a batch.

    Bucketing sorts rows by length inside shuffled chunks of ``chunk`` batches, then shuffles the
    batches, so each epoch still sees every row once in a random order.
    """
    perm = rng.permutation(len(lengths))
    if bucketing:
        span = batch_size * chunk
        parts = []
        for i in range(0, len(perm), span):
            block = perm[i : i + span]
            parts.append(block[np.argsort(lengths[block], kind="stable")])
        perm = np.concatenate(parts) if parts else perm
    batches = [perm[i : i + batch_size] for i in range(0, len(perm), batch_size)]
    if bucketing:
        order = rng.permutation(len(batches))
        batches = [batches[i] for i in order]
    return batches
