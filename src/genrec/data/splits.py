"""Train / validation / test splits over user sequences.

- ``leave_one_out``: validation target = the second-to-last event, test target = the last; training
  sees events before the validation target only (so early stopping never sees test or valid items).
- ``temporal``: two global cut times; training = events before ``t_valid``; a user's validation
  target is their first event in ``[t_valid, t_test)`` and test target their first event at or after
  ``t_test``, each predicted from everything before it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

from genrec.data.sequences import UserSequences
from genrec.errors import ConfigError, DataError


@dataclass
class EvalSamples:
    """One evaluation query per entry: predict ``seqs.items[offsets[row] + hist_end]`` from the events before it."""

    rows: np.ndarray  # (S,) row into UserSequences
    hist_end: np.ndarray  # (S,) number of history events (target index within the row)

    def __len__(self) -> int:
        return len(self.rows)


@dataclass
class Split:
    name: str
    train_end: np.ndarray  # (U,) training uses events [0, train_end[u]) of each row
    valid: EvalSamples
    test: EvalSamples
    params: dict

    def train_rows(self, min_len: int = 2) -> np.ndarray:
        """Rows with at least one (input, next item) pair to learn from."""
        return np.flatnonzero(self.train_end >= min_len)


def leave_one_out(seqs: UserSequences) -> Split:
    n = seqs.lengths
    rows = np.arange(len(seqs))
    test_rows = rows[n >= 2]
    valid_rows = rows[n >= 3]
    train_end = np.maximum(n - 2, 0)
    return Split(
        name="leave_one_out",
        train_end=train_end,
        valid=EvalSamples(valid_rows, n[valid_rows] - 2),
        test=EvalSamples(test_rows, n[test_rows] - 1),
        params={"split": "leave_one_out"},
    )


def temporal(seqs: UserSequences, valid_frac: float = 0.1, test_frac: float = 0.1) -> Split:
    """Global temporal split at the ``1 - valid_frac - test_frac`` and ``1 - test_frac`` time quantiles."""
    if not (0 < valid_frac < 1 and 0 < test_frac < 1 and valid_frac + test_frac < 1):
        raise ConfigError("split: valid_frac and test_frac must be in (0, 1) and sum below 1")
    ts = seqs.timestamps
    t_valid = int(np.quantile(ts, 1 - valid_frac - test_frac))
    t_test = int(np.quantile(ts, 1 - test_frac))
    train_end = np.zeros(len(seqs), dtype=np.int64)
    v_rows, v_end, t_rows, t_end = [], [], [], []
    for u in range(len(seqs)):
        t = ts[seqs.row(u)]
        a = int(np.searchsorted(t, t_valid, side="left"))
        b = int(np.searchsorted(t, t_test, side="left"))
        train_end[u] = a
        if a < b and a >= 1:
            v_rows.append(u)
            v_end.append(a)
        if b < len(t) and b >= 1:
            t_rows.append(u)
            t_end.append(b)
    if not t_rows:
        raise DataError("temporal split: no user has both history and an event after the test cut")
    return Split(
        name="temporal",
        train_end=train_end,
        valid=EvalSamples(np.array(v_rows, dtype=np.int64), np.array(v_end, dtype=np.int64)),
        test=EvalSamples(np.array(t_rows, dtype=np.int64), np.array(t_end, dtype=np.int64)),
        params={"split": "temporal", "t_valid": t_valid, "t_test": t_test, "valid_frac": valid_frac,
                "test_frac": test_frac},
    )


def make_split(seqs: UserSequences, name: str, **kw) -> Split:
    if name in ("leave_one_out", "loo"):
        return leave_one_out(seqs)
    if name == "temporal":
        return temporal(seqs, **kw)
    raise ConfigError(f"split: unknown split '{name}' (choose leave_one_out or temporal)")


class SplitSettings(Protocol):
    """The split keys of a run's ``data:`` section (:class:`genrec.config.DataConfig`), typed by shape so that
    ``data`` needs nothing from ``config``."""

    split: str
    valid_frac: float
    test_frac: float


def split_from_config(seqs: UserSequences, data_cfg: SplitSettings) -> Split:
    """The split a recipe's ``data:`` section asks for; the fractions are read only by the temporal split."""
    kw = {"valid_frac": data_cfg.valid_frac, "test_frac": data_cfg.test_frac} if data_cfg.split == "temporal" else {}
    return make_split(seqs, data_cfg.split, **kw)
