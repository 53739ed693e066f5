"""The multi-behavior logs of the CML paper (Wei et al., WSDM 2022; KHGT processing), as staged as CSV.

Two datasets share one layout, a folder with

- ``interactions.csv.gz``: header ``user_id,item_id,behavior,timestamp``, one row per (user, item, behavior) with
  whole unix seconds (the processed matrices kept one time per pair);
- ``test_buy.csv.gz`` (optional): header ``user_id,item_id``, the published held-out purchase of each test user,
  with no time (the KHGT / CML protocol).

Behavior levels, lowest intent first (stored in the manifest's ``behaviors``):

- ``tmall_cml``: ``fav < cart < buy`` (the page views of the original dataset are missing from this copy);
- ``retailrocket_cml``: ``view < cart < buy``.

Why strict: a processed file has nothing left to clean, so a row that is off means a broken copy. Every row is
checked (integer ids, a known behavior, whole unix seconds inside the log's documented window) and the first bad
one is a one-line error naming the file and line, instead of being dropped. The published split is kept: the
interactions are the training rows and the held-out purchases go to ``heldout.parquet`` in the dataset's own ids
(:func:`genrec.data.schema.load_heldout`), stamped in the manifest's ``published_split``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from genrec.data.prepare import RawLog
from genrec.data.sources import _io
from genrec.data.sources.taobao import parse_window
from genrec.errors import DataError

INTERACTIONS_NAME = "interactions.csv.gz"
HELDOUT_NAME = "test_buy.csv.gz"
_COLUMNS = ("user_id", "item_id", "behavior", "timestamp")
_HELDOUT_COLUMNS = ("user_id", "item_id")


@dataclass(frozen=True)
class CMLLog:
    """One staged CML dataset: its source name, behavior levels (lowest first) and documented time window."""

    name: str
    behaviors: tuple[str, ...]
    window: tuple[int, int]  # [start, end) unix seconds, from the dataset's documentation
    tz_hours: int  # the log's local time (how its window is documented), for messages
    published_split: str  # what the held-out file is, for the manifest


TMALL = CMLLog("tmall_cml", ("fav", "cart", "buy"), (1511539200, 1512316800), 8,  # [2017-11-25, 12-04) UTC+8
               "KHGT/CML: one held-out purchase per test user (10,000 users), no timestamp; its item never occurs "
               "in that user's training rows")
RETAILROCKET = CMLLog("retailrocket_cml", ("view", "cart", "buy"), (1430611200, 1442620800), 0,  # [05-03, 09-19) UTC
                      "CML/SSLRec: one held-out purchase per user, no timestamp; its item never occurs in that "
                      "user's training rows")


def _day(seconds: int, tz_hours: int) -> str:
    return datetime.fromtimestamp(seconds, timezone(timedelta(hours=tz_hours))).strftime("%Y-%m-%d")


def _files(path: Path) -> tuple[Path, Path | None]:
    """The interactions file and the held-out file beside it (None when absent), from a folder or the file."""
    if path.is_dir():
        inter = path / INTERACTIONS_NAME
        if not inter.exists():
            raise DataError(f"{path}: no {INTERACTIONS_NAME} in this folder")
    else:
        inter = _io.require_file(path)
    held = inter.parent / HELDOUT_NAME
    return inter, (held if held.exists() and held != inter else None)


def _checked_times(path: Path, table: pa.Table, window: tuple[int, int] | None, tz_hours: int) -> np.ndarray:
    """(n,) int64 whole unix seconds, each inside ``window`` ([start, end)) unless it is None."""
    ts = _io.unsigned_integers(path, table, "timestamp", "whole unix seconds")
    if window is not None:
        inside = pa.array((ts >= window[0]) & (ts < window[1]))
        span = f"{_day(window[0], tz_hours)}..{_day(window[1] - 1, tz_hours)} (UTC{tz_hours:+d})"
        _io.first_bad_line(path, inside, pa.array(ts), f"timestamp {{value}} lies outside the log's window {span}; "
                           "time_window none skips this check")
    return ts


def read_cml(path: str | Path, log: CMLLog, time_window: object = "documented") -> RawLog:
    """Read one CML folder (or its ``interactions.csv.gz``) with the levels and window of ``log``.

    ``time_window``: ``"documented"`` (the dataset's own window), ``"START,END"`` unix seconds, or ``"none"``.
    """
    inter_path, held_path = _files(Path(path))
    window = log.window if time_window == "documented" else parse_window(time_window)
    table = _io.read_text_columns(inter_path, _COLUMNS)
    user = _io.unsigned_integers(inter_path, table, "user_id", "an unsigned integer id")
    item = _io.unsigned_integers(inter_path, table, "item_id", "an unsigned integer id")
    behavior = pc.utf8_trim_whitespace(_io.column_array(table, "behavior"))
    known = pc.is_in(behavior, value_set=pa.array(log.behaviors, pa.string()))
    _io.first_bad_line(inter_path, known, behavior, f"behavior {{value!r}} is not one of {', '.join(log.behaviors)}")
    ts = _checked_times(inter_path, table, window, log.tz_hours)
    heldout = None
    params: dict[str, object] = {"time_window": list(window) if window else None, "published_split": None}
    if held_path is not None:
        held = _io.read_text_columns(held_path, _HELDOUT_COLUMNS)
        heldout = pa.table({"user": _io.unsigned_integers(held_path, held, "user_id", "an unsigned integer id"),
                            "item": _io.unsigned_integers(held_path, held, "item_id", "an unsigned integer id")})
        params["published_split"] = HELDOUT_NAME
    return RawLog(
        user=user,
        item=item,
        timestamp=ts,
        behavior=behavior,
        behavior_order=list(log.behaviors),
        source=log.name,
        sources=[inter_path] + ([held_path] if held_path is not None else []),
        params=params,
        label=str(inter_path),
        heldout=heldout,
        heldout_protocol=log.published_split if held_path is not None else "",
    )


def read_tmall_cml(path: str | Path, *, time_window: object = "documented") -> RawLog:
    """Tmall of CML / KHGT (Taobao UserBehavior window, 2017-11-25..12-03): ``fav < cart < buy``, no page views."""
    return read_cml(path, TMALL, time_window)


def read_retailrocket_cml(path: str | Path, *, time_window: object = "documented") -> RawLog:
    """RetailRocket of CML / SSLRec (2015-05-03..09-18): ``view < cart < buy``."""
    return read_cml(path, RETAILROCKET, time_window)
