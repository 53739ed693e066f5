"""Ranking (CTR) samples: (user, history, candidate, label, time) built from a canonical log.

Public logs rarely ship impressions with click labels, so two derivations are provided (spec §6.1):

- from ratings (MovieLens): every rated item is an impression, labelled ``rating >= threshold``;
- from multi-behaviour logs (Taobao): every ``pv`` is an impression, positive when the same user
  later favs / carts / buys the same item inside the same window (calendar day in the log's local
  time by default, or the same session);
- over a horizon (logs without page views, Tmall of CML): every ``fav`` / ``cart`` is an impression, positive
  when the same user buys the item at most ``horizon`` seconds later; impressions whose horizon runs past the
  end of the log are dropped (:func:`impressions_within_horizon`).

A sample's history is every event of the user with a timestamp *strictly* before the impression, kept
as a range of rows ``[hist_start, hist_end)`` of the (user, time)-sorted interactions table, so nothing
at or after the impression time can reach the model. The derivation rule comes back as a dict
(``ImpressionSamples.rule``) for the run manifest. Everything is vectorised numpy.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from genrec.data.schema import Interactions
from genrec.data.sequences import SeqBatch, event_windows
from genrec.data.sessions import sessionize
from genrec.errors import ConfigError, DataError

DAY = 86400


@dataclass
class ImpressionSamples:
    """Impressions over one interactions table; sample s reads its history from rows [hist_start, hist_end)."""

    event: np.ndarray  # (S,) row of the impression event in the interactions table
    user_id: np.ndarray  # (S,)
    item_id: np.ndarray  # (S,) candidate item
    label: np.ndarray  # (S,) int8, 1 = positive
    timestamp: np.ndarray  # (S,) impression (request) time, seconds
    hist_start: np.ndarray  # (S,) first row of the user's block
    hist_end: np.ndarray  # (S,) first row of the user at or after the impression time
    rule: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.event.shape[0])

    @property
    def history_lengths(self) -> np.ndarray:
        return self.hist_end - self.hist_start

    def subset(self, idx: np.ndarray) -> ImpressionSamples:
        """The samples at ``idx`` (same rule)."""
        return ImpressionSamples(self.event[idx], self.user_id[idx], self.item_id[idx], self.label[idx],
                                 self.timestamp[idx], self.hist_start[idx], self.hist_end[idx], dict(self.rule))

    def history_rows(self, s: int) -> np.ndarray:
        """Interaction-table rows of sample ``s``'s history (one sample; for inspection and tests)."""
        return np.arange(int(self.hist_start[s]), int(self.hist_end[s]))


def _check_sorted(inter: Interactions) -> None:
    u, t = inter.user_id, inter.timestamp
    if len(u) > 1:
        du = np.diff(u)
        if np.any(du < 0) or np.any((du == 0) & (np.diff(t) < 0)):
            raise DataError("impressions: interactions must be sorted by (user_id, timestamp)")


def history_bounds(inter: Interactions) -> tuple[np.ndarray, np.ndarray]:
    """(start, end) per event: the user's rows with a timestamp strictly before the event's.

    Events sharing a timestamp share one history (none of them sees the others): their order inside a
    second is file order, not time, so using it would leak the same-moment outcome.
    """
    _check_sorted(inter)
    u, t = inter.user_id, inter.timestamp
    n = len(u)
    idx = np.arange(n, dtype=np.int64)
    new_user = np.ones(n, dtype=bool)
    new_user[1:] = u[1:] != u[:-1]
    new_time = new_user.copy()
    new_time[1:] |= t[1:] != t[:-1]
    start = np.maximum.accumulate(np.where(new_user, idx, 0))
    end = np.maximum.accumulate(np.where(new_time, idx, 0))
    return start, end


def _samples(inter: Interactions, rows: np.ndarray, label: np.ndarray, min_history: int,
             rule: dict[str, Any]) -> ImpressionSamples:
    start, end = history_bounds(inter)
    keep = (end[rows] - start[rows]) >= min_history
    rows, label = rows[keep], label[keep]
    rule = {**rule, "history": "all events of the user with timestamp < impression time",
            "min_history": int(min_history)}
    return ImpressionSamples(rows, inter.user_id[rows], inter.item_id[rows], label.astype(np.int8),
                             inter.timestamp[rows], start[rows], end[rows], rule)


