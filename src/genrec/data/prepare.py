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

from genrec.data.schema import MANIFEST_FILE, Interactions, fingerprint_of, sha256_file, write_dataset
from genrec.data.sessions import sessionize
from genrec.errors import ConfigError, DataError

ArrayLike = Any  # np.ndarray | pa.Array | pa.ChunkedArray | list

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
        return len(_as_arrow(self.user))


# ----------------------------------------------------------------------------------------------
# column helpers


def _as_arrow(x: ArrayLike) -> pa.Array:
    if isinstance(x, pa.ChunkedArray):
        return x.combine_chunks() if x.num_chunks != 1 else x.chunk(0)
    if isinstance(x, pa.Array):
        return x
    arr = np.asarray(x)
    if arr.dtype.kind in "USO":
        return pa.array(arr.tolist(), from_pandas=True)
    return pa.array(arr, from_pandas=True)


def _present(arr: pa.Array) -> np.ndarray:
    """True where a value is usable: not null, not NaN, not an empty/blank string."""
    ok = pc.invert(pc.is_null(arr, nan_is_null=True))
    if pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type):
        ok = pc.and_(ok, pc.not_equal(pc.utf8_trim_whitespace(arr), ""))
    return ok.to_numpy(zero_copy_only=False).astype(bool, copy=False)


def _normalize_ids(arr: pa.Array) -> pa.Array:
    """int64 for integer ids (numeric order), string for everything else."""
    t = arr.type
    if pa.types.is_integer(t):
        return pc.cast(arr, pa.int64())
    if pa.types.is_floating(t):
        vals = arr.to_numpy(zero_copy_only=False)
        if np.all(np.floor(vals) == vals):
            return pa.array(vals.astype(np.int64))
        return pc.cast(arr, pa.string())
    if pa.types.is_dictionary(t):
        return _normalize_ids(arr.dictionary_decode())
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return pc.utf8_trim_whitespace(pc.cast(arr, pa.string()))
    return pc.cast(arr, pa.string())


_INT_RE = r"^[+-]?[0-9]{1,18}$"


def _factorize_canonical(arr: pa.Array) -> tuple[np.ndarray, list[str]]:
    """Codes 0..K-1 in canonical order and the external id (as text) of each code.

    Canonical order is numeric when every id is an integer (so source id "1" becomes internal 1
    when the source ids are 1..N) and lexicographic otherwise: ids stay stable across runs and
    across row orders.
    """
    arr = _normalize_ids(arr)
    if pa.types.is_integer(arr.type):
        uniq, codes = np.unique(arr.to_numpy(zero_copy_only=False), return_inverse=True)
        return codes.astype(np.int64).reshape(-1), [str(int(v)) for v in uniq]
    enc = pc.dictionary_encode(arr)
    dictionary = enc.dictionary
    codes = enc.indices.to_numpy(zero_copy_only=False).astype(np.int64)
    lex = np.asarray(pc.sort_indices(dictionary).to_numpy(), dtype=np.int64)
    if len(dictionary) and pc.all(pc.match_substring_regex(dictionary, _INT_RE)).as_py():
        num = pc.cast(dictionary, pa.int64()).to_numpy()
        order = lex[np.argsort(num[lex], kind="stable")]
    else:
        order = lex
    rank = np.empty(len(order), dtype=np.int64)
    rank[order] = np.arange(len(order), dtype=np.int64)
    names = dictionary.to_pylist()
    return rank[codes], [names[i] for i in order]


def _to_seconds(arr: pa.Array, where: str) -> np.ndarray:
    t = arr.type
    if pa.types.is_timestamp(t):
        arr = pc.cast(pc.cast(arr, pa.timestamp("s", tz=t.tz), safe=False), pa.int64())
    elif pa.types.is_date(t):
        arr = pc.multiply(pc.cast(pc.cast(arr, pa.date32()), pa.int64()), 86400)
    elif pa.types.is_floating(t):
        return np.floor(arr.to_numpy(zero_copy_only=False)).astype(np.int64)
    elif not pa.types.is_integer(t):
        try:
            arr = pc.cast(arr, pa.int64())
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            raise DataError(f"{where}: timestamps must be integer unix seconds, got type {t}") from None
    return arr.to_numpy(zero_copy_only=False).astype(np.int64, copy=False)


def _resolve_behavior_order(values: pa.Array, given: Any, source_order: list[str] | None) -> list[str]:
    if given is not None:
        order = [s.strip() for s in given.split(",")] if isinstance(given, str) else [str(s) for s in given]
    elif source_order is not None:
        order = [str(s) for s in source_order]
    else:
        names = {str(v).strip() for v in pc.unique(values).to_pylist()}
        numeric = all(n.lstrip("-").isdigit() for n in names)
        order = sorted(names, key=(lambda n: (int(n), n)) if numeric else None)
    if len(set(order)) != len(order) or not all(order):
        raise ConfigError(f"behavior_order {order} must list distinct, non-empty names")
    if len(order) > 127:
        raise ConfigError(f"behavior_order has {len(order)} levels; at most 127 fit in int8")
    return order


def _behavior_levels(values: pa.Array, order: list[str], where: str) -> np.ndarray:
    names = pc.cast(values, pa.string()) if not pa.types.is_string(values.type) else values
    names = pc.utf8_trim_whitespace(names)
    idx = pc.index_in(names, value_set=pa.array(order, pa.string()))
    if idx.null_count:
        unknown = sorted({str(v) for v in pc.filter(names, pc.is_null(idx)).to_pylist()})
        raise DataError(
            f"{where}: behavior value(s) {', '.join(unknown[:5])} not in behavior_order {','.join(order)}"
        )
    return idx.to_numpy(zero_copy_only=False).astype(np.int8)


