"""Gap-based sessionization.

Sessions matter to session-aware models (and to stats) but most public logs do not carry them,
so they are derived here from time gaps: a quiet period longer than ``gap_seconds`` ends a
session. A length cap keeps pathological bursts (bots, bulk imports) from becoming one huge
"session" that would dominate any per-session computation.
"""

from __future__ import annotations

import numpy as np

from genrec.errors import ConfigError, DataError


def session_boundaries(
    user_id: np.ndarray, timestamp: np.ndarray, gap_seconds: int | None, max_session_len: int | None
) -> np.ndarray:
    """Boolean array, True where an event opens a new session (always True at index 0)."""
    n = int(user_id.shape[0])
    start = np.ones(n, dtype=bool)
    if n <= 1:
        return start[:n]
    new_user = user_id[1:] != user_id[:-1]
    start[1:] = new_user
    if gap_seconds is not None:
        # strictly greater: a gap of exactly tau keeps the events together
        start[1:] |= (timestamp[1:] - timestamp[:-1]) > gap_seconds
    if max_session_len:
        # position of each event inside its gap-session; every max_session_len-th opens a new one
        idx = np.arange(n, dtype=np.int64)
        seg_start = np.maximum.accumulate(np.where(start, idx, 0))
        start |= ((idx - seg_start) % int(max_session_len)) == 0
    return start


def sessionize(
    user_id: np.ndarray,
    timestamp: np.ndarray,
    gap_seconds: int | None = 3600,
    max_session_len: int | None = 50,
) -> np.ndarray:
    """Global session ids ``1..S`` (int64) for events sorted by (user, time).

    A new session starts when the user changes, when the gap to the previous event is strictly
    greater than ``gap_seconds`` (``None`` = never split on time), or when the current session
    already holds ``max_session_len`` events (``None``/0 = no cap). Equal timestamps stay together
    unless the cap splits them.
    """
    user_id = np.asarray(user_id)
    timestamp = np.asarray(timestamp, dtype=np.int64)
    if user_id.shape != timestamp.shape or user_id.ndim != 1:
        raise DataError(
            f"sessionize: user_id {user_id.shape} and timestamp {timestamp.shape} must be 1-D and equal length"
        )
    if gap_seconds is not None and gap_seconds < 0:
        raise ConfigError(f"session_gap must be >= 0 seconds, got {gap_seconds}")
    if max_session_len is not None and max_session_len < 0:
        raise ConfigError(f"max_session_len must be >= 1 (or 0 for no cap), got {max_session_len}")
    if user_id.shape[0] > 1:
        du = np.diff(user_id)
        if np.any(du < 0) or np.any((du == 0) & (np.diff(timestamp) < 0)):
            raise DataError("sessionize: events must be sorted by (user, timestamp)")
    return np.cumsum(session_boundaries(user_id, timestamp, gap_seconds, max_session_len), dtype=np.int64)
