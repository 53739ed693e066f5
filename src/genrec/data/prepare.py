"""One pipeline from any raw log to the canonical folder.

Every source reader only has to produce a :class:`RawLog`; cleaning, filtering, id assignment,
ordering and sessionization happen here, once, so that two datasets prepared with the same
parameters are comparable and every choice that changes the table is written to the manifest
(and folded into its fingerprint).
"""

from __future__ import annotations

from collections.abc import Callable
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
from genrec.data.filters import dedup, dense, kcore, map_pairs
from genrec.data.schema import (
    CANONICAL_FILES,
    HELDOUT_FILE,
    MANIFEST_FILE,
    Interactions,
    check_float_seconds,
    check_timestamps,
    fingerprint_of,
    sha256_file,
    write_dataset,
)
from genrec.data.sessions import sessionize
from genrec.errors import ConfigError, DataError

DEFAULT_TIE_ORDER = "stable"  # a user's same-second events keep the file's order
DEFAULT_PARAMS: dict[str, Any] = {
    "min_rating": None,
    "dedup": "first",
    "user_core": 0,
    "item_core": 0,
    "session_gap": 3600,
    "max_session_len": 50,
    "behavior_order": None,
    "tie_order": DEFAULT_TIE_ORDER,
}
DEDUP_MODES = ("first", "last", "none")
TIE_ORDERS = (DEFAULT_TIE_ORDER, "hstu")


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
    heldout: pa.Table | None = None  # a published held-out split: external ``user``, ``item`` pairs, no time
    heldout_protocol: str = ""  # what those pairs are, for the manifest's ``published_split``

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
    if p["tie_order"] not in TIE_ORDERS:
        raise ConfigError(f"tie_order must be one of {', '.join(TIE_ORDERS)}, got {p['tie_order']!r}")
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


def check_output(out: Path, overwrite: bool, inputs: list[Path]) -> None:
    """Refuse to replace a prepared dataset unless ``overwrite`` (``--force``), and any input file always.

    A folder holding ``manifest.json`` is a prepared dataset, perhaps the only copy of hours of work, so it is
    replaced only when asked (as ``genrec export`` replaces an artifact only with ``--force``). Canonical
    tables without a manifest are the leftovers of an interrupted prepare and hold nothing to lose.
    """
    if out.exists() and not out.is_dir():
        raise DataError(f"{out}: exists and is not a folder")
    targets = {(out / f).resolve() for f in CANONICAL_FILES}
    clash = [s for s in inputs if Path(s).resolve() in targets]
    if clash:
        raise DataError(f"{clash[0]}: prepare would write over its own input; choose another --out folder")
    if (out / MANIFEST_FILE).exists() and not overwrite:
        raise DataError(f"{out}: holds a prepared dataset already (manifest.json); pass --force to replace it, "
                        "or choose another --out folder")


def prepare(raw: RawLog, out_dir: str | Path, *, name: str, overwrite: bool = False, **params: Any) -> Path:
    """Clean, filter, number, order and sessionize ``raw`` and write the canonical folder.

    Parameters (all recorded in ``manifest["params"]``): ``min_rating``, ``dedup``
    (first|last|none), ``user_core``, ``item_core``, ``session_gap`` (s), ``max_session_len``,
    ``behavior_order``, ``tie_order`` (how events of one user with the same timestamp are ordered:
    ``stable`` keeps the file's order, ``hstu`` is the HSTU reference code's non-stable sort, see
    :func:`_canonical`). An existing prepared dataset in ``out_dir`` is replaced only with ``overwrite``
    (:func:`check_output`). Returns ``out_dir``.
    """
    p = check_params(params)
    where = raw.where
    out = Path(out_dir)
    check_output(out, overwrite, raw.sources)
    cols, counts, kept = _usable_columns(raw, p)
    rows = _decode(cols, p["behavior_order"], raw.behavior_order, where, _row_namer(kept), _unit_hint(raw))
    p["behavior_order"] = rows.behaviors
    rounds = _filter(rows, p, counts, where)
    inter, user_ext, item_ext = _canonical(rows, p)
    all_params = {**raw.params, **p}
    if all_params["tie_order"] == DEFAULT_TIE_ORDER:  # recorded only when not the default: old fingerprints hold
        del all_params["tie_order"]
    counts.update({k: int(v) for k, v in raw.counts.items()})
    counts.update(
        users=len(user_ext),
        items=len(item_ext),
        interactions=len(inter),
        sessions=int(inter.session_id[-1]) if len(inter.session_id) else 0,
        core_rounds=rounds,
    )
    manifest = _manifest(raw, name, all_params, counts, rows.behaviors, inter)
    heldout = None
    if raw.heldout is not None:
        heldout, manifest["published_split"] = map_pairs(raw.heldout, user_ext, item_ext, raw.heldout_protocol)
    items = build_items_table(item_ext, raw.items, where)
    users = pa.table({"user_id": pa.array(np.arange(1, len(user_ext) + 1)), "external_id": pa.array(user_ext)})
    try:
        check_output(out, overwrite, raw.sources)  # again at the write: the folder may have changed meanwhile
        # an old manifest must not vouch for half-rewritten tables if writing fails midway
        (out / MANIFEST_FILE).unlink(missing_ok=True)
        (out / HELDOUT_FILE).unlink(missing_ok=True)  # a replaced dataset keeps no held-out split of another
        return write_dataset(out, inter, items, manifest, users=users, heldout=heldout)
    except OSError as exc:
        raise DataError(f"{out}: cannot write the dataset ({exc.strerror or exc})") from None


