"""Per-impression features for feature-hungry rankers (MTGR): user profile ids and cross features.

``impression_features(dataset, imps, cutoff_time)`` returns ``{name: array}``, every array indexed by
sample ``s`` (first dimension ``S = len(imps)``), so a trainer can slice a batch with the batch's
sample indices. All values are int64 embedding ids; 0 always means "missing / no earlier data".

No-leakage rule: every event-derived feature of impression ``s`` reads only events with
``timestamp < imps.timestamp[s]`` (strictly; events in the same second as the impression are excluded,
like ``history_bounds``). No feature uses a global statistic over the log (no vocabulary, mean or
quantile fitted on events), so events after ``cutoff_time`` can never reach an impression before it;
``cutoff_time`` is validated and only recorded. Static side tables (``dataset.users`` profile columns,
``dataset.items`` categories) are not events and are used as they are.

Features (see ``FEATURES`` for the vocabulary sizes):

- ``profile`` (S, F): one id per user-profile field of ``dataset.users`` (every column other than
  ``user_id`` / ``external_id``, values factorised to 1..V); when there is no such column, F = 1 and
  the field is the raw user id (the model hashes ids into its own bucket table).
- ``cand_category`` (S,): the candidate's category id (1..V; 0 = none), from ``items.category_id`` or
  else the first path of ``items.categories``.
- cross / statistics features, each bucketised (see ``count_bucket``, ``gap_bucket``, ``rate_bucket``):
  ``ui_count`` the user's earlier events on the candidate item; ``ui_gap`` seconds since the user's
  last such event; ``uc_count`` / ``uc_gap`` the same for the candidate's category; ``uc_pos_rate``
  the share of positive events among the user's earlier events in that category; ``u_pos_rate`` the
  share of positive events among all the user's earlier events; ``i_pop`` the candidate's global
  count of earlier events (all users); ``i_pos_rate`` the share of positive events among them.

"Positive event" = an event that is itself an engagement, judged at its own timestamp: a behaviour
in ``imps.rule["positives"]`` (multi-behaviour logs), or ``rating >= threshold`` (ratings, threshold
parsed from ``imps.rule["label"]``, default 4). Derived impression labels are never used: on
behaviour logs a label depends on events after the impression (later cart/buy the same day).
Everything is vectorised numpy: one lexsort + searchsorted per key, no Python loop over samples.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np
import pyarrow as pa

from genrec.data.impressions import ImpressionSamples, dense_ids
from genrec.data.schema import Dataset, Interactions
from genrec.errors import ConfigError, DataError

COUNT_BUCKETS = 32  # 0 = none, 1 + floor(log2 n) for n >= 1, clipped
GAP_BUCKETS = 32  # 0 = never, 1 + floor(log2 seconds), clipped
RATE_BUCKETS = 11  # 0 = no earlier events, 1 + min(floor(10 * rate), 9)

#: cross / statistics features carried by the candidate token, with their vocabulary sizes
CROSS_FEATURES: dict[str, int] = {
    "ui_count": COUNT_BUCKETS,
    "ui_gap": GAP_BUCKETS,
    "uc_count": COUNT_BUCKETS,
    "uc_gap": GAP_BUCKETS,
    "uc_pos_rate": RATE_BUCKETS,
    "u_pos_rate": RATE_BUCKETS,
    "i_pop": COUNT_BUCKETS,
    "i_pos_rate": RATE_BUCKETS,
}
#: every key ``impression_features`` returns (profile and cand_category are raw ids the model hashes)
FEATURES: tuple[str, ...] = ("profile", "cand_category", *CROSS_FEATURES)

_RESERVED_USER_COLUMNS = ("user_id", "external_id")


def count_bucket(n: np.ndarray) -> np.ndarray:
    """0 for n == 0, else 1 + floor(log2 n), clipped to COUNT_BUCKETS - 1."""
    n = np.asarray(n, dtype=np.int64)
    b = 1 + np.floor(np.log2(np.maximum(n, 1))).astype(np.int64)
    return np.where(n > 0, np.minimum(b, COUNT_BUCKETS - 1), 0)


def gap_bucket(gap: np.ndarray) -> np.ndarray:
    """0 for "never" (gap < 0), else 1 + floor(log2 max(gap, 1)) seconds, clipped to GAP_BUCKETS - 1."""
    gap = np.asarray(gap, dtype=np.int64)
    b = 1 + np.floor(np.log2(np.maximum(gap, 1))).astype(np.int64)
    return np.where(gap >= 0, np.minimum(b, GAP_BUCKETS - 1), 0)


def rate_bucket(pos: np.ndarray, total: np.ndarray) -> np.ndarray:
    """0 when total == 0, else 1 + min(floor(10 * pos / total), 9)."""
    pos = np.asarray(pos, dtype=np.float64)
    total = np.asarray(total, dtype=np.int64)
    rate = pos / np.maximum(total, 1)
    b = 1 + np.minimum(np.floor(10.0 * rate), 9).astype(np.int64)
    return np.where(total > 0, b, 0)


def stats_before(ev_key: np.ndarray, ev_time: np.ndarray, ev_pos: np.ndarray, q_key: np.ndarray,
                 q_time: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For each query (key, time): over the events with the same key and ``timestamp < time``, return
    (count, number of positive events, latest timestamp or -1 when there is none).

    Keys are non-negative int64 ids shared by events and queries. Events are sorted once by
    (key, time); each query is two ``searchsorted`` calls on the combined key ``key * R + time rank``.
    """
    ev_key = np.asarray(ev_key, dtype=np.int64)
    q_key = np.asarray(q_key, dtype=np.int64)
    if len(ev_key) == 0:
        z = np.zeros(len(q_key), dtype=np.int64)
        return z, z.copy(), z - 1
    order = np.lexsort((ev_time, ev_key))
    k, t = ev_key[order], np.asarray(ev_time, dtype=np.int64)[order]
    uniq = np.unique(t)
    R = len(uniq) + 1
    kmax = int(max(k.max(), q_key.max() if len(q_key) else 0)) + 1
    if kmax * R >= 2**62:
        raise DataError("features: too many distinct keys x timestamps for the combined sort key")
    comb = k * R + np.searchsorted(uniq, t)  # ascending: sorted by (key, time)
    q_rank = np.searchsorted(uniq, np.asarray(q_time, dtype=np.int64), side="left")  # distinct times < q
    hi = np.searchsorted(comb, q_key * R + q_rank, side="left")
    lo = np.searchsorted(comb, q_key * R, side="left")
    count = hi - lo
    csum = np.concatenate([[0], np.cumsum(np.asarray(ev_pos, dtype=np.int64)[order])])
    pos = csum[hi] - csum[lo]
    last = np.where(count > 0, t[np.maximum(hi - 1, 0)], -1)
    return count.astype(np.int64), pos.astype(np.int64), last.astype(np.int64)