# ----------------------------------------------------------------------------------------------
# filters (all take and return index arrays into the current rows, in file order)


def _dedup(user: np.ndarray, item: np.ndarray, ts: np.ndarray, beh: np.ndarray | None, mode: str) -> np.ndarray:
    """Row indices kept by (user, item[, behavior]) dedup, returned in file order."""
    n = user.shape[0]
    if mode == "none" or n == 0:
        return np.arange(n)
    chrono = np.lexsort((np.arange(n), ts, user))  # per-user time order, ties in file order
    pos = np.empty(n, dtype=np.int64)
    pos[chrono] = np.arange(n)
    keys = [pos] + ([beh] if beh is not None else []) + [item, user]
    order = np.lexsort(keys)
    same = np.ones(n - 1, dtype=bool) if n > 1 else np.zeros(0, dtype=bool)
    for k in ([beh] if beh is not None else []) + [item, user]:
        ks = k[order]
        same &= ks[1:] == ks[:-1]
    if mode == "first":
        pick = np.concatenate([[True], ~same])
    else:
        pick = np.concatenate([~same, [True]])
    return np.sort(order[pick])


def _kcore(user: np.ndarray, item: np.ndarray, user_core: int, item_core: int) -> tuple[np.ndarray, int]:
    """Rows surviving iterative k-core filtering and the number of rounds it took to settle."""
    keep = np.arange(user.shape[0])
    if user_core <= 1 and item_core <= 1:
        return keep, 0
    rounds = 0
    while keep.size:
        rounds += 1
        u, i = user[keep], item[keep]
        ok = np.ones(keep.size, dtype=bool)
        if user_core > 1:
            ok &= np.bincount(u)[u] >= user_core
        if item_core > 1:
            ok &= np.bincount(i)[i] >= item_core
        if ok.all():
            break
        keep = keep[ok]
    return keep, rounds


def _dense(codes: np.ndarray, names: list[str]) -> tuple[np.ndarray, list[str]]:
    """Renumber surviving codes to 1..N, keeping canonical order."""
    uniq, inv = np.unique(codes, return_inverse=True)
    return inv.reshape(-1).astype(np.int64) + 1, [names[int(c)] for c in uniq]


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
    user_a, item_a, ts_a = _as_arrow(raw.user), _as_arrow(raw.item), _as_arrow(raw.timestamp)
    n = len(user_a)
    extras = {"rating": raw.rating, "behavior": raw.behavior}
    cols = {k: _as_arrow(v) for k, v in extras.items() if v is not None}
    for cname, col in [("item", item_a), ("timestamp", ts_a), *cols.items()]:
        if len(col) != n:
            raise DataError(f"{where}: column '{cname}' has {len(col)} rows but 'user' has {n}")
    if n == 0:
        raise DataError(f"{where}: no rows to prepare")
    if p["min_rating"] is not None and "rating" not in cols:
        raise ConfigError(f"min_rating={p['min_rating']} given but {where} has no rating column")
    if p["behavior_order"] is not None and "behavior" not in cols:
        raise ConfigError(f"behavior_order given but {where} has no behavior column")

    valid = _present(user_a) & _present(item_a) & _present(ts_a)
    if "behavior" in cols:
        valid &= _present(cols["behavior"])
    n_valid = int(valid.sum())
    if n_valid == 0:
        raise DataError(f"{where}: all {n} rows lack a user, item, timestamp or behavior value")
    counts: dict[str, int] = {"raw_rows": n, "dropped_rows": n - n_valid}
    if n_valid < n:
        mask = pa.array(valid)
        user_a, item_a, ts_a = user_a.filter(mask), item_a.filter(mask), ts_a.filter(mask)
        cols = {k: v.filter(mask) for k, v in cols.items()}

    ts = _to_seconds(ts_a, where)
    user, user_names = _factorize_canonical(user_a)
    item, item_names = _factorize_canonical(item_a)
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
        behavior_names = _resolve_behavior_order(cols["behavior"], p["behavior_order"], raw.behavior_order)
        beh = _behavior_levels(cols["behavior"], behavior_names, where)
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

    keep = _dedup(user, item, ts, beh, p["dedup"])
    counts["dropped_duplicates"] = int(user.shape[0] - keep.size)
    take(keep)

    keep, rounds = _kcore(user, item, p["user_core"], p["item_core"])
    counts["dropped_core"] = int(user.shape[0] - keep.size)
    if keep.size == 0:
        raise DataError(
            f"{where}: no interactions left after k-core filtering "
            f"(user_core={p['user_core']}, item_core={p['item_core']}); lower them"
        )
    take(keep)

    user_id, user_ext = _dense(user, user_names)
    item_id, item_ext = _dense(item, item_names)
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
        key = pc.utf8_trim_whitespace(pc.cast(_as_arrow(text.column("external_id")), pa.string()))
        idx = pc.index_in(ext, value_set=key)
        for cname in text.column_names:
            if cname in ("external_id", "item_id"):
                continue
            col = _as_arrow(text.column(cname))
            if cname == "category_id":
                col = pc.cast(col, pa.int64())
            cols[cname] = pc.take(col, idx)
    return pa.table(cols)