@dataclass
class _Rows:
    """The rows still in play, one aligned array per column: every filter goes through :meth:`take`."""

    user: np.ndarray  # (n,) int64 canonical user codes (dense ids 1..U once renumbered)
    item: np.ndarray  # (n,) int64 canonical item codes (dense ids 1..I once renumbered)
    ts: np.ndarray  # (n,) int64 unix seconds
    rating: np.ndarray | None  # (n,) float32
    beh: np.ndarray | None  # (n,) int8 behavior level
    user_names: list[str]  # external id of each user code
    item_names: list[str]  # external id of each item code
    behaviors: list[str] | None  # behavior level names, lowest first

    def __len__(self) -> int:
        return int(self.user.shape[0])

    def take(self, idx: np.ndarray) -> None:
        """Keep (and order) the rows ``idx`` in every column."""
        self.user, self.item, self.ts = self.user[idx], self.item[idx], self.ts[idx]
        self.rating = self.rating[idx] if self.rating is not None else None
        self.beh = self.beh[idx] if self.beh is not None else None


def _usable_columns(raw: RawLog, p: dict[str, Any]
                   ) -> tuple[dict[str, pa.Array], dict[str, int], np.ndarray | None]:
    """The log's columns as Arrow arrays without the rows that lack a value, the first counts, and the log
    row of each kept row (None when every row is kept), for messages that name a row.

    Checks the columns against each other and against the parameters first, so a mismatch is
    reported before any row is dropped.
    """
    where = raw.where
    cols = {"user": as_arrow(raw.user), "item": as_arrow(raw.item), "timestamp": as_arrow(raw.timestamp)}
    extras = {"rating": raw.rating, "behavior": raw.behavior}
    cols.update({k: as_arrow(v) for k, v in extras.items() if v is not None})
    n = len(cols["user"])
    for cname, col in cols.items():
        if len(col) != n:
            raise DataError(f"{where}: column '{cname}' has {len(col)} rows but 'user' has {n}")
    if n == 0:
        raise DataError(f"{where}: no rows to prepare")
    if p["min_rating"] is not None and "rating" not in cols:
        raise ConfigError(f"min_rating={p['min_rating']} given but {where} has no rating column")
    if p["behavior_order"] is not None and "behavior" not in cols:
        raise ConfigError(f"behavior_order given but {where} has no behavior column")
    valid = present(cols["user"]) & present(cols["item"]) & present(cols["timestamp"])
    if "behavior" in cols:
        valid &= present(cols["behavior"])
    n_valid = int(valid.sum())
    if n_valid == 0:
        raise DataError(f"{where}: all {n} rows lack a user, item, timestamp or behavior value")
    kept = None
    if n_valid < n:
        mask = pa.array(valid)
        cols = {k: v.filter(mask) for k, v in cols.items()}
        kept = np.flatnonzero(valid)
    return cols, {"raw_rows": n, "dropped_rows": n - n_valid}, kept


def _row_namer(kept: np.ndarray | None) -> Callable[[int], str]:
    """``k`` (a kept row) -> "row N" with N the 1-based row of the log the reader handed over."""
    return lambda k: f"row {int(kept[k] if kept is not None else k) + 1}"


def _unit_hint(raw: RawLog) -> str:
    """How the reader chose the time unit, when it was told (the generic reader's ``time_format``)."""
    tf = raw.params.get("time_format")
    if not tf:
        return ""
    return f" (read with time_format {tf}{'; unix_ms reads milliseconds' if tf == 'unix_s' else ''})"


