"""The horizon label rule of the Tmall CTR task: fav/cart impressions, positive when a buy of the same item follows
within the horizon; incomplete windows dropped; no label reads past its window, no feature at or after its impression."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from genrec.config import config_from_dict, load_config
from genrec.data.features import impression_features
from genrec.data.impressions import impressions_within_horizon, make_impression_batch
from genrec.data.schema import Dataset, Interactions, load_dataset
from genrec.data.sources import prepare_source
from genrec.errors import ConfigError
from genrec.runs.ranking_data import build_ranking_data

BEH = ["fav", "cart", "buy"]
H = 3600
HORIZON = 72 * H
DAY = 24 * H


def _dataset(rows: list[tuple[int, int, int, str]], log_end: int | None, nu: int = 0, ni: int = 0) -> Dataset:
    """A prepared-like dataset from (user, item, time, behavior) rows, sorted by (user, time), ties in row order."""
    u, i, t, b = (np.array(c) for c in zip(*rows))
    o = np.lexsort((np.arange(len(u)), t, u))
    inter = Interactions(u[o].astype(np.int64), i[o].astype(np.int64), t[o].astype(np.int64),
                         behavior=np.array([BEH.index(x) for x in b[o]], dtype=np.int8))
    nu, ni = max(nu, int(u.max())), max(ni, int(i.max()))
    items = pa.table({"item_id": np.arange(1, ni + 1), "external_id": [str(k) for k in range(1, ni + 1)]})
    params = {"time_window": [0, log_end]} if log_end is not None else {}
    manifest = {"counts": {"users": nu, "items": ni}, "behaviors": BEH, "fingerprint": "test", "params": params}
    return Dataset(inter, items, None, manifest)


def test_hand_computed_labels_and_dropped_windows():
    end = 100 * H + 1  # exclusive end of the log
    rows = [
        (1, 5, 0, "fav"), (1, 5, 72 * H, "buy"),  # bought exactly 72 h later -> 1
        (1, 6, H, "cart"), (1, 6, 73 * H + 1, "buy"),  # a second past the horizon -> 0
        (1, 7, 2 * H, "cart"), (1, 7, 2 * H, "buy"),  # bought in the same second -> 1
        (1, 8, 3 * H, "buy"), (1, 8, 4 * H, "fav"),  # bought only before the fav -> 0
        (2, 5, 5 * H, "cart"),  # another user's buy of item 5 does not count -> 0
        (3, 1, 28 * H, "fav"),  # window ends at 100 h, the log's last second: kept -> 0
        (3, 2, 28 * H + 1, "fav"),  # window reaches the log's end: dropped
        (2, 9, 100 * H, "cart"),  # dropped
    ]
    ds = _dataset(rows, end)
    imps = impressions_within_horizon(ds.interactions, BEH, log_end=end)
    got = {(int(u), int(i)): int(y) for u, i, y in zip(imps.user_id, imps.item_id, imps.label)}
    assert got == {(1, 5): 1, (1, 6): 0, (1, 7): 1, (1, 8): 0, (2, 5): 0, (3, 1): 0}
    assert imps.rule["dropped_incomplete_window"] == 2 and imps.rule["log_end"] == end
    assert imps.rule["impression"] == ["fav", "cart"] and imps.rule["positives"] == ["buy"]
    # without a stated end the last event + 1 s is the end: the same here
    assert np.array_equal(impressions_within_horizon(ds.interactions, BEH).label, imps.label)
    assert len(impressions_within_horizon(ds.interactions, BEH, log_end=end, min_history=1)) == 3
    with pytest.raises(ConfigError, match="must not overlap"):
        impressions_within_horizon(ds.interactions, BEH, impressions=("cart", "buy"))
    with pytest.raises(ConfigError, match="horizon must be a positive"):
        impressions_within_horizon(ds.interactions, BEH, horizon=0)
    with pytest.raises(ConfigError, match=r"positive behaviors \['pv'\] must be among"):
        impressions_within_horizon(ds.interactions, BEH, positives=("pv",))


def _random_rows(seed: int, nu: int = 40, ni: int = 30, days: int = 9) -> list[tuple[int, int, int, str]]:
    """Users fav/cart items and buy some of them after a delay of up to 4 days (times on a 7-minute grid, so
    several events share a second)."""
    rng = np.random.default_rng(seed)
    rows = []
    for user in range(1, nu + 1):
        for _ in range(int(rng.integers(5, 25))):
            item, t = int(rng.integers(1, ni + 1)), int(rng.integers(0, days * DAY // 420)) * 420
            rows.append((user, item, t, str(rng.choice(["fav", "cart"]))))
            if rng.random() < 0.4 and t + 1 < days * DAY:
                rows.append((user, item, min(t + int(rng.integers(0, 96 * H)), days * DAY - 1), "buy"))
    return rows


def _perturbed(rows, t0: int, seed: int, nu: int, ni: int, end: int) -> list[tuple[int, int, int, str]]:
    """Every event after ``t0`` gets a new item and behavior (a fifth are dropped), new events come after ``t0``,
    and same-second events at ``t0`` are added, buys of the very pairs seen at ``t0`` among them."""
    rng = np.random.default_rng(seed)
    out = []
    for u, i, t, b in rows:
        if t > t0:
            if rng.random() < 0.2:
                continue
            i, b = int(rng.integers(1, ni + 1)), str(rng.choice(BEH))
        out.append((u, i, t, b))
    for _ in range(120):
        out.append((int(rng.integers(1, nu + 1)), int(rng.integers(1, ni + 1)), int(rng.integers(t0 + 1, end)), "buy"))
    for u, i, t, _ in rows:
        if t == t0:
            out += [(u, i, t0, "buy"), (int(rng.integers(1, nu + 1)), i, t0, "cart")]
    return out


def _keyed(ds: Dataset, keep) -> dict[tuple[int, int, int], tuple]:
    """(user, item, time) -> (label, features, history) of each impression whose time passes ``keep``."""
    imps = impressions_within_horizon(ds.interactions, BEH, log_end=int(ds.manifest["params"]["time_window"][1]))
    feats = impression_features(ds, imps, cutoff_time=0, raw=True)
    feats.update({f"b_{k}": v for k, v in impression_features(ds, imps, cutoff_time=0).items()})
    idx = np.flatnonzero(keep(imps.timestamp, imps.timestamp + HORIZON))
    batch, _, _ = make_impression_batch(ds.interactions, imps, idx, max_len=1000)
    out = {}
    for row, s in enumerate(idx):
        hist = int(batch.lengths[row])
        value = (int(imps.label[s]), tuple(tuple(np.atleast_1d(feats[k][s]).tolist()) for k in sorted(feats)),
                 tuple(batch.items[row, :hist].tolist()), tuple(batch.behaviors[row, :hist].tolist()),
                 tuple(batch.timestamps[row, :hist].tolist()))
        key = (int(imps.user_id[s]), int(imps.item_id[s]), int(imps.timestamp[s]))
        assert out.setdefault(key, value) == value  # a fav and a cart of one pair in one second agree
    return out


@pytest.mark.parametrize("seed", [0, 1])
def test_changing_every_later_event_keeps_earlier_labels_and_features(seed):
    """The acceptance test: change every event after a cut (and add events at it) and every impression before
    the cut keeps its features and history, and every impression whose window closes before the cut its label."""
    nu, ni, end = 40, 30, 9 * DAY
    rows = _random_rows(seed, nu, ni)
    base = _dataset(rows, end, nu, ni)
    label_changed = later_changed = 0
    times = np.unique([t for _, _, t, b in rows if b != "buy"])
    for k, q in enumerate([0.5, 0.6, 0.7]):  # cuts after the first 72 h, so some windows close before them
        t0 = int(times[int(q * len(times))])  # an actual impression time
        pert = _dataset(_perturbed(rows, t0, seed * 10 + k, nu, ni, end), end, nu, ni)
        # features and histories: impressions at or before t0 (none reads an event at or after itself)
        before = _keyed(base, lambda t, w, t0=t0: t <= t0)
        after = _keyed(pert, lambda t, w, t0=t0: t <= t0)
        assert len(before) > 50 and set(before) <= set(after)
        assert {key: after[key][1:] for key in before} == {key: v[1:] for key, v in before.items()}
        # labels: impressions whose window [t, t + horizon] closes before t0
        closed = {key: v[0] for key, v in before.items() if key[2] + HORIZON < t0}
        assert closed and all(after[key][0] == y for key, y in closed.items())
        # sanity: the perturbation reaches the labels whose window crosses t0, and later impressions
        label_changed += sum(after[key][0] != v[0] for key, v in before.items() if key[2] + HORIZON >= t0)
        late_b = _keyed(base, lambda t, w, t0=t0: t > t0)
        late_a = _keyed(pert, lambda t, w, t0=t0: t > t0)
        later_changed += sum(late_a[key] != v for key, v in late_b.items() if key in late_a)
    assert label_changed and later_changed


def _ranking_cfg(**ranking):
    return config_from_dict({"model": {"name": "hstu_ranker"},
                             "ranking": {"labels": "behaviors", "window": "horizon", "positive_behaviors": ["buy"],
                                         "min_history": 0, **ranking}})


def test_ranking_data_stamps_the_rule_and_the_split():
    ds = _dataset(_random_rows(3, nu=80), 9 * DAY)
    data = build_ranking_data(_ranking_cfg(), ds)
    rule = data.manifest()["labels"]
    assert rule["impression"] == ["fav", "cart"] and rule["horizon_hours"] == 72.0  # the defaults
    assert rule["log_end"] == 9 * DAY and rule["log_end_from"] == "the source's time_window"
    assert rule["dropped_incomplete_window"] > 0 and data.imps.timestamp.max() + HORIZON < 9 * DAY
    split = data.manifest()["split"]
    ends = data.imps.timestamp + HORIZON
    assert split["label_windows_crossing_a_cut"] == {
        "train_past_t_valid": int((ends[data.split.train] >= split["t_valid"]).sum()),
        "valid_past_t_test": int((ends[data.split.valid] >= split["t_test"]).sum())}
    short = build_ranking_data(_ranking_cfg(horizon_hours=24, impression_behaviors=["cart"]), ds)
    assert short.manifest()["labels"]["horizon_seconds"] == 24 * H and short.manifest()["labels"]["impression"] == ["cart"]
    assert len(short.imps) > len(data.imps) / 2  # more of the log is usable with a shorter horizon, fewer behaviors
    again = config_from_dict(_ranking_cfg().to_dict()).ranking  # a run record's unset keys read back as unset
    assert again.horizon_hours is None and again.impression_behaviors is None
    assert _ranking_cfg(horizon_hours="48").ranking.horizon_hours == 48.0
    with pytest.raises(ConfigError, match="ranking.horizon_hours must be > 0"):  # refused when the recipe loads
        _ranking_cfg(horizon_hours=0)
    with pytest.raises(ConfigError, match="are for ranking.window: horizon, not window: day"):
        build_ranking_data(_ranking_cfg(window="day", horizon_hours=24), ds)


@pytest.mark.realdata
def test_tmall_recipe_task_on_the_staged_log(shared_data, need, tmp_path):
    """The Tmall recipes' task on the full staged log: the stamped counts the recipes' comments quote."""
    folder = shared_data / "cml-tmall-multibehavior-nopv"
    need(folder / "interactions.csv.gz")
    ds = load_dataset(prepare_source("tmall_cml", folder, tmp_path / "tmall"))
    for recipe in ("hstu_ranker", "mtgr", "hpgr"):
        cfg = load_config(Path(__file__).resolve().parents[2] / "configs" / f"{recipe}-tmall.yaml")
        assert cfg.data.path == "data_cache/tmall-cml" and cfg.model["num_behaviors"] == 3
    data = build_ranking_data(cfg, ds)
    rule, split = data.manifest()["labels"], data.manifest()["split"]
    assert rule["dropped_incomplete_window"] == 62342 and rule["log_end"] == 1512316800
    assert split["counts"] == {"train": 90069, "valid": 10009, "test": 11120}
    assert 0.15 < data.imps.label.mean() < 0.2