def impressions_from_ratings(inter: Interactions, threshold: float = 4.0, min_history: int = 0) -> ImpressionSamples:
    """Every rated item is an impression, positive when ``rating >= threshold`` (MovieLens-as-CTR)."""
    if inter.rating is None:
        raise DataError("impressions_from_ratings: the interactions table has no 'rating' column")
    rows = np.arange(len(inter), dtype=np.int64)
    label = inter.rating >= threshold
    return _samples(inter, rows, label, min_history,
                    {"source": "ratings", "impression": "every rated item", "label": f"rating >= {threshold:g}"})


def dense_ids(*keys: np.ndarray) -> np.ndarray:
    """Dense 0-based id of each row's key tuple, in the tuples' sorted order (one lexsort).

    Groups (user, item, window) rows for the labels here and the cross-feature keys in ``features.py``.
    """
    n = keys[0].shape[0]
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    order = np.lexsort(keys[::-1])
    change = np.zeros(n, dtype=bool)
    change[0] = True
    for k in keys:
        ks = k[order]
        change[1:] |= ks[1:] != ks[:-1]
    out = np.empty(n, dtype=np.int64)
    out[order] = np.cumsum(change) - 1
    return out


def impressions_from_behaviors(
    inter: Interactions,
    behavior_names: list[str],
    impression: str = "pv",
    positives: tuple[str, ...] = ("fav", "cart", "buy"),
    window: str = "day",
    tz_offset_hours: float = 8.0,
    session_gap: int = 1800,
    min_history: int = 0,
) -> ImpressionSamples:
    """Each ``impression`` event is a sample; positive iff the same user has a ``positives`` event on the
    same item at a time ``>= `` the impression's, inside the same window.

    window="day": same calendar day in local time (``tz_offset_hours``; UTC+8 for Taobao's China
    log). window="session": same session, from ``inter.session_id`` or, when absent, a new session
    after a gap longer than ``session_gap`` seconds (30 min, spec §6.2; no length cap for labelling).
    An engagement in the same second as the view counts (logs often record both at once).
    """
    if inter.behavior is None:
        raise DataError("impressions_from_behaviors: the interactions table has no 'behavior' column")
    names = list(behavior_names)
    missing = [b for b in (impression, *positives) if b not in names]
    if missing:
        raise ConfigError(f"impressions: behavior(s) {missing} not among the table's levels {names}")
    if window not in ("day", "session"):
        raise ConfigError(f"impressions: window must be 'day' or 'session', got {window!r}")
    _check_sorted(inter)
    beh = inter.behavior.astype(np.int64)
    is_imp = beh == names.index(impression)
    is_pos = np.isin(beh, [names.index(b) for b in positives])
    ts = inter.timestamp
    rule: dict[str, Any] = {"source": "behaviors", "impression": impression, "positives": list(positives),
                            "window": window, "engagement_time": ">= impression time"}
    if window == "day":
        offset = int(round(tz_offset_hours * 3600))
        win = np.floor_divide(ts + offset, DAY)
        rule["tz_offset_hours"] = tz_offset_hours
        rule["label"] = (f"positive iff the user {'/'.join(positives)}s the item later on the same calendar day "
                         f"(UTC{tz_offset_hours:+g})")
    else:
        if inter.session_id is not None:
            win = inter.session_id.astype(np.int64)
            rule["sessions"] = "session_id column"
        else:
            win = sessionize(inter.user_id, ts, gap_seconds=session_gap, max_session_len=None)
            rule["sessions"] = f"gap > {session_gap}s, no length cap"
        rule["label"] = f"positive iff the user {'/'.join(positives)}s the item later in the same session"
    gid = dense_ids(inter.user_id, inter.item_id, win)  # (E,)
    last_engage = np.full(int(gid.max()) + 1 if len(gid) else 0, np.iinfo(np.int64).min, dtype=np.int64)
    np.maximum.at(last_engage, gid[is_pos], ts[is_pos])
    rows = np.flatnonzero(is_imp).astype(np.int64)
    label = last_engage[gid[rows]] >= ts[rows]
    return _samples(inter, rows, label, min_history, rule)


