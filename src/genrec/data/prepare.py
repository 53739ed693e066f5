"""One pipeline from any raw log to the canonical folder.

Every source reader only has to produce a :class:`RawLog`; cleaning, filtering, id assignment,
ordering and sessionization happen here, once, so that two datasets prepared with the same
parameters are comparable and every choice that changes the table is written to the manifest
(and folded into its fingerprint).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from genrec.data.columns import (
    ArrayLike,
    as_arrow,
    behavior_levels,
    factorize_canonical,
    present,
    resolve_behavior_order,
    to_seconds,
)
from genrec.data.filters import dedup, dense, kcore
from genrec.data.schema import MANIFEST_FILE, Interactions, fingerprint_of, sha256_file, write_dataset
from genrec.data.sessions import sessionize
from genrec.errors import ConfigError, DataError

DEFAULT_PARAMS: dict[str, Any] = {
    "min_rating": None,
    "dedup": "first",
    "user_core": 0,
    "item_core": 0,
    "session_gap": 3600,
    "max_session_len": 50,
    "behavior_order": None,
}
DEDUP_MODES = ("first", "last", "none")


@dataclass
class RawLog:
    """A raw interaction log as a reader found it: external ids, seconds, optional extras.

    Missing values (nulls, NaN, empty strings) are allowed in ``user``/``item``/``timestamp``;
    :func:`prepare` drops and counts those rows so readers need not.
    """

    user: ArrayLike  # external user ids (int or str)
    item: ArrayLike  # external item ids (int or str)
    timestamp: ArrayLike  # int64 unix seconds
    rating: ArrayLike | None = None  # float
    behavior: ArrayLike | None = None  # behavior names (str) or ints
    behavior_order: list[str] | None = None  # level order, lowest first (source default)
    items: pa.Table | None = None  # per-item text: external_id + title/categories/category_id/...
    source: str = "custom"  # reader name
    sources: list[Path] = field(default_factory=list)  # files read (hashed into the manifest)
    params: dict[str, Any] = field(default_factory=dict)  # reader options worth recording
    counts: dict[str, int] = field(default_factory=dict)  # reader-level counts (e.g. dropped_time_window)
    label: str = ""  # how error messages name this log; defaults to the first source file

    @property
    def where(self) -> str:
        if self.label:
            return self.label
        if self.sources:
            return str(self.sources[0])
        return self.source

    def __len__(self) -> int:
        return len(as_arrow(self.user))


# ----------------------------------------------------------------------------------------------


def check_params(params: dict[str, Any]) -> dict[str, Any]:
    """Fill defaults and validate prepare parameters; unknown keys are a ConfigError."""
    unknown = sorted(set(params) - set(DEFAULT_PARAMS))
    if unknown:
        raise ConfigError(
            f"unknown prepare parameter(s) {', '.join(unknown)} (known: {', '.join(DEFAULT_PARAMS)})"
        )
    p = {**DEFAULT_PARAMS, **{k: v for k, v in params.items() if v is not None or k == "min_rating"}}
    if p["dedup"] not in DEDUP_MODES:
        raise ConfigError(f"dedup must be one of {', '.join(DEDUP_MODES)}, got {p['dedup']!r}")
    for key in ("user_core", "item_core"):
        if not isinstance(p[key], (int, np.integer)) or p[key] < 0:
            raise ConfigError(f"{key} must be an integer >= 0, got {p[key]!r}")
        p[key] = int(p[key])
    if not isinstance(p["session_gap"], (int, np.integer)) or p["session_gap"] < 0:
        raise ConfigError(f"session_gap must be an integer number of seconds >= 0, got {p['session_gap']!r}")
    p["session_gap"] = int(p["session_gap"])
    msl = p["max_session_len"]
    if not isinstance(msl, (int, np.integer)) or msl < 0:
        raise ConfigError(f"max_session_len must be an integer >= 1 (0 = no cap), got {msl!r}")
    p["max_session_len"] = int(msl)
    if p["min_rating"] is not None:
        try:
            p["min_rating"] = float(p["min_rating"])
        except (TypeError, ValueError):
            raise ConfigError(f"min_rating must be a number, got {p['min_rating']!r}") from None
    return p


def prepare(raw: RawLog, out_dir: str | Path, *, name: str, **params: Any) -> Path:
    """Clean, filter, number, order and sessionize ``raw`` and write the canonical folder.

    Parameters (all recorded in ``manifest["params"]``): ``min_rating``, ``dedup``
    (first|last|none), ``user_core``, ``item_core``, ``session_gap`` (s), ``max_session_len``,
    ``behavior_order``. Returns ``out_dir``.
    """
    from genrec import __version__

    p = check_params(params)
    where = raw.where
    user_a, item_a, ts_a = as_arrow(raw.user), as_arrow(raw.item), as_arrow(raw.timestamp)
    n = len(user_a)
    extras = {"rating": raw.rating, "behavior": raw.behavior}
    cols = {k: as_arrow(v) for k, v in extras.items() if v is not None}
    for cname, col in [("item", item_a), ("timestamp", ts_a), *cols.items()]:
        if len(col) != n:
            raise DataError(f"{where}: column '{cname}' has {len(col)} rows but 'user' has {n}")
    if n == 0:
        raise DataError(f"{where}: no rows to prepare")
    if p["min_rating"] is not None and "rating" not in cols:
        raise ConfigError(f"min_rating={p['min_rating']} given but {where} has no rating column")
    if p["behavior_order"] is not None and "behavior" not in cols:
        raise ConfigError(f"behavior_order given but {where} has no behavior column")

    valid = present(user_a) & present(item_a) & present(ts_a)
    if "behavior" in cols:
        valid &= present(cols["behavior"])
    n_valid = int(valid.sum())
    if n_valid == 0:
        raise DataError(f"{where}: all {n} rows lack a user, item, timestamp or behavior value")
    counts: dict[str, int] = {"raw_rows": n, "dropped_rows": n - n_valid}
    if n_valid < n:
        mask = pa.array(valid)
        user_a, item_a, ts_a = user_a.filter(mask), item_a.filter(mask), ts_a.filter(mask)
        cols = {k: v.filter(mask) for k, v in cols.items()}

    ts = to_seconds(ts_a, where)
    user, user_names = factorize_canonical(user_a)
    item, item_names = factorize_canonical(item_a)
    rating = None
    if "rating" in cols:
        try:
            rating = pc.cast(cols["rating"], pa.float32()).to_numpy(zero_copy_only=False)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            raise DataError(f"{where}: rating column is not numeric ({cols['rating'].type})") from None
        rating = rating.astype(np.float32, copy=False)
    beh = None
    behavior_names: list[str] | None = None
    if "behavior" in cols:
        behavior_names = resolve_behavior_order(cols["behavior"], p["behavior_order"], raw.behavior_order)
        beh = behavior_levels(cols["behavior"], behavior_names, where)
    p["behavior_order"] = behavior_names

    def take(idx: np.ndarray) -> None:
        nonlocal user, item, ts, rating, beh
        user, item, ts = user[idx], item[idx], ts[idx]
        rating = rating[idx] if rating is not None else None
        beh = beh[idx] if beh is not None else None

    if p["min_rating"] is not None:
        assert rating is not None
        keep = np.flatnonzero(rating >= p["min_rating"])
        counts["dropped_min_rating"] = int(user.shape[0] - keep.size)
        if keep.size == 0:
            raise DataError(f"{where}: no interactions left after min_rating={p['min_rating']:g}")
        take(keep)

    keep = dedup(user, item, ts, beh, p["dedup"])
    counts["dropped_duplicates"] = int(user.shape[0] - keep.size)
    take(keep)

    keep, rounds = kcore(user, item, p["user_core"], p["item_core"])
    counts["dropped_core"] = int(user.shape[0] - keep.size)
    if keep.size == 0:
        raise DataError(
            f"{where}: no interactions left after k-core filtering "
            f"(user_core={p['user_core']}, item_core={p['item_core']}); lower them"
        )
    take(keep)

    user_id, user_ext = dense(user, user_names)
    item_id, item_ext = dense(item, item_names)
    order = np.lexsort((np.arange(user_id.shape[0]), ts, user_id))  # ties keep file order
    user_id, item_id, ts = user_id[order], item_id[order], ts[order]
    rating = rating[order] if rating is not None else None
    beh = beh[order] if beh is not None else None
    session_id = sessionize(user_id, ts, p["session_gap"], p["max_session_len"] or None)

    inter = Interactions(
        user_id=user_id,
        item_id=item_id,
        timestamp=ts,
        behavior=beh,
        rating=rating,
        session_id=session_id,
    )
    all_params = {**raw.params, **p}
    counts.update({k: int(v) for k, v in raw.counts.items()})
    counts.update(
        users=len(user_ext),
        items=len(item_ext),
        interactions=len(inter),
        sessions=int(session_id[-1]) if len(session_id) else 0,
        core_rounds=rounds,
    )
    manifest: dict[str, Any] = {
        "name": name,
        "source": raw.source,
        "sources": [
            {"path": str(Path(s).resolve()), "sha256": sha256_file(s), "bytes": Path(s).stat().st_size}
            for s in raw.sources
        ],
        "params": all_params,
        "counts": counts,
    }
    if behavior_names is not None:
        manifest["behaviors"] = behavior_names
    manifest["created_by"] = f"genrec {__version__}"
    manifest["fingerprint"] = fingerprint_of(inter, all_params)
    items = build_items_table(item_ext, raw.items, where)
    users = pa.table({"user_id": pa.array(np.arange(1, len(user_ext) + 1)), "external_id": pa.array(user_ext)})
    out = Path(out_dir)
    try:
        if out.exists() and not out.is_dir():
            raise DataError(f"{out}: exists and is not a folder")
        # an old manifest must not vouch for half-rewritten tables if writing fails midway
        (out / MANIFEST_FILE).unlink(missing_ok=True)
        return write_dataset(out, inter, items, manifest, users=users)
    except OSError as exc:
        raise DataError(f"{out}: cannot write the dataset ({exc.strerror or exc})") from None


def build_items_table(external_ids: list[str], text: pa.Table | None, where: str = "items") -> pa.Table:
    """``item_id, external_id`` plus every column of ``text`` joined on the external id."""
    ext = pa.array(external_ids, pa.string())
    cols: dict[str, pa.Array] = {
        "item_id": pa.array(np.arange(1, len(external_ids) + 1, dtype=np.int64)),
        "external_id": ext,
    }
    if text is not None:
        if "external_id" not in text.column_names:
            raise DataError(f"{where}: item text table has no 'external_id' column")
        key = pc.utf8_trim_whitespace(pc.cast(as_arrow(text.column("external_id")), pa.string()))
        idx = pc.index_in(ext, value_set=key)
        for cname in text.column_names:
            if cname in ("external_id", "item_id"):
                continue
            col = as_arrow(text.column(cname))
            if cname == "category_id":
                col = pc.cast(col, pa.int64())
            cols[cname] = pc.take(col, idx)
    return pa.table(cols)
