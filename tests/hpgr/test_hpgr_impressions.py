"""Impression samples: labels, strict-past histories, no leakage, temporal split; real-data smoke checks."""

from __future__ import annotations

import numpy as np
import pytest

from genrec.data.impressions import (
    history_bounds,
    impressions_from_behaviors,
    impressions_from_ratings,
    make_impression_batch,
    temporal_split,
)
from genrec.data.schema import Interactions

BEH = ["pv", "fav", "cart", "buy"]
H = 3600


def _inter(rows, with_rating=True):
    u, i, t, x = (np.array(c) for c in zip(*rows))
    if with_rating:
        return Interactions(u.astype(np.int64), i.astype(np.int64), t.astype(np.int64),
                            rating=x.astype(np.float32))
    return Interactions(u.astype(np.int64), i.astype(np.int64), t.astype(np.int64),
                        behavior=np.array([BEH.index(b) for b in x], dtype=np.int8))


def test_ratings_labels_and_strict_histories():
    inter = _inter([(1, 10, 100, 5), (1, 11, 200, 3), (1, 12, 200, 4), (1, 13, 300, 4), (2, 10, 50, 1)])
    imps = impressions_from_ratings(inter)
    assert imps.label.tolist() == [1, 0, 1, 1, 0]
    # the two events at t=200 share a history and do not see each other
    assert [imps.history_rows(s).tolist() for s in range(5)] == [[], [0], [0], [0, 1, 2], []]
    assert imps.rule["label"] == "rating >= 4"
    assert len(impressions_from_ratings(inter, min_history=1)) == 3


def test_behavior_labels_same_day_utc8():
    day0 = 1511539200 - 8 * H  # midnight 2017-11-25 in UTC+8
    rows = [
        (1, 5, day0 + 1 * H, "pv"),  # carted later that day -> 1
        (1, 6, day0 + 2 * H, "pv"),  # bought the next day only -> 0
        (1, 5, day0 + 3 * H, "cart"),
        (1, 7, day0 + 4 * H, "pv"),  # fav at the same second -> 1
        (1, 7, day0 + 4 * H, "fav"),
        (1, 5, day0 + 5 * H, "pv"),  # engagement before the view only -> 0
        (1, 6, day0 + 26 * H, "buy"),
        (2, 5, day0 + 23 * H, "pv"),  # another user's cart does not count -> 0
    ]
    imps = impressions_from_behaviors(_inter(rows, with_rating=False), BEH)
    assert imps.event.tolist() == [0, 1, 3, 5, 7]
    assert imps.label.tolist() == [1, 0, 1, 0, 0]
    assert imps.rule["window"] == "day" and imps.rule["tz_offset_hours"] == 8.0 and "UTC+8" in imps.rule["label"]
    # a session window (30 min gap) separates the 1h-apart view and cart
    sess = impressions_from_behaviors(_inter(rows, with_rating=False), BEH, window="session")
    assert sess.label.tolist() == [0, 0, 1, 0, 0]


def test_changing_the_future_leaves_histories_unchanged():
    rng = np.random.default_rng(0)
    n = 400
    u = np.sort(rng.integers(1, 6, n))
    t = np.concatenate([np.sort(rng.integers(0, 1000, (u == k).sum())) for k in range(1, 6)])
    base = Interactions(u, rng.integers(1, 50, n), t, rating=rng.integers(1, 6, n).astype(np.float32))
    t0 = 600
    after = base.timestamp > t0
    changed = Interactions(base.user_id, np.where(after, base.item_id + 7, base.item_id), base.timestamp,
                           rating=np.where(after, 5.0, base.rating).astype(np.float32))
    a, b = impressions_from_ratings(base), impressions_from_ratings(changed)
    early = np.flatnonzero(a.timestamp <= t0)
    assert len(early) > 50
    ba, _, _ = make_impression_batch(base, a, early, max_len=1000)
    bb, _, _ = make_impression_batch(changed, b, early, max_len=1000)
    assert (ba.items == bb.items).all() and (ba.timestamps == bb.timestamps).all()
    assert (ba.lengths == bb.lengths).all()
    # and every history event is strictly earlier than its impression
    start, end = history_bounds(base)
    for e in range(n):
        assert (base.timestamp[start[e]:end[e]] < base.timestamp[e]).all()
        assert (base.user_id[start[e]:end[e]] == base.user_id[e]).all()


