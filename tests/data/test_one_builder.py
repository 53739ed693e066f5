"""The one history-window builder (``genrec.data.sequences``) against the copies it replaced.

Each ``_old_*`` function below is the code a caller used before, kept verbatim as the reference: the new
builder must give the same arrays, dtypes and shapes (so every recorded metric comes out the same).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from genrec.data.impressions import ImpressionSamples, make_impression_batch
from genrec.data.multibehavior import BehaviorLevels, BehaviorQueries, SessionSplit
from genrec.data.schema import Interactions
from genrec.data.sequences import (
    SeqBatch,
    UserSequences,
    event_windows,
    make_history_batch,
    make_train_batch,
    pad_windows,
)
from genrec.eval.generation import history_matrix
from genrec.eval.multibehavior import query_histories


def _seqs(seed: int = 0, users: int = 40, with_extras: bool = True) -> UserSequences:
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, 30, users)
    offsets = np.r_[0, np.cumsum(lengths)].astype(np.int64)
    e = int(offsets[-1])
    return UserSequences(
        user_ids=np.arange(1, users + 1, dtype=np.int64), offsets=offsets,
        items=rng.integers(1, 200, e).astype(np.int64), timestamps=np.sort(rng.integers(0, 10**9, e)).astype(np.int64),
        behaviors=rng.integers(0, 4, e).astype(np.int8) if with_extras else None,
        session_ids=np.arange(e, dtype=np.int64) // 3 if with_extras else None)


# --- the replaced code, verbatim ----------------------------------------------------------------------------
def _old_pad(rows, L, dtype=np.int64):
    out = np.zeros((len(rows), L), dtype=dtype)
    for b, r in enumerate(rows):
        out[b, : len(r)] = r
    return out


def _old_make_train_batch(seqs, rows, ends, max_len):
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
        items=torch.from_numpy(_old_pad(items, L)), timestamps=torch.from_numpy(_old_pad(times, L)),
        lengths=torch.from_numpy(lengths),
        query_time=torch.from_numpy(np.array([t[-1] if len(t) else 0 for t in tgt_t], dtype=np.int64)),
        targets=torch.from_numpy(_old_pad(tgts, L)), target_times=torch.from_numpy(_old_pad(tgt_t, L)),
        behaviors=torch.from_numpy(_old_pad(behs, L)) if behs else None,
        session_ids=torch.from_numpy(_old_pad(sess, L)) if sess else None,
        user_rows=torch.from_numpy(np.asarray(rows, dtype=np.int64)))


def _old_make_history_batch(histories, times, query_time, max_len):
    items = [h[-max_len:] for h in histories]
    ts = [t[-max_len:] for t in times]
    lengths = np.array([len(r) for r in items], dtype=np.int64)
    L = max(1, int(lengths.max()))
    return SeqBatch(items=torch.from_numpy(_old_pad(items, L)), timestamps=torch.from_numpy(_old_pad(ts, L)),
                    lengths=torch.from_numpy(lengths), query_time=torch.from_numpy(np.asarray(query_time, np.int64)))


def _old_history_matrix(seqs, rows, ends, max_len):
    rows = np.asarray(rows, dtype=np.int64)
    ends = np.asarray(ends, dtype=np.int64)
    lens = np.minimum(ends, max_len)
    width = max(int(lens.max()) if lens.size else 0, 1)
    start = seqs.offsets[rows] + ends - lens
    idx = start[:, None] + np.arange(width)[None, :]
    real = np.arange(width)[None, :] < lens[:, None]
    return np.where(real, seqs.items[np.minimum(idx, len(seqs.items) - 1)], 0)


def _old_impression_batch(inter, imps, idx, max_len):
    idx = np.asarray(idx, dtype=np.int64)
    start, end = imps.hist_start[idx], imps.hist_end[idx]
    n = np.minimum(end - start, max_len)
    L = max(1, int(n.max()) if len(n) else 1)
    ar = np.arange(L)
    valid = ar[None, :] < n[:, None]
    rows = np.where(valid, (end - n)[:, None] + ar[None, :], 0)
    items = np.where(valid, inter.item_id[rows], 0)
    times = np.where(valid, inter.timestamp[rows], 0)
    beh = torch.from_numpy(np.where(valid, inter.behavior[rows].astype(np.int64) + 1, 0))
    return items.astype(np.int64), times.astype(np.int64), n.astype(np.int64), beh


def _assert_batches_equal(a: SeqBatch, b: SeqBatch) -> None:
    for name in ("items", "timestamps", "lengths", "query_time", "targets", "target_times", "behaviors",
                 "session_ids", "user_rows"):
        x, y = getattr(a, name), getattr(b, name)
        assert (x is None) == (y is None), name
        if x is not None:
            assert x.dtype == y.dtype and torch.equal(x, y), name


# --- the builder itself -----------------------------------------------------------------------------------------
def test_event_windows_left_and_right():
    values = np.arange(100, 120)
    w = event_windows([0, 5, 10, 12], [4, 5, 18, 13], max_len=3)
    assert w.lengths.tolist() == [3, 0, 3, 1]
    assert w.take(values).tolist() == [[101, 102, 103], [0, 0, 0], [115, 116, 117], [112, 0, 0]]
    r = event_windows([0, 5, 10, 12], [4, 5, 18, 13], max_len=3, align="right")
    assert r.take(values, fill=-1).tolist() == [[101, 102, 103], [-1, -1, -1], [115, 116, 117], [-1, -1, 112]]
    assert (r.real.sum(1) == r.lengths).all()


def test_event_windows_untruncated_empty_and_bad_args():
    w = event_windows([2, 7], [6, 8], max_len=None)
    assert w.take(np.arange(10)).tolist() == [[2, 3, 4, 5], [7, 0, 0, 0]]
    empty = event_windows(np.zeros(0, np.int64), np.zeros(0, np.int64), 5)
    assert empty.index.shape == (0, 1) and empty.lengths.shape == (0,)
    assert event_windows([0], [0], 5).take(np.zeros(0, np.int64)).tolist() == [[0]]  # no events at all
    with pytest.raises(ValueError):
        event_windows([0], [3], 0)
    with pytest.raises(ValueError):
        event_windows([0], [3], 2, align="middle")


def test_pad_windows_truncates_and_keeps_dtype():
    mat, lens = pad_windows([[1, 2, 3, 4], [], [7]], max_len=2)
    assert mat.tolist() == [[3, 4], [0, 0], [7, 0]] and lens.tolist() == [2, 0, 1] and mat.dtype == np.int64
    mat, _ = pad_windows([[1, 2, 3], [5]], max_len=None, fill=-1)
    assert mat.tolist() == [[1, 2, 3], [5, -1, -1]]
    mat, _ = pad_windows([[1, 2, 3], [5]], max_len=2, align="right")
    assert mat.tolist() == [[2, 3], [0, 5]]


def test_user_sequences_windows_read_a_row_prefix():
    seqs = _seqs(1)
    w = seqs.windows([3], [5], max_len=2)
    s = int(seqs.offsets[3])
    assert w.take(seqs.items).tolist() == [seqs.items[s + 3 : s + 5].tolist()]


# --- bit-identical to the replaced copies -------------------------------------------------------------------
@pytest.mark.parametrize("max_len", [1, 3, 50])
@pytest.mark.parametrize("extras", [True, False])
def test_make_train_batch_matches_the_old_loop(max_len, extras):
    seqs = _seqs(2, with_extras=extras)
    rng = np.random.default_rng(max_len)
    ends = np.array([rng.integers(0, n + 1) for n in seqs.lengths])  # includes 0 and 1 (no target)
    rows = rng.permutation(len(seqs))[:25]
    _assert_batches_equal(make_train_batch(seqs, rows, ends, max_len), _old_make_train_batch(seqs, rows, ends, max_len))


@pytest.mark.parametrize("max_len", [1, 4, 100])
def test_make_history_batch_matches_the_old_code(max_len):
    seqs = _seqs(3)
    rows = range(len(seqs))
    hist = [seqs.items[seqs.row(u)] for u in rows]
    times = [seqs.timestamps[seqs.row(u)] for u in rows]
    qt = np.arange(len(hist))
    _assert_batches_equal(make_history_batch(hist, times, qt, max_len), _old_make_history_batch(hist, times, qt, max_len))


@pytest.mark.parametrize("max_len", [1, 5, 64])
def test_history_matrix_matches_the_old_code(max_len):
    seqs = _seqs(4)
    rng = np.random.default_rng(0)
    rows = rng.integers(0, len(seqs), 30)
    ends = np.array([rng.integers(0, seqs.lengths[r] + 1) for r in rows])
    new, old = history_matrix(seqs, rows, ends, max_len), _old_history_matrix(seqs, rows, ends, max_len)
    assert new.dtype == old.dtype and np.array_equal(new, old)


def test_query_histories_match_the_old_code():
    seqs = _seqs(5)
    split = SessionSplit(seqs, np.zeros(len(seqs), np.int64), seqs.lengths.copy(),
                         BehaviorLevels(("pv", "fav", "cart", "buy"), (0, 1, 2, 3)), 3600)
    rows = np.arange(len(seqs))
    ends = np.array([n // 2 for n in seqs.lengths])
    q = BehaviorQueries(3, rows, ends, np.zeros(len(rows) + 1, np.int64), np.zeros(0, np.int64))
    items, beh = query_histories(split, q, 6)
    assert np.array_equal(items, _old_history_matrix(seqs, rows, ends, 6))
    lens = np.minimum(ends, 6)
    idx = np.minimum((seqs.offsets[rows] + ends - lens)[:, None] + np.arange(items.shape[1]), len(seqs.items) - 1)
    old_beh = np.where(np.arange(items.shape[1]) < lens[:, None], seqs.behaviors[idx], 0)
    assert beh.dtype == old_beh.dtype and np.array_equal(beh, old_beh)


@pytest.mark.parametrize("max_len", [1, 3, 1000])
def test_make_impression_batch_matches_the_old_code(max_len):
    seqs = _seqs(6)
    inter = Interactions(np.repeat(seqs.user_ids, seqs.lengths), seqs.items, seqs.timestamps, behavior=seqs.behaviors)
    rng = np.random.default_rng(1)
    s = len(seqs.items)
    start = np.repeat(seqs.offsets[:-1], seqs.lengths)
    hist_end = start + np.array([rng.integers(0, i - a + 1) for i, a in zip(range(s), start)])
    imps = ImpressionSamples(np.arange(s), inter.user_id, inter.item_id, np.ones(s, np.int8), inter.timestamp,
                             start, hist_end)
    idx = rng.permutation(s)[:40]
    batch, _, _ = make_impression_batch(inter, imps, idx, max_len)
    items, times, n, beh = _old_impression_batch(inter, imps, idx, max_len)
    assert torch.equal(batch.items, torch.from_numpy(items)) and torch.equal(batch.timestamps, torch.from_numpy(times))
    assert torch.equal(batch.lengths, torch.from_numpy(n)) and torch.equal(batch.behaviors, beh)
    assert batch.behaviors.dtype == torch.int64


@pytest.mark.parametrize("split, fracs", [("leave_one_out", (0.1, 0.1)), ("loo", (0.3, 0.3)), ("temporal", (0.2, 0.15))])
def test_split_from_config_is_the_inline_line_it_replaced(split, fracs):
    from genrec.config import DataConfig
    from genrec.data.splits import make_split, split_from_config

    seqs = _seqs(7)
    cfg = DataConfig(split=split, valid_frac=fracs[0], test_frac=fracs[1])
    new = split_from_config(seqs, cfg)
    old = make_split(seqs, cfg.split, **({"valid_frac": cfg.valid_frac, "test_frac": cfg.test_frac}
                                         if cfg.split == "temporal" else {}))
    assert new.name == old.name and new.params == old.params and np.array_equal(new.train_end, old.train_end)
    for part in ("valid", "test"):
        a, b = getattr(new, part), getattr(old, part)
        assert np.array_equal(a.rows, b.rows) and np.array_equal(a.hist_end, b.hist_end)
    assert (new.params.get("valid_frac") == fracs[0]) == (split == "temporal")  # fractions reach temporal only