def _decode(
    cols: dict[str, pa.Array], behavior_order: Any, source_order: list[str] | None, where: str,
    row: Callable[[int], str], hint: str = "",
) -> _Rows:
    """Seconds (checked: :func:`~genrec.data.schema.check_timestamps`), canonical id codes, float32 ratings
    and int8 behavior levels from the Arrow columns."""
    if pa.types.is_floating(cols["timestamp"].type):
        check_float_seconds(cols["timestamp"].to_numpy(zero_copy_only=False), where, row)
    ts = to_seconds(cols["timestamp"], where)
    check_timestamps(ts, where, row, hint)
    user, user_names = factorize_canonical(cols["user"])
    item, item_names = factorize_canonical(cols["item"])
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
        behavior_names = resolve_behavior_order(cols["behavior"], behavior_order, source_order)
        beh = behavior_levels(cols["behavior"], behavior_names, where)
    return _Rows(user, item, ts, rating, beh, user_names, item_names, behavior_names)


def _filter(rows: _Rows, p: dict[str, Any], counts: dict[str, int], where: str) -> int:
    """min_rating, then dedup, then k-core, in place; counts what each drops; returns the k-core rounds."""
    if p["min_rating"] is not None:
        assert rows.rating is not None
        keep = np.flatnonzero(rows.rating >= p["min_rating"])
        counts["dropped_min_rating"] = int(len(rows) - keep.size)
        if keep.size == 0:
            raise DataError(f"{where}: no interactions left after min_rating={p['min_rating']:g}")
        rows.take(keep)

    keep = dedup(rows.user, rows.item, rows.ts, rows.beh, p["dedup"])
    counts["dropped_duplicates"] = int(len(rows) - keep.size)
    rows.take(keep)

    keep, rounds = kcore(rows.user, rows.item, p["user_core"], p["item_core"])
    counts["dropped_core"] = int(len(rows) - keep.size)
    if keep.size == 0:
        raise DataError(
            f"{where}: no interactions left after k-core filtering "
            f"(user_core={p['user_core']}, item_core={p['item_core']}); lower them"
        )
    rows.take(keep)
    return rounds


def _event_order(user: np.ndarray, ts: np.ndarray, tie_order: str) -> np.ndarray:
    """The permutation that sorts events by (user, time); ``tie_order`` decides events with equal timestamps.

    ``stable``: the file's order (the default). ``hstu``: the HSTU reference code's MovieLens rule
    (``ratings.sort_values(by="timestamp").groupby("user_id")``): a non-stable quicksort of the whole log, then
    grouping by user. Its permutation of ties depends on the array and numpy's sort kernel: the same rule, not
    necessarily the authors' permutation. On MovieLens-1M it changes about a quarter of the test targets.
    """
    if tie_order == "hstu":
        by_time = np.argsort(ts, kind="quicksort")  # (N,) pandas' default for sort_values
        return by_time[np.argsort(user[by_time], kind="stable")]  # groupby keeps the sorted order
    return np.lexsort((np.arange(len(user)), ts, user))  # ties keep file order


def _canonical(rows: _Rows, p: dict[str, Any]) -> tuple[Interactions, list[str], list[str]]:
    """Dense 1..N ids, rows sorted by (user, time) with ties by ``tie_order``, and sessions.

    Returns the table and the external id of each dense user and item id.
    """
    rows.user, user_ext = dense(rows.user, rows.user_names)
    rows.item, item_ext = dense(rows.item, rows.item_names)
    rows.take(_event_order(rows.user, rows.ts, p["tie_order"]))
    session_id = sessionize(rows.user, rows.ts, p["session_gap"], p["max_session_len"] or None)
    inter = Interactions(
        user_id=rows.user,
        item_id=rows.item,
        timestamp=rows.ts,
        behavior=rows.beh,
        rating=rows.rating,
        session_id=session_id,
    )
    return inter, user_ext, item_ext


def _manifest(
    raw: RawLog,
    name: str,
    params: dict[str, Any],
    counts: dict[str, int],
    behaviors: list[str] | None,
    inter: Interactions,
) -> dict[str, Any]:
    """The manifest: what was read (hashed), every parameter and count, and the table's fingerprint."""
    from genrec import __version__

    manifest: dict[str, Any] = {
        "name": name,
        "source": raw.source,
        "sources": [
            {"path": str(Path(s).resolve()), "sha256": sha256_file(s), "bytes": Path(s).stat().st_size}
            for s in raw.sources
        ],
        "params": params,
        "counts": counts,
    }
    if behaviors is not None:
        manifest["behaviors"] = behaviors
        assert inter.behavior is not None
        events = np.bincount(inter.behavior.astype(np.int64), minlength=len(behaviors))
        manifest["behavior_counts"] = {b: int(n) for b, n in zip(behaviors, events)}
    manifest["created_by"] = f"genrec {__version__}"
    manifest["fingerprint"] = fingerprint_of(inter, params)
    return manifest


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
