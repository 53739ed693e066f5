"""Canonical tables and their checks.

A prepared dataset is a folder with three files:

- ``interactions.parquet``: ``user_id:int64, item_id:int64, timestamp:int64`` (seconds) and the
  optional columns ``behavior:int8``, ``rating:float32``, ``session_id:int64``. Rows are sorted by
  ``user_id`` then ``timestamp`` (ties keep the raw file order). Ids are ``1..N`` (0 = padding).
- ``items.parquet``: ``item_id:int64, external_id:string`` plus optional ``title``, ``categories``
  (a ``" > "``-joined path, several paths separated by ``" | "``), ``category_id:int64``.
- ``manifest.json``: sources (path + sha256), every preprocessing parameter, counts, behavior level
  names (when present) and a ``fingerprint`` that result files repeat.

``users.parquet`` (``user_id, external_id``) is written too so recommendations can name real users, and
``heldout.parquet`` (``user_id, item_id``) when the source ships a published held-out split without times (the
manifest's ``published_split`` says what it is; :func:`load_heldout`).
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from genrec.errors import DataError

INTERACTIONS_FILE = "interactions.parquet"
ITEMS_FILE = "items.parquet"
USERS_FILE = "users.parquet"
MANIFEST_FILE = "manifest.json"
HELDOUT_FILE = "heldout.parquet"

CANONICAL_FILES = (INTERACTIONS_FILE, ITEMS_FILE, USERS_FILE, MANIFEST_FILE, HELDOUT_FILE)

REQUIRED_COLUMNS = ("user_id", "item_id", "timestamp")
OPTIONAL_COLUMNS = {"behavior": np.int8, "rating": np.float32, "session_id": np.int64, "label": np.int8}


@dataclass
class Interactions:
    """Column arrays of the interactions table, all of equal length, sorted by (user, time)."""

    user_id: np.ndarray  # (E,) int64, 1..num_users
    item_id: np.ndarray  # (E,) int64, 1..num_items
    timestamp: np.ndarray  # (E,) int64 seconds
    behavior: np.ndarray | None = None  # (E,) int8 level index (0 = lowest)
    rating: np.ndarray | None = None  # (E,) float32
    session_id: np.ndarray | None = None  # (E,) int64, global session index
    label: np.ndarray | None = None  # (E,) int8

    def __len__(self) -> int:
        return int(self.user_id.shape[0])

    def columns(self) -> dict[str, np.ndarray]:
        out = {"user_id": self.user_id, "item_id": self.item_id, "timestamp": self.timestamp}
        for name in OPTIONAL_COLUMNS:
            value = getattr(self, name)
            if value is not None:
                out[name] = value
        return out

    def validate(self, where: str = "interactions") -> None:
        n = len(self)
        for name, col in self.columns().items():
            if col.shape != (n,):
                raise DataError(f"{where}: column '{name}' has {col.shape[0]} rows, expected {n}")
        if n == 0:
            raise DataError(f"{where}: no interactions")
        if self.user_id.min() < 1 or self.item_id.min() < 1:
            raise DataError(f"{where}: ids must start at 1 (0 is padding)")


@dataclass
class Dataset:
    """A prepared dataset loaded into memory."""

    interactions: Interactions
    items: pa.Table
    users: pa.Table | None
    manifest: dict[str, Any]
    path: Path | None = None

    @property
    def num_items(self) -> int:
        return int(self.manifest["counts"]["items"])

    @property
    def num_users(self) -> int:
        return int(self.manifest["counts"]["users"])

    @property
    def fingerprint(self) -> str:
        return str(self.manifest["fingerprint"])

    @property
    def behavior_names(self) -> list[str] | None:
        return self.manifest.get("behaviors")

    def item_external_ids(self) -> list[str]:
        """External item ids indexed by internal id (index 0 is the padding placeholder)."""
        ids = self.items.column("item_id").to_numpy()
        ext = self.items.column("external_id").to_pylist()
        out = [""] * (self.num_items + 1)
        for i, e in zip(ids, ext):
            out[int(i)] = str(e)
        return out

    def user_external_ids(self) -> list[str]:
        out = [""] * (self.num_users + 1)
        if self.users is None:
            for u in range(1, self.num_users + 1):
                out[u] = str(u)
            return out
        for u, e in zip(self.users.column("user_id").to_numpy(), self.users.column("external_id").to_pylist()):
            out[int(u)] = str(e)
        return out


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            block = f.read(chunk)
            if not block:
                break
            h.update(block)
    return h.hexdigest()


EARLIEST_UNIX_TIME = 631_152_000  # 1990-01-01 UTC: a column mostly later than this holds unix times
FUTURE_MARGIN = 366 * 86400  # a timestamp more than a year ahead of the clock is no time that happened
MAX_SECONDS = 2.0**62  # beyond this a float "time" cannot be an int64 of seconds (and no date at all)


def _date(seconds: int) -> str:
    try:
        return datetime.fromtimestamp(seconds, timezone.utc).strftime("%Y-%m-%d")
    except (OverflowError, OSError, ValueError):
        return "after the year 9999"


def check_float_seconds(values: np.ndarray, where: str, row: Callable[[int], str]) -> None:
    """Refuse infinite float times and ones beyond int64 seconds (NaN is a missing value: the caller's).

    ``row(k)`` names the ``k``-th value's row for the message, so the user can find it.
    """
    bad = ~np.isnan(values) & ~(np.abs(values) < MAX_SECONDS)
    if bad.any():
        k = int(np.flatnonzero(bad)[0])
        raise DataError(f"{where}: {row(k)}: timestamp {float(values[k])!r} is not a unix time in seconds")


def check_timestamps(seconds: np.ndarray, where: str, row: Callable[[int], str], hint: str = "") -> None:
    """Refuse implausible unix seconds, naming the first such row (one line).

    A time more than a year ahead of the clock cannot be seconds (unix milliseconds read as seconds land in
    the year 50,000). In a column of unix times (most values after 1990), a value a hundred times smaller than
    the column's median is one read at the wrong scale (seconds among milliseconds, divided by 1000, land in
    January 1970). A column that holds no unix time at all (sequence positions, relative times) keeps its small
    values, and so does a log reaching back before 1990. ``hint`` says how the reader chose the unit.
    """
    if not len(seconds):
        return
    latest = int(time.time()) + FUTURE_MARGIN
    future = seconds > latest
    if future.any():
        k = int(np.flatnonzero(future)[0])
        raise DataError(f"{where}: {row(k)}: timestamp {int(seconds[k])} ({_date(int(seconds[k]))}) is after "
                        f"{_date(latest)}, a year from now: unix milliseconds (or a mix of seconds and "
                        f"milliseconds) read as seconds?{hint}")
    early = seconds < EARLIEST_UNIX_TIME
    if not early.any() or 2 * int(np.count_nonzero(early)) >= len(seconds):
        return
    typical = float(np.median(seconds))
    scale = seconds < typical / 100
    if scale.any():
        k = int(np.flatnonzero(scale)[0])
        raise DataError(f"{where}: {row(k)}: timestamp {int(seconds[k])} ({_date(int(seconds[k]))}) is a hundred "
                        f"times smaller or more than the column's median ({_date(int(typical))}): seconds and "
                        f"milliseconds mixed?{hint}")


def fingerprint_of(inter: Interactions, params: dict[str, Any]) -> str:
    """A short content hash of the canonical table and the parameters that produced it."""
    h = hashlib.sha256()
    for name, col in inter.columns().items():
        h.update(name.encode())
        h.update(np.ascontiguousarray(col).tobytes())
    h.update(json.dumps(params, sort_keys=True, default=str).encode())
    return h.hexdigest()[:16]


def write_dataset(
    out_dir: str | Path,
    inter: Interactions,
    items: pa.Table,
    manifest: dict[str, Any],
    users: pa.Table | None = None,
    heldout: pa.Table | None = None,
) -> Path:
    """Write the canonical folder; the manifest is written last so a half-written folder is never valid."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    inter.validate()
    pq.write_table(pa.table(inter.columns()), out / INTERACTIONS_FILE)
    pq.write_table(items, out / ITEMS_FILE)
    if users is not None:
        pq.write_table(users, out / USERS_FILE)
    if heldout is not None:
        pq.write_table(heldout, out / HELDOUT_FILE)
    tmp = out / (MANIFEST_FILE + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=2, sort_keys=False, default=str))
    tmp.replace(out / MANIFEST_FILE)
    return out


