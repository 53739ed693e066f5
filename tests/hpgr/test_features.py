"""MTGR impression features: hand-computed values, brute-force equality, and no leakage from events at or
after an impression's time (nor from events after the test cut-off), also through the score of every ranker that
reads them (MTGR, and the HSTU ranker and HPGR with ``model.cross_features``)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
import torch

from genrec.data.features import (
    CROSS_FEATURES,
    FEATURES,
    count_bucket,
    describe_features,
    gap_bucket,
    impression_features,
    item_category_table,
    rate_bucket,
    user_profile_table,
)
from genrec.data.impressions import (
    impressions_from_behaviors,
    impressions_from_ratings,
    make_impression_batch,
    temporal_split,
)
from genrec.data.schema import Dataset, Interactions
from genrec.errors import ConfigError
from genrec.models.registry import build_model

BEH = ["pv", "fav", "cart", "buy"]


def _dataset(rows, num_users=None, num_items=None, users=None, items=None, behaviors=False) -> Dataset:
    """rows: (user, item, time, rating or behaviour name); sorted by (user, time), ties in row order."""
    u, i, t, x = (list(c) for c in zip(*rows))
    u, i, t = np.array(u, dtype=np.int64), np.array(i, dtype=np.int64), np.array(t, dtype=np.int64)
    order = np.lexsort((t, u))
    kw = ({"behavior": np.array([BEH.index(b) for b in x], dtype=np.int8)[order]} if behaviors
          else {"rating": np.array(x, dtype=np.float32)[order]})
    inter = Interactions(u[order], i[order], t[order], **kw)
    nu, ni = num_users or int(u.max()), num_items or int(i.max())
    if items is None:
        items = pa.table({"item_id": np.arange(1, ni + 1, dtype=np.int64), "external_id": [str(k) for k in range(1, ni + 1)]})
    manifest = {"counts": {"users": nu, "items": ni}, "fingerprint": "test"}
    if behaviors:
        manifest["behaviors"] = BEH
    return Dataset(interactions=inter, items=items, users=users, manifest=manifest)


def _random_dataset(seed=0, num_users=30, num_items=25, n=600, t_span=400) -> Dataset:
    rng = np.random.default_rng(seed)
    rows = list(zip(rng.integers(1, num_users + 1, n).tolist(), rng.integers(1, num_items + 1, n).tolist(),
                    rng.integers(0, t_span, n).tolist(), rng.integers(1, 6, n).tolist()))  # many time ties
    items = pa.table({"item_id": np.arange(1, num_items + 1, dtype=np.int64),
                      "external_id": [str(k) for k in range(num_items)],
                      "category_id": pa.array([int(c) if c else None for c in rng.integers(0, 5, num_items)],
                                              type=pa.int64())})  # some items without a category
    users = pa.table({"user_id": np.arange(1, num_users + 1, dtype=np.int64),
                      "external_id": [f"u{k}" for k in range(num_users)],
                      "gender": rng.choice(["M", "F"], num_users).tolist(),
                      "age": rng.choice([18, 25, 35], num_users).tolist()})
    return _dataset(rows, num_users, num_items, users=users, items=items)


def _brute(ds: Dataset, imps) -> dict[str, np.ndarray]:
    """Loop reference of the raw features."""
    inter = ds.interactions
    cat, _ = item_category_table(ds)
    pos = inter.rating >= 4
    out = {k: [] for k in ("ui_count", "ui_gap", "uc_count", "uc_gap", "uc_pos", "u_count", "u_pos", "i_pop", "i_pos")}
    for u, i, t in zip(imps.user_id, imps.item_id, imps.timestamp):
        early = inter.timestamp < t
        mine = early & (inter.user_id == u)
        ui = mine & (inter.item_id == i)
        uc = mine & (cat[inter.item_id] == cat[i]) & (cat[i] > 0)
        it = early & (inter.item_id == i)
        out["ui_count"].append(ui.sum())
        out["ui_gap"].append(t - inter.timestamp[ui].max() if ui.any() else -1)
        out["uc_count"].append(uc.sum())
        out["uc_gap"].append(t - inter.timestamp[uc].max() if uc.any() else -1)
        out["uc_pos"].append((uc & pos).sum())
        out["u_count"].append(mine.sum())
        out["u_pos"].append((mine & pos).sum())
        out["i_pop"].append(it.sum())
        out["i_pos"].append((it & pos).sum())
    return {k: np.array(v, dtype=np.int64) for k, v in out.items()}


def test_hand_computed_values():
    rows = [(1, 1, 100, 5), (1, 2, 200, 2), (1, 1, 300, 4), (1, 3, 300, 5), (1, 1, 400, 1), (2, 1, 150, 5), (2, 3, 300, 1)]
    items = pa.table({"item_id": [1, 2, 3], "external_id": ["a", "b", "c"], "category_id": [10, 10, 20]})
    ds = _dataset(rows, items=items)
    imps = impressions_from_ratings(ds.interactions)
    raw = impression_features(ds, imps, cutoff_time=1000, raw=True)
    # rows after sorting: user 1 at 100, 200, 300 (item 1), 300 (item 3), 400; user 2 at 150, 300
    assert imps.timestamp.tolist() == [100, 200, 300, 300, 400, 150, 300]
    assert raw["ui_count"].tolist() == [0, 0, 1, 0, 2, 0, 0]
    assert raw["ui_gap"].tolist() == [-1, -1, 200, -1, 100, -1, -1]
    assert raw["uc_count"].tolist() == [0, 1, 2, 0, 3, 0, 0]  # the item-3 event at 300 is not "earlier"
    assert raw["uc_pos"].tolist() == [0, 1, 1, 0, 2, 0, 0]
    assert raw["uc_gap"].tolist() == [-1, 100, 100, -1, 100, -1, -1]
    assert raw["u_count"].tolist() == [0, 1, 2, 2, 4, 0, 1]
    assert raw["u_pos"].tolist() == [0, 1, 1, 1, 3, 0, 1]
    assert raw["i_pop"].tolist() == [0, 0, 2, 0, 3, 1, 0]  # user 2's item 3 at 300 is simultaneous: not counted
    assert raw["i_pos"].tolist() == [0, 0, 2, 0, 3, 1, 0]
    assert raw["cand_category"].tolist() == [1, 1, 1, 2, 1, 1, 2]
    assert raw["profile"].tolist() == [[1]] * 5 + [[2]] * 2  # no profile columns: the user id
    ids = impression_features(ds, imps, cutoff_time=1000)
    assert set(ids) == set(FEATURES)
    assert ids["ui_count"].tolist() == count_bucket(raw["ui_count"]).tolist() == [0, 0, 1, 0, 2, 0, 0]
    assert ids["ui_gap"].tolist() == gap_bucket(raw["ui_gap"]).tolist()
    assert ids["uc_pos_rate"].tolist() == rate_bucket(raw["uc_pos"], raw["uc_count"]).tolist()
    assert ids["uc_pos_rate"][4] == 1 + 6  # 2 of 3
    for name, vocab in CROSS_FEATURES.items():
        assert ids[name].dtype == np.int64 and ids[name].shape == (7,)
        assert 0 <= ids[name].min() and ids[name].max() < vocab


def test_buckets():
    assert count_bucket(np.array([0, 1, 2, 3, 4, 1 << 40])).tolist() == [0, 1, 2, 2, 3, 31]
    assert gap_bucket(np.array([-1, 0, 1, 2, 1024, 1 << 40])).tolist() == [0, 1, 1, 2, 11, 31]
    assert rate_bucket(np.array([0, 0, 1, 3]), np.array([0, 5, 1, 10])).tolist() == [0, 1, 10, 4]


def test_equals_brute_force():
    ds = _random_dataset()
    imps = impressions_from_ratings(ds.interactions)
    raw = impression_features(ds, imps, cutoff_time=10_000, raw=True)
    ref = _brute(ds, imps)
    for k, v in ref.items():
        np.testing.assert_array_equal(raw[k], v, err_msg=k)
    prof, fields = user_profile_table(ds)
    assert fields == ["gender", "age"]
    np.testing.assert_array_equal(raw["profile"], prof[imps.user_id])
    assert raw["profile"].min() >= 1 and raw["profile"].shape == (len(imps), 2)


def _keyed(ds: Dataset, feats: dict[str, np.ndarray], keep) -> dict[tuple, tuple]:
    """(user, item, time) -> all feature values, for the impressions with keep(time)."""
    imps = impressions_from_ratings(ds.interactions)
    out = {}
    for s in np.flatnonzero(keep(imps.timestamp)):
        key = (int(imps.user_id[s]), int(imps.item_id[s]), int(imps.timestamp[s]))
        val = tuple(np.atleast_1d(v[s]).tolist() for v in (feats[k] for k in sorted(feats)))
        assert out.setdefault(key, val) == val  # duplicates of one (user, item, time) agree
    return out


def _perturbed(ds: Dataset, t0: int, seed: int, at_t0: bool) -> Dataset:
    """Events with time > t0 get new items / ratings, some are dropped, new events are added after t0 and
    (when ``at_t0``) at exactly t0, including copies of the (user, item) pairs seen at t0."""
    rng = np.random.default_rng(seed)
    inter = ds.interactions
    ni, nu = ds.num_items, ds.num_users
    rows = []
    for u, i, t, r in zip(inter.user_id, inter.item_id, inter.timestamp, inter.rating):
        if t > t0:
            if rng.random() < 0.2:
                continue
            i, r = int(rng.integers(1, ni + 1)), float(rng.integers(1, 6))
        rows.append((int(u), int(i), int(t), float(r)))
    for _ in range(80):
        rows.append((int(rng.integers(1, nu + 1)), int(rng.integers(1, ni + 1)), t0 + int(rng.integers(1, 300)), 5.0))
    if at_t0:
        for u, i in zip(inter.user_id[inter.timestamp == t0], inter.item_id[inter.timestamp == t0]):
            rows.append((int(u), int(i), t0, 5.0))  # same user, same item, same second
            rows.append((int(rng.integers(1, nu + 1)), int(i), t0, 5.0))  # another user, same second
    return _dataset(rows, nu, ni, users=ds.users, items=ds.items)


@pytest.mark.parametrize("raw", [True, False])
def test_no_leak_from_events_at_or_after_the_impression(raw):
    ds = _random_dataset(seed=1)
    imps = impressions_from_ratings(ds.interactions)
    base = impression_features(ds, imps, 10_000, raw=raw)
    changed_later = False
    for k, t0 in enumerate(np.quantile(imps.timestamp, [0.1, 0.5, 0.9]).astype(np.int64)):
        t0 = int(imps.timestamp[np.argmin(np.abs(imps.timestamp - t0))])  # an actual impression time
        pert = _perturbed(ds, t0, seed=k, at_t0=True)
        new = impression_features(pert, impressions_from_ratings(pert.interactions), 10_000, raw=raw)
        before = _keyed(ds, base, lambda t, t0=t0: t <= t0)
        after = _keyed(pert, new, lambda t, t0=t0: t <= t0)
        assert before and set(before) <= set(after)
        assert {key: after[key] for key in before} == before
        # sanity: the perturbation does change later impressions
        later_b, later_a = _keyed(ds, base, lambda t, t0=t0: t > t0), _keyed(pert, new, lambda t, t0=t0: t > t0)
        changed_later |= any(later_b[c] != later_a[c] for c in set(later_b) & set(later_a))
    assert changed_later


def test_events_after_cutoff_change_nothing_before_it():
    ds = _random_dataset(seed=2, n=900)
    imps = impressions_from_ratings(ds.interactions)
    cutoff = temporal_split(imps).params["t_test"]
    base = impression_features(ds, imps, cutoff)
    pert = _perturbed(ds, cutoff - 1, seed=7, at_t0=False)  # everything at or after the cut-off changes
    new = impression_features(pert, impressions_from_ratings(pert.interactions), cutoff)
    before = _keyed(ds, base, lambda t: t < cutoff)
    after = _keyed(pert, new, lambda t: t < cutoff)
    assert before == after and len(before) > 100



def _scores(model, ds: Dataset) -> dict[tuple[int, int, int], float]:
    """(user, item, time) -> the ranker's score of that impression, its features and history as the trainer's."""
    imps = impressions_from_ratings(ds.interactions)
    feats = {k: torch.from_numpy(v) for k, v in impression_features(ds, imps, 10_000).items()}
    batch, cands, _ = make_impression_batch(ds.interactions, imps, np.arange(len(imps)), 20)
    with torch.no_grad():
        s = model.score(batch, cands, features=feats)[:, 0].tolist()
    return {(int(u), int(i), int(t)): v for u, i, t, v in zip(imps.user_id, imps.item_id, imps.timestamp, s)}


@pytest.mark.parametrize("name,kw", [("mtgr", {"feat_dim": 4}), ("hstu_ranker", {"cross_features": True}),
                                     ("hpgr", {"cross_features": True, "top_k": 3})])
def test_a_rankers_score_of_an_impression_reads_no_later_event(name, kw):
    """End to end for every ranker that takes the features: change every event after t0 (and add some at t0) and
    every impression at or before t0 keeps its score; a later one does not."""
    ds = _random_dataset(seed=3)
    torch.manual_seed(0)
    model = build_model({"name": name, "d_model": 16, "num_layers": 1, "num_heads": 2, **kw}, ds.num_items, 20).eval()
    imps = impressions_from_ratings(ds.interactions)
    t0 = int(np.median(imps.timestamp))
    base, pert = _scores(model, ds), _scores(model, _perturbed(ds, t0, seed=5, at_t0=True))
    early = [k for k in base if k[2] <= t0]
    assert len(early) > 50 and set(early) <= set(pert)
    assert np.allclose([base[k] for k in early], [pert[k] for k in early], rtol=0, atol=1e-6)
    late = [k for k in base if k[2] > t0 and k in pert]
    assert not np.allclose([base[k] for k in late], [pert[k] for k in late], rtol=0, atol=1e-6)

def test_behavior_log_positives_are_engagement_events():
    H = 3600
    rows = [(1, 5, 1 * H, "pv"), (1, 5, 2 * H, "cart"), (1, 5, 3 * H, "pv"), (1, 6, 3 * H, "buy"), (1, 6, 4 * H, "pv"),
            (2, 5, 5 * H, "pv")]
    ds = _dataset(rows, behaviors=True)
    imps = impressions_from_behaviors(ds.interactions, BEH)
    raw = impression_features(ds, imps, 10 * H, raw=True)
    assert imps.timestamp.tolist() == [H, 3 * H, 4 * H, 5 * H]
    assert raw["ui_count"].tolist() == [0, 2, 1, 0]  # item 5: pv + cart before 3h; item 6: buy at 3h
    assert raw["u_pos"].tolist() == [0, 1, 2, 0]  # cart at 2h; cart + buy before 4h
    assert raw["i_pop"].tolist() == [0, 2, 1, 3] and raw["i_pos"].tolist() == [0, 1, 1, 1]
    assert describe_features(ds, imps)["positive_event"] == "behavior in ['fav', 'cart', 'buy']"


def test_profile_and_category_sources():
    users = pa.table({"user_id": [2, 1], "external_id": ["b", "a"], "gender": ["M", None], "occupation": ["x", "y"]})
    items = pa.table({"item_id": [1, 2, 3], "external_id": ["a", "b", "c"],
                      "categories": ["Animation | Comedy", "Drama", None]})
    ds = _dataset([(1, 1, 10, 5), (2, 2, 20, 1), (2, 3, 30, 4)], users=users, items=items)
    prof, fields = user_profile_table(ds)
    assert fields == ["gender", "occupation"]
    assert prof.tolist() == [[0, 0], [0, 2], [1, 1]]  # missing value -> 0; row 0 is padding
    cat, source = item_category_table(ds)
    assert cat.tolist() == [0, 1, 2, 0] and "categories" in source
    feats = impression_features(ds, impressions_from_ratings(ds.interactions), 100)
    assert feats["profile"].tolist() == [[0, 2], [1, 1], [1, 1]]
    assert feats["cand_category"].tolist() == [1, 2, 0]
    assert feats["uc_count"].tolist() == [0, 0, 0]  # item 3 has no category: no user x category cross


def test_bad_cutoff_is_a_config_error():
    ds = _dataset([(1, 1, 10, 5)])
    imps = impressions_from_ratings(ds.interactions)
    for bad in (1.5, "10", None, True):
        with pytest.raises(ConfigError, match="cutoff_time"):
            impression_features(ds, imps, bad)
    assert impression_features(ds, imps, np.int64(10))["i_pop"].tolist() == [0]
