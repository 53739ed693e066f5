"""Raw columns to clean arrays: the type coercions every source shares.

Ids become int64 (numeric order) or trimmed strings, timestamps unix seconds, behaviour names int8 levels in a
stated order; missing values are found once here, so no reader has to guess what "empty" means.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from genrec.errors import ConfigError, DataError

ArrayLike = Any  # np.ndarray | pa.Array | pa.ChunkedArray | list


def as_arrow(x: ArrayLike) -> pa.Array:
    if isinstance(x, pa.ChunkedArray):
        return x.combine_chunks() if x.num_chunks != 1 else x.chunk(0)
    if isinstance(x, pa.Array):
        return x
    arr = np.asarray(x)
    if arr.dtype.kind in "USO":
        return pa.array(arr.tolist(), from_pandas=True)
    return pa.array(arr, from_pandas=True)


def present(arr: pa.Array) -> np.ndarray:
    """True where a value is usable: not null, not NaN, not an empty/blank string."""
    ok = pc.invert(pc.is_null(arr, nan_is_null=True))
    if pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type):
        ok = pc.and_(ok, pc.not_equal(pc.utf8_trim_whitespace(arr), ""))
    return ok.to_numpy(zero_copy_only=False).astype(bool, copy=False)


def normalize_ids(arr: pa.Array) -> pa.Array:
    """int64 for integer ids (numeric order), string for everything else."""
    t = arr.type
    if pa.types.is_integer(t):
        return pc.cast(arr, pa.int64())
    if pa.types.is_floating(t):
        vals = arr.to_numpy(zero_copy_only=False)
        if np.all((np.abs(vals) < 2**63) & (np.floor(vals) == vals)):  # whole and inside int64 (not inf)
            return pa.array(vals.astype(np.int64))
        return pc.cast(arr, pa.string())
    if pa.types.is_dictionary(t):
        return normalize_ids(arr.dictionary_decode())
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return pc.utf8_trim_whitespace(pc.cast(arr, pa.string()))
    return pc.cast(arr, pa.string())


_INT_RE = r"^[+-]?[0-9]{1,18}$"


def factorize_canonical(arr: pa.Array) -> tuple[np.ndarray, list[str]]:
    """Codes 0..K-1 in canonical order and the external id (as text) of each code.

    Canonical order is numeric when every id is an integer (so source id "1" becomes internal 1
    when the source ids are 1..N) and lexicographic otherwise: ids stay stable across runs and
    across row orders.
    """
    arr = normalize_ids(arr)
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


def to_seconds(arr: pa.Array, where: str) -> np.ndarray:
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


def resolve_behavior_order(values: pa.Array, given: Any, source_order: list[str] | None) -> list[str]:
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


def behavior_levels(values: pa.Array, order: list[str], where: str) -> np.ndarray:
    names = pc.cast(values, pa.string()) if not pa.types.is_string(values.type) else values
    names = pc.utf8_trim_whitespace(names)
    idx = pc.index_in(names, value_set=pa.array(order, pa.string()))
    if idx.null_count:
        unknown = sorted({str(v) for v in pc.filter(names, pc.is_null(idx)).to_pylist()})
        raise DataError(
            f"{where}: behavior value(s) {', '.join(unknown[:5])} not in behavior_order {','.join(order)}"
        )
    return idx.to_numpy(zero_copy_only=False).astype(np.int8)