def _levels(names: list[str], wanted: tuple[str, ...], what: str) -> list[int]:
    missing = [b for b in wanted if b not in names]
    if missing or not wanted:
        raise ConfigError(f"impressions: {what} {list(wanted)} must be among the table's levels {names}")
    return [names.index(b) for b in wanted]


def impressions_within_horizon(
    inter: Interactions,
    behavior_names: list[str],
    impressions: tuple[str, ...] = ("fav", "cart"),
    positives: tuple[str, ...] = ("buy",),
    horizon: int = 72 * 3600,
    log_end: int | None = None,
    min_history: int = 0,
) -> ImpressionSamples:
    """Each ``impressions`` event is a sample, positive iff the same user has a ``positives`` event on the same
    item at a time in ``[t, t + horizon]`` (seconds; a buy in the impression's own second counts).

    The label reads only that (user, item)'s events inside the window and the history only events before ``t``,
    so no event after the window can reach a sample. ``log_end`` is the exclusive end of the observed log (None:
    the last event + 1 s); an impression whose window is not wholly observed (``t + horizon >= log_end``) is
    dropped, else the late ones would be biased to negative; the rule counts them (``dropped_incomplete_window``).
    """
    if inter.behavior is None:
        raise DataError("impressions_within_horizon: the interactions table has no 'behavior' column")
    names = list(behavior_names)
    imp_levels = _levels(names, tuple(impressions), "impression behaviors")
    pos_levels = _levels(names, tuple(positives), "positive behaviors")
    if set(imp_levels) & set(pos_levels):
        raise ConfigError(f"impressions: {list(impressions)} and positives {list(positives)} must not overlap")
    if isinstance(horizon, bool) or not isinstance(horizon, (int, np.integer)) or horizon <= 0:
        raise ConfigError(f"impressions: horizon must be a positive whole number of seconds, got {horizon!r}")
    _check_sorted(inter)
    beh, ts = inter.behavior.astype(np.int64), inter.timestamp
    end = int(ts.max()) + 1 if log_end is None else int(log_end)
    pair = dense_ids(inter.user_id, inter.item_id)  # (E,) one id per (user, item)
    key = dense_ids(pair, ts)  # (E,) rank of (pair, time): one sorted axis for "first positive at or after"
    pos_rows = np.flatnonzero(np.isin(beh, pos_levels))
    pos_rows = pos_rows[np.argsort(key[pos_rows], kind="stable")]  # (P,) positives by (pair, time)
    rows = np.flatnonzero(np.isin(beh, imp_levels)).astype(np.int64)
    complete = ts[rows] + horizon < end
    dropped = int(rows.size - complete.sum())
    rows = rows[complete]
    label = np.zeros(rows.size, dtype=bool)
    if pos_rows.size:
        j = np.searchsorted(key[pos_rows], key[rows], side="left")  # first positive of the pair at or after t
        nxt = pos_rows[np.minimum(j, pos_rows.size - 1)]
        label = (j < pos_rows.size) & (pair[nxt] == pair[rows]) & (ts[nxt] <= ts[rows] + horizon)
    hours = horizon / 3600
    rule: dict[str, Any] = {
        "source": "behaviors", "impression": list(impressions), "positives": list(positives), "window": "horizon",
        "horizon_seconds": int(horizon),
        "label": f"positive iff the user {'/'.join(positives)}s the item at or after the impression, at most "
                 f"{hours:g} h later",
        "engagement_time": ">= impression time and <= impression time + horizon",
        "log_end": end,
        "censoring": "impressions with impression time + horizon >= log_end (window not wholly observed) dropped",
        "dropped_incomplete_window": dropped,
    }
    return _samples(inter, rows, label, min_history, rule)


