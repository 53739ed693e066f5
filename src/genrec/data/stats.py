"""Summary statistics of a prepared dataset.

The numbers that decide how a model should be configured (maximum sequence length, whether
sessions carry signal, how sparse the matrix is) and that papers report, computed the same way
for every dataset so they can be compared side by side. Two of them say which kind of model can win
before any is trained: the item frequency (a model that must learn each item's identity, such as a
semantic-ID generator, has little to learn from items seen once) and the repeat share (how often a
user's event is on an item that user already touched, which a recency heuristic answers for free).
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

import numpy as np

from genrec.data.schema import Dataset


def distribution(values: np.ndarray) -> dict[str, float]:
    """min, p25, median, mean, p75, p90, max of a 1-D array (empty -> zeros)."""
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0:
        return dict.fromkeys(("min", "p25", "median", "mean", "p75", "p90", "max"), 0.0)
    q = np.percentile(v, [25, 50, 75, 90])
    return {
        "min": float(v.min()),
        "p25": float(q[0]),
        "median": float(q[1]),
        "mean": float(v.mean()),
        "p75": float(q[2]),
        "p90": float(q[3]),
        "max": float(v.max()),
    }


def repeat_fraction(user_id: np.ndarray, item_id: np.ndarray) -> float:
    """Share of interactions whose (user, item) pair already occurred earlier in that user's sequence.

    Interactions are sorted by (user, timestamp), so the first occurrence of a pair is its earliest one.
    """
    if len(user_id) == 0:
        return 0.0
    key = np.asarray(user_id, dtype=np.int64) * (int(np.max(item_id)) + 1) + np.asarray(item_id, dtype=np.int64)
    _, first = np.unique(key, return_index=True)
    return 1.0 - first.size / key.size


def _iso(t: int) -> str:
    return datetime.fromtimestamp(int(t), tz=timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


def dataset_stats(ds: Dataset) -> dict[str, Any]:
    """Counts, density, sequence/session length distributions, behavior counts, time range."""
    inter = ds.interactions
    n = len(inter)
    users, items = ds.num_users, ds.num_items
    seq_len = np.bincount(inter.user_id)[1:]
    seq_len = seq_len[seq_len > 0]
    out: dict[str, Any] = {
        "name": ds.manifest.get("name"),
        "fingerprint": ds.fingerprint,
        "users": users,
        "items": items,
        "interactions": n,
        "density": n / (users * items) if users and items else 0.0,
        "sequence_length": distribution(seq_len),
    }
    item_freq = np.bincount(inter.item_id)[1:]
    item_freq = item_freq[item_freq > 0]  # (items with at least one interaction,)
    out["item_frequency"] = distribution(item_freq)
    out["items_seen_once_fraction"] = float((item_freq == 1).mean()) if item_freq.size else 0.0
    out["repeat_fraction"] = repeat_fraction(inter.user_id, inter.item_id)
    if inter.session_id is not None:
        sess = inter.session_id
        _, sess_len = np.unique(sess, return_counts=True)
        change = np.concatenate([[True], (sess[1:] != sess[:-1]) | (inter.user_id[1:] != inter.user_id[:-1])])
        per_user = np.bincount(inter.user_id[change])[1:]
        per_user = per_user[per_user > 0]
        out["sessions"] = {
            "count": int(sess_len.size),
            "length": distribution(sess_len),
            "per_user": distribution(per_user),
            "singleton_fraction": float((sess_len == 1).mean()) if sess_len.size else 0.0,
        }
    if inter.behavior is not None:
        names = ds.behavior_names or []
        counts = np.bincount(inter.behavior.astype(np.int64), minlength=len(names))
        out["behaviors"] = {(names[k] if k < len(names) else str(k)): int(c) for k, c in enumerate(counts)}
    if inter.rating is not None:
        out["rating"] = distribution(inter.rating[~np.isnan(inter.rating)])
    t0, t1 = int(inter.timestamp.min()), int(inter.timestamp.max())
    out["time"] = {"min": t0, "max": t1, "start": _iso(t0), "end": _iso(t1), "span_days": (t1 - t0) / 86400}
    return out


def _fmt_dist(d: dict[str, float]) -> str:
    def f(x: float) -> str:
        return f"{x:.0f}" if float(x).is_integer() else f"{x:.1f}"

    return "  ".join(f"{k} {f(v)}" for k, v in d.items())


def format_stats(d: dict[str, Any]) -> str:
    """Human-readable multi-line rendering of :func:`dataset_stats`."""
    lines = []
    if d.get("name"):
        lines.append(f"dataset        {d['name']}  (fingerprint {d.get('fingerprint')})")
    lines += [
        f"users          {d['users']:,}",
        f"items          {d['items']:,}",
        f"interactions   {d['interactions']:,}",
        f"density        {d['density']:.6f}",
        f"sequence len   {_fmt_dist(d['sequence_length'])}",
    ]
    if "item_frequency" in d:
        lines += [
            f"item freq      {_fmt_dist(d['item_frequency'])}  (seen once {d['items_seen_once_fraction']:.3f})",
            f"repeats        {d['repeat_fraction']:.3f} of interactions are on an item the user already touched",
        ]
    if "sessions" in d:
        s = d["sessions"]
        lines += [
            f"sessions       {s['count']:,}  (singleton fraction {s['singleton_fraction']:.3f})",
            f"session len    {_fmt_dist(s['length'])}",
            f"sessions/user  {_fmt_dist(s['per_user'])}",
        ]
    if "behaviors" in d:
        lines.append("behaviors      " + "  ".join(f"{k} {v:,}" for k, v in d["behaviors"].items()))
    if "rating" in d:
        lines.append(f"rating         {_fmt_dist(d['rating'])}")
    t = d["time"]
    lines.append(f"time           {t['start']} .. {t['end']} UTC  ({t['span_days']:.1f} days)")
    return "\n".join(lines)
