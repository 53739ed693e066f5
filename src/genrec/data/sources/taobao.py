"""Taobao UserBehavior (Tianchi dataset 649): multi-behavior clicks, favorites, carts, buys.

The official log has a few timestamps far outside its nine-day window (clock errors); papers drop
them, so the reader filters to the official window by default and records how many it dropped.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from genrec.data.prepare import RawLog
from genrec.data.sources import _io
from genrec.errors import ConfigError, DataError

BEHAVIOR_ORDER = ["pv", "fav", "cart", "buy"]
OFFICIAL_WINDOW = (1511539200, 1512316800)  # [2017-11-25, 2017-12-04) UTC
_NAMES = ["user", "item", "category", "behavior", "timestamp"]
_TYPES = {"user": pa.int64(), "item": pa.int64(), "category": pa.int64(), "behavior": pa.string(),
          "timestamp": pa.int64()}  # fmt: skip


def most_frequent(keys: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each distinct key, its most frequent value (ties -> smallest value), vectorised."""
    order = np.lexsort((values, keys))
    k, v = keys[order], values[order]
    start = np.concatenate([[True], (k[1:] != k[:-1]) | (v[1:] != v[:-1])])
    idx = np.flatnonzero(start)
    cnt = np.diff(np.append(idx, k.shape[0]))
    rk, rv = k[idx], v[idx]
    best = np.lexsort((rv, -cnt, rk))
    rk, rv = rk[best], rv[best]
    first = np.concatenate([[True], rk[1:] != rk[:-1]])
    return rk[first], rv[first]


def parse_window(time_window: object) -> tuple[int, int] | None:
    """``(start, end)`` unix seconds from ``"start,end"`` or a pair; None for None / False / ``"none"``."""
    if time_window is None or time_window is False or time_window == "none":
        return None
    if isinstance(time_window, str):
        parts = time_window.split(",")
    else:
        parts = list(time_window)  # type: ignore[call-overload]
    try:
        start, end = (int(x) for x in parts)
    except (TypeError, ValueError):
        raise ConfigError(f"time_window must be two unix-second integers 'start,end', got {time_window!r}") from None
    if end <= start:
        raise ConfigError(f"time_window end {end} must be after start {start}")
    return start, end


def read_taobao(path: str | Path, *, time_window: object = OFFICIAL_WINDOW) -> RawLog:
    """Read ``UserBehavior.csv`` (no header; plain, .gz or zip). ``time_window=None`` keeps every row."""
    p = Path(path)
    if p.is_dir():
        cands = sorted(p.glob("UserBehavior*.csv*")) + sorted(p.glob("UserBehavior*.zip"))
        if not cands:
            raise DataError(f"{p}: no UserBehavior*.csv(.gz) in this folder")
        p = cands[0]
    p = _io.require_file(p)
    window = parse_window(time_window)
    table = _io.read_csv(p, column_names=_NAMES, column_types=_TYPES, quote_char=False)
    if table.num_rows == 0:
        raise DataError(f"{p}: no rows")
    counts = {}
    if window is not None:
        ts = table.column("timestamp")
        inside = pc.and_(pc.greater_equal(ts, window[0]), pc.less(ts, window[1]))
        inside = pc.fill_null(inside, True)  # missing times are dropped (and counted) by prepare
        kept = table.filter(inside)
        counts["dropped_time_window"] = table.num_rows - kept.num_rows
        if kept.num_rows == 0:
            raise DataError(f"{p}: no rows inside time_window {window[0]}..{window[1]}")
        table = kept
    ok = pc.and_(pc.is_valid(table.column("item")), pc.is_valid(table.column("category")))
    item = pc.filter(table.column("item"), ok).to_numpy()
    cat = pc.filter(table.column("category"), ok).to_numpy()
    items_k, cats_k = most_frequent(item.astype(np.int64), cat.astype(np.int64))
    items = pa.table({"external_id": pa.array(items_k.astype(str).tolist()), "category_id": pa.array(cats_k)})
    return RawLog(
        user=table.column("user"),
        item=table.column("item"),
        timestamp=table.column("timestamp"),
        behavior=table.column("behavior"),
        behavior_order=list(BEHAVIOR_ORDER),
        items=items,
        source="taobao",
        sources=[p],
        params={"time_window": list(window) if window else None},
        counts=counts,
        label=str(p),
    )