def load_dataset(path: str | Path) -> Dataset:
    """Load a prepared dataset folder, with clear errors for anything missing or malformed."""
    root = Path(path)
    if not root.exists():
        raise DataError(f"{root}: dataset folder not found (run `genrec data prepare ...` first)")
    mpath = root / MANIFEST_FILE
    if not mpath.exists():
        raise DataError(f"{mpath}: missing manifest.json; is this a folder written by `genrec data prepare`?")
    try:
        manifest = json.loads(mpath.read_text())
    except json.JSONDecodeError as exc:
        raise DataError(f"{mpath}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
    for key in ("counts", "fingerprint"):
        if key not in manifest:
            raise DataError(f"{mpath}: missing key '{key}'")
    ipath = root / INTERACTIONS_FILE
    try:
        table = pq.read_table(ipath)
    except FileNotFoundError:
        raise DataError(f"{ipath}: file not found") from None
    except (pa.ArrowInvalid, OSError) as exc:
        raise DataError(f"{ipath}: not a readable parquet file ({exc})") from None
    missing = [c for c in REQUIRED_COLUMNS if c not in table.column_names]
    if missing:
        raise DataError(f"{ipath}: missing column(s) {', '.join(missing)}")
    cols: dict[str, np.ndarray | None] = {
        c: table.column(c).to_numpy().astype(np.int64, copy=False) for c in REQUIRED_COLUMNS
    }
    for name, dtype in OPTIONAL_COLUMNS.items():
        cols[name] = table.column(name).to_numpy().astype(dtype, copy=False) if name in table.column_names else None
    inter = Interactions(**cols)  # type: ignore[arg-type]
    inter.validate(str(ipath))
    try:
        items = pq.read_table(root / ITEMS_FILE)
    except FileNotFoundError:
        raise DataError(f"{root / ITEMS_FILE}: file not found") from None
    users = pq.read_table(root / USERS_FILE) if (root / USERS_FILE).exists() else None
    return Dataset(interactions=inter, items=items, users=users, manifest=manifest, path=root)


def load_heldout(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """``(user_id, item_id)`` (P,) int64 of a prepared folder's published held-out split (``heldout.parquet``).

    Kept apart from the interactions because the pairs have no time: they are the source's own test targets,
    never events of a sequence. A folder without one is a one-line error naming it.
    """
    root = Path(path)
    manifest = json.loads((root / MANIFEST_FILE).read_text()) if (root / MANIFEST_FILE).exists() else {}
    hpath = root / HELDOUT_FILE
    if "published_split" not in manifest or not hpath.exists():
        raise DataError(f"{root}: no published held-out split here (its source ships none, or it was prepared "
                        f"without one)")
    try:
        table = pq.read_table(hpath)
        return (table.column("user_id").to_numpy().astype(np.int64), table.column("item_id").to_numpy().astype(np.int64))
    except (pa.ArrowInvalid, OSError, KeyError) as exc:
        raise DataError(f"{hpath}: not a readable held-out table ({exc})") from None