def observed_end(manifest: dict[str, Any], inter: Interactions) -> tuple[int, str]:
    """The exclusive end of the observed log and where it comes from: the window the reader stamped
    (``params.time_window``), else the last event + 1 s. A stated end keeps the dropped impressions a property of
    the dataset rather than of its last event."""
    window = (manifest.get("params") or {}).get("time_window")
    if window:
        return int(window[1]), "the source's time_window"
    return int(inter.timestamp.max()) + 1, "last event + 1 s"


@dataclass
class ImpressionSplit:
    """Indices into an ImpressionSamples for each part, and the cut times."""

    train: np.ndarray
    valid: np.ndarray
    test: np.ndarray
    params: dict[str, Any]


def _cut(ts: np.ndarray, frac: float, by: str) -> int:
    """Time t such that ``ts >= t`` is (about) the last ``frac`` of ``ts``."""
    if by == "span":
        lo, hi = int(ts.min()), int(ts.max())
        return lo + int(math.ceil((1.0 - frac) * (hi - lo)))
    s = np.sort(ts)
    k = min(len(s) - 1, int(math.floor((1.0 - frac) * len(s))))
    return int(s[k])


def temporal_split(
    imps: ImpressionSamples, valid_frac: float = 0.1, test_frac: float = 0.1, by: str = "quantile"
) -> ImpressionSplit:
    """Global temporal split: test = impressions at or after ``t_test`` (the last ``test_frac``),
    validation = the last ``valid_frac`` of the remaining training period, train = the rest.

    by="quantile" cuts at impression-count quantiles (test holds ~10% of impressions, the spec's
    "80/10/10 by impression time"); by="span" cuts the time range itself. Ties at a cut go to the later
    part, so no impression of a part is earlier than one of the part before it.
    """
    if not (0 < valid_frac < 1 and 0 < test_frac < 1):
        raise ConfigError("impression split: valid_frac and test_frac must be in (0, 1)")
    if by not in ("quantile", "span"):
        raise ConfigError(f"impression split: by must be 'quantile' or 'span', got {by!r}")
    if len(imps) == 0:
        raise DataError("impression split: no impressions")
    ts = imps.timestamp
    t_test = _cut(ts, test_frac, by)
    before = ts < t_test
    if not before.any():
        raise DataError("impression split: every impression falls in the test period")
    t_valid = _cut(ts[before], valid_frac, by)
    train = np.flatnonzero(ts < t_valid)
    valid = np.flatnonzero((ts >= t_valid) & before)
    test = np.flatnonzero(~before)
    params = {"split": "temporal_impressions", "by": by, "valid_frac": valid_frac, "test_frac": test_frac,
              "t_valid": t_valid, "t_test": t_test,
              "counts": {"train": len(train), "valid": len(valid), "test": len(test)}}
    return ImpressionSplit(train, valid, test, params)


def make_impression_batch(
    inter: Interactions, imps: ImpressionSamples, idx: np.ndarray, max_len: int
) -> tuple[SeqBatch, torch.Tensor, torch.Tensor]:
    """Padded batch of the last ``max_len`` history events of samples ``idx``, with the impression time as
    the request time. Returns (batch, candidates (B, 1), labels (B,) float)."""
    idx = np.asarray(idx, dtype=np.int64)
    w = event_windows(imps.hist_start[idx], imps.hist_end[idx], max_len)  # (B, L) windows into the log
    beh = None
    if inter.behavior is not None:  # behavior b -> b + 1, 0 = padding
        beh = torch.from_numpy(w.take(inter.behavior, fill=-1).astype(np.int64) + 1)
    batch = SeqBatch(
        items=torch.from_numpy(w.take(inter.item_id).astype(np.int64)),
        timestamps=torch.from_numpy(w.take(inter.timestamp).astype(np.int64)),
        lengths=torch.from_numpy(w.lengths.astype(np.int64)),
        query_time=torch.from_numpy(imps.timestamp[idx].astype(np.int64)),
        behaviors=beh,
    )
    cands = torch.from_numpy(imps.item_id[idx].astype(np.int64))[:, None]
    labels = torch.from_numpy(imps.label[idx].astype(np.float32))
    return batch, cands, labels
