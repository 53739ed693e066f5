"""Jagged user sequences (values + offsets) and padded mini-batches built from them.

Sequences are stored jagged (one flat array per column plus ``offsets``) because user histories
vary from a handful of events to thousands; a batch is padded only to its own longest row, and
rows of similar length are grouped together (``length_bucketing``) so little compute goes to
padding.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

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


def _pad(rows: list[np.ndarray], L: int, dtype=np.int64) -> np.ndarray:
    out = np.zeros((len(rows), L), dtype=dtype)
    for b, r in enumerate(rows):
        out[b, : len(r)] = r
    return out


def make_train_batch(seqs: UserSequences, rows: np.ndarray, ends: np.ndarray, max_len: int) -> SeqBatch:
    """Next-item training batch: for each row, the last ``max_len + 1`` events before ``ends[row]``.

    Inputs are events ``[s, e-1)`` and targets ``[s+1, e)``: every position supervises the next item.
    """
    items, times, tgts, tgt_t, behs, sess = [], [], [], [], [], []
    for u in rows:
        start = int(seqs.offsets[u])
        e = start + int(ends[u])
        s = max(start, e - max_len - 1)
        seg = seqs.items[s:e]
        ts = seqs.timestamps[s:e]
        items.append(seg[:-1])
        times.append(ts[:-1])
        tgts.append(seg[1:])
        tgt_t.append(ts[1:])
        if seqs.behaviors is not None:
            behs.append(seqs.behaviors[s : e - 1])
        if seqs.session_ids is not None:
            sess.append(seqs.session_ids[s : e - 1])
    lengths = np.array([len(r) for r in items], dtype=np.int64)
    L = max(1, int(lengths.max()))
    return SeqBatch(
        items=torch.from_numpy(_pad(items, L)),
        timestamps=torch.from_numpy(_pad(times, L)),
        lengths=torch.from_numpy(lengths),
        query_time=torch.from_numpy(np.array([t[-1] if len(t) else 0 for t in tgt_t], dtype=np.int64)),
        targets=torch.from_numpy(_pad(tgts, L)),
        target_times=torch.from_numpy(_pad(tgt_t, L)),
        behaviors=torch.from_numpy(_pad(behs, L)) if behs else None,
        session_ids=torch.from_numpy(_pad(sess, L)) if sess else None,
        user_rows=torch.from_numpy(np.asarray(rows, dtype=np.int64)),
    )


def make_history_batch(
    histories: list[np.ndarray],
    times: list[np.ndarray],
    query_time: np.ndarray,
    max_len: int,
    user_rows: np.ndarray | None = None,
) -> SeqBatch:
    """Inference batch: the last ``max_len`` events of each history, and the request time."""
    items = [h[-max_len:] for h in histories]
    ts = [t[-max_len:] for t in times]
    lengths = np.array([len(r) for r in items], dtype=np.int64)
    L = max(1, int(lengths.max()))
    return SeqBatch(
        items=torch.from_numpy(_pad(items, L)),
        timestamps=torch.from_numpy(_pad(ts, L)),
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