def _factorize(values: list[Any]) -> np.ndarray:
    """1..V ids of a column's values in sorted order of their string form; None / '' -> 0."""
    keys = ["" if v is None else str(v) for v in values]
    uniq = sorted({k for k in keys if k != ""})
    index = {k: i + 1 for i, k in enumerate(uniq)}
    return np.array([index.get(k, 0) for k in keys], dtype=np.int64)


def profile_columns(users: pa.Table | None) -> list[str]:
    """User-profile fields of a users table: every column but ``user_id`` / ``external_id``."""
    if users is None:
        return []
    return [c for c in users.column_names if c not in _RESERVED_USER_COLUMNS]


def user_profile_table(dataset: Dataset) -> tuple[np.ndarray, list[str]]:
    """(num_users + 1, F) int64 profile ids indexed by user id, and the field names.

    Without profile columns the single field is the user id itself (``["user_id"]``).
    """
    n = dataset.num_users
    cols = profile_columns(dataset.users)
    if not cols:
        return np.arange(n + 1, dtype=np.int64)[:, None], ["user_id"]
    assert dataset.users is not None
    uid = dataset.users.column("user_id").to_numpy().astype(np.int64)
    if len(uid) and (uid.min() < 1 or uid.max() > n):
        raise DataError(f"features: users table has user ids outside 1..{n}")
    out = np.zeros((n + 1, len(cols)), dtype=np.int64)
    for f, c in enumerate(cols):
        out[uid, f] = _factorize(dataset.users.column(c).to_pylist())
    return out, cols


def item_category_table(dataset: Dataset) -> tuple[np.ndarray, str]:
    """(num_items + 1,) category id per item (0 = none) and where it came from."""
    n = dataset.num_items
    out = np.zeros(n + 1, dtype=np.int64)
    items = dataset.items
    if items is None or "item_id" not in items.column_names:
        return out, "none"
    iid = items.column("item_id").to_numpy().astype(np.int64)
    ok = (iid >= 1) & (iid <= n)
    if "category_id" in items.column_names:
        raw, source = items.column("category_id").to_pylist(), "items.category_id"
    elif "categories" in items.column_names:
        raw = [None if v is None else str(v).split(" | ")[0].strip() for v in items.column("categories").to_pylist()]
        source = "items.categories (first path)"
    else:
        return out, "none"
    ids = _factorize(raw)
    out[iid[ok]] = ids[ok]
    return out, source


