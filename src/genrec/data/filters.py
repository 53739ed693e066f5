"""Row filters of the prepare pipeline: dedup, iterative k-core, dense renumbering (and a held-out split's pairs).

All take and return index arrays into the current rows, in file order, so they compose without copying tables.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from genrec.data.columns import as_arrow, normalize_ids
from genrec.data.schema import HELDOUT_FILE


def dedup(user: np.ndarray, item: np.ndarray, ts: np.ndarray, beh: np.ndarray | None, mode: str) -> np.ndarray:
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


def kcore(user: np.ndarray, item: np.ndarray, user_core: int, item_core: int) -> tuple[np.ndarray, int]:
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


def dense(codes: np.ndarray, names: list[str]) -> tuple[np.ndarray, list[str]]:
    """Renumber surviving codes to 1..N, keeping canonical order."""
    uniq, inv = np.unique(codes, return_inverse=True)
    return inv.reshape(-1).astype(np.int64) + 1, [names[int(c)] for c in uniq]


def map_pairs(pairs: pa.Table, user_ext: list[str], item_ext: list[str], protocol: str
              ) -> tuple[pa.Table, dict[str, Any]]:
    """A published held-out split's external ``user``, ``item`` pairs in the dataset's dense ids, and its stamp.

    A pair whose user or item has no interaction left has no id, so it is dropped and counted (an ID-based model
    can never rank an item it has no row for); the stamp says how many, so a comparison with published numbers
    can account for them.
    """

    def ids(column: str, ext: list[str]) -> np.ndarray:
        values = pc.cast(normalize_ids(as_arrow(pairs.column(column))), pa.string())
        idx = pc.index_in(values, value_set=pa.array(ext, pa.string()))
        return pc.fill_null(idx, -1).to_numpy(zero_copy_only=False).astype(np.int64) + 1  # (P,), 0 = unknown

    user, item = ids("user", user_ext), ids("item", item_ext)
    keep = (user > 0) & (item > 0)
    table = pa.table({"user_id": pa.array(user[keep]), "item_id": pa.array(item[keep])})
    stamp = {"file": HELDOUT_FILE, "protocol": protocol, "rows": int(len(user)), "pairs": int(keep.sum()),
             "dropped_unknown_user": int((user == 0).sum()), "dropped_unknown_item": int(((user > 0) & (item == 0)).sum()),
             "note": "interactions.parquet holds the training rows only; the held-out pairs carry no time"}
    return table, stamp