def test_temporal_split_and_batch():
    rng = np.random.default_rng(1)
    n = 1000
    u = np.sort(rng.integers(1, 30, n))
    t = np.concatenate([np.sort(rng.integers(0, 10_000, (u == k).sum())) for k in np.unique(u)])
    inter = Interactions(u, rng.integers(1, 99, n), t, rating=rng.integers(1, 6, n).astype(np.float32))
    imps = impressions_from_ratings(inter)
    sp = temporal_split(imps)
    assert len(sp.train) + len(sp.valid) + len(sp.test) == n
    assert abs(len(sp.test) - 100) <= 5 and abs(len(sp.valid) - 90) <= 5
    ts = imps.timestamp
    assert ts[sp.train].max() < ts[sp.valid].min() and ts[sp.valid].max() < ts[sp.test].min()
    span = temporal_split(imps, by="span")
    assert ts[span.test].min() >= span.params["t_test"] >= 0.9 * 9000
    batch, cands, labels = make_impression_batch(inter, imps, sp.test[:8], max_len=5)
    assert batch.items.shape[0] == 8 and batch.items.shape[1] <= 5 and cands.shape == (8, 1)
    s = int(sp.test[0])
    hist = inter.item_id[imps.hist_start[s]:imps.hist_end[s]][-5:]
    assert batch.items[0, : len(hist)].tolist() == hist.tolist()
    assert int(batch.query_time[0]) == ts[s] and labels[0] == imps.label[s]


@pytest.mark.realdata
def test_movielens_100k_impressions(shared_file):
    import gzip

    path = shared_file("movielens-100k/u.data.gz")
    with gzip.open(path, "rt") as f:
        raw = np.loadtxt(f, dtype=np.int64)
    order = np.lexsort((raw[:, 3], raw[:, 0]))
    raw = raw[order]
    inter = Interactions(raw[:, 0], raw[:, 1], raw[:, 3], rating=raw[:, 2].astype(np.float32))
    imps = impressions_from_ratings(inter)
    assert len(imps) == 100_000
    assert int(imps.label.sum()) == 34_174 + 21_201  # ratings 4 and 5 from SOURCE.md
    sp = temporal_split(imps)
    assert 9_000 < len(sp.test) < 11_000 and len(sp.train) > 75_000


@pytest.mark.realdata
def test_taobao_sample_impressions(shared_file):
    from genrec.data.sources.taobao import BEHAVIOR_ORDER, read_taobao

    raw = read_taobao(shared_file("taobao-userbehavior-sample/UserBehavior_head.csv.gz"))
    beh = np.array([BEHAVIOR_ORDER.index(b) for b in raw.behavior.to_pylist()], dtype=np.int8)
    u, i, t = (np.asarray(c.to_numpy(), dtype=np.int64) for c in (raw.user, raw.item, raw.timestamp))
    order = np.lexsort((np.arange(len(u)), t, u))
    inter = Interactions(u[order], i[order], t[order], behavior=beh[order])
    imps = impressions_from_behaviors(inter, BEHAVIOR_ORDER)
    assert len(imps) == int((beh == 0).sum()) > 70_000
    rate = float(imps.label.mean())
    assert 0.005 < rate < 0.2, rate  # a few percent of views convert the same day
    sp = temporal_split(imps)
    assert len(sp.test) > 0 and sp.params["t_test"] > sp.params["t_valid"]
