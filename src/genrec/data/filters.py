"""Row filters of the prepare pipeline: dedup, iterative k-core and dense renumbering.

All take and return index arrays into the current rows, in file order, so they compose without copying tables.
"""

from __future__ import annotations

import numpy as np


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