def _positive_events(dataset: Dataset, imps: ImpressionSamples) -> tuple[np.ndarray, str]:
    """(E,) bool: events that are engagements in their own right (never a derived impression label)."""
    inter = dataset.interactions
    rule = imps.rule or {}
    names = dataset.behavior_names
    source = rule.get("source")
    if inter.behavior is not None and names and source != "ratings":
        positives = rule.get("positives")
        if positives:
            levels = [names.index(b) for b in positives if b in names]
            return np.isin(inter.behavior.astype(np.int64), levels), f"behavior in {list(positives)}"
        return inter.behavior.astype(np.int64) > 0, "behavior level > 0"
    if inter.rating is not None and source != "behaviors":
        threshold = 4.0
        m = re.search(r"rating\s*>=\s*([-+0-9.eE]+)", str(rule.get("label", "")))
        if m:
            threshold = float(m.group(1))
        return inter.rating >= threshold, f"rating >= {threshold:g}"
    return np.zeros(len(inter), dtype=bool), "none (no behavior or rating column)"


def describe_features(dataset: Dataset, imps: ImpressionSamples) -> dict[str, Any]:
    """What ``impression_features`` computes on this dataset (for a run manifest)."""
    _, fields = user_profile_table(dataset)
    _, cat_source = item_category_table(dataset)
    _, pos_rule = _positive_events(dataset, imps)
    return {"profile_fields": fields, "category_source": cat_source, "positive_event": pos_rule,
            "cross_features": dict(CROSS_FEATURES),
            "rule": "event features use only events with timestamp < impression time; no global statistic"}


def impression_features(dataset: Dataset, imps: ImpressionSamples, cutoff_time: int,
                        raw: bool = False) -> dict[str, np.ndarray]:
    """Features of every impression, leakage-free (module docstring). ``raw=True`` returns the
    un-bucketised counts / gaps (-1 = never) / positive counts instead of the cross-feature ids, for
    inspection and tests."""
    if isinstance(cutoff_time, bool) or not isinstance(cutoff_time, (int, np.integer)):
        raise ConfigError(f"impression_features: cutoff_time must be an int timestamp, got {cutoff_time!r}")
    inter: Interactions = dataset.interactions
    S = len(imps)
    if S and (imps.user_id.max() > dataset.num_users or imps.item_id.max() > dataset.num_items):
        raise DataError("impression_features: impressions reference ids outside the dataset")
    u_ev, i_ev, t_ev = inter.user_id, inter.item_id, inter.timestamp
    u_q, i_q, t_q = imps.user_id.astype(np.int64), imps.item_id.astype(np.int64), imps.timestamp.astype(np.int64)
    pos_ev, _ = _positive_events(dataset, imps)
    cat_table, _ = item_category_table(dataset)
    c_ev, c_q = cat_table[i_ev], cat_table[i_q]
    profile, _ = user_profile_table(dataset)

    def keyed(ev_cols: tuple[np.ndarray, ...], q_cols: tuple[np.ndarray, ...]):
        ids = dense_ids(*(np.concatenate([e, q]) for e, q in zip(ev_cols, q_cols)))
        return stats_before(ids[: len(u_ev)], t_ev, pos_ev, ids[len(u_ev):], t_q)

    ui_n, _, ui_last = keyed((u_ev, i_ev), (u_q, i_q))
    uc_n, uc_pos, uc_last = keyed((u_ev, c_ev), (u_q, c_q))
    no_cat = c_q == 0  # "category 0" is not a category: nothing to cross with
    uc_n, uc_pos, uc_last = np.where(no_cat, 0, uc_n), np.where(no_cat, 0, uc_pos), np.where(no_cat, -1, uc_last)
    u_n, u_pos, _ = keyed((u_ev,), (u_q,))
    i_n, i_pos, _ = keyed((i_ev,), (i_q,))
    ui_gap = np.where(ui_last >= 0, t_q - ui_last, -1)
    uc_gap = np.where(uc_last >= 0, t_q - uc_last, -1)
    out = {"profile": profile[u_q], "cand_category": c_q.astype(np.int64)}
    if raw:
        out.update(ui_count=ui_n, ui_gap=ui_gap, uc_count=uc_n, uc_gap=uc_gap, uc_pos=uc_pos, u_count=u_n,
                   u_pos=u_pos, i_pop=i_n, i_pos=i_pos)
        return out
    out.update(
        ui_count=count_bucket(ui_n), ui_gap=gap_bucket(ui_gap),
        uc_count=count_bucket(uc_n), uc_gap=gap_bucket(uc_gap), uc_pos_rate=rate_bucket(uc_pos, uc_n),
        u_pos_rate=rate_bucket(u_pos, u_n),
        i_pop=count_bucket(i_n), i_pos_rate=rate_bucket(i_pos, i_n),
    )
    assert all(v.shape[0] == S for v in out.values())
    return out
