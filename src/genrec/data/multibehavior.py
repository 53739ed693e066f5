"""Multi-behavior data for GAMER-style generators: behavior levels, the session split, targets, augmentation.

- **Levels.** Behaviors are totally ordered (Taobao: pv < fav < cart < buy). The prepared dataset stores a
  behavior as its index in ``manifest["behaviors"]`` (lowest first), so that list *is* the default level
  order; ``behavior_order`` overrides it (a list lowest-first, or ``{name: level}``). Exactly one behavior
  holds the top level: it is never dropped by augmentation and is the headline of the evaluation.
- **Session split** (spec §3.7). Sessions are cut by an inactivity gap. A user's last session is the test
  session, the one before it the validation session, everything earlier is training. Each part is a
  contiguous slice of the user's row, so "no test event in training inputs" is a slice bound.
- **Per-behavior targets.** For behavior ``b``: the users whose evaluated session holds ``b``; the targets
  are the distinct items with ``b`` in that session; the history is everything before the session.
- **Augmentation** (spec §3.5, A-G3). ``x`` thinned copies of each training sequence; copy ``k`` drops
  ``floor(n_b * (k/x) / (level_b + 1))`` random events of every behavior below the top level (so the lowest
  level goes entirely at ``k = x``); copies with fewer than two events left are discarded.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from genrec.data.multibehavior_config import (  # noqa: F401  (re-exported: part of this module's API)
    CANDIDATE_MODES,
    WINDOW_MODES,
    MultiBehaviorConfig,
)
from genrec.data.schema import Interactions
from genrec.data.sequences import UserSequences
from genrec.data.sessions import sessionize
from genrec.errors import ConfigError, DataError


@dataclass(frozen=True)
class BehaviorLevels:
    """Name and level of each behavior id (the int stored in ``Interactions.behavior``)."""

    names: tuple[str, ...]
    levels: tuple[int, ...]

    def __post_init__(self) -> None:
        if len(self.names) != len(self.levels) or not self.names:
            raise ConfigError(f"behavior levels: {len(self.names)} names for {len(self.levels)} levels")
        top = max(self.levels)
        if sum(lv == top for lv in self.levels) != 1:
            raise ConfigError(f"behavior levels {dict(zip(self.names, self.levels))}: exactly one behavior "
                              "must hold the top level")
        if min(self.levels) < 0:
            raise ConfigError("behavior levels must be >= 0")

    @property
    def num_behaviors(self) -> int:
        return len(self.names)

    @property
    def top(self) -> int:
        """Behavior id of the top-level (conversion) behavior."""
        return int(np.argmax(self.levels))

    def array(self) -> np.ndarray:
        """(num_behaviors,) int64 level of each behavior id."""
        return np.asarray(self.levels, dtype=np.int64)

    def id_of(self, name: str) -> int:
        if name not in self.names:
            raise ConfigError(f"unknown behavior '{name}' (this dataset has {', '.join(self.names)})")
        return self.names.index(name)

    def as_dict(self) -> dict[str, int]:
        return dict(zip(self.names, self.levels))

    @classmethod
    def from_manifest(cls, manifest: dict[str, Any], order: list[str] | dict[str, int] | None = None
                      ) -> BehaviorLevels:
        """Levels = position in ``manifest["behaviors"]`` unless ``order`` (list lowest-first or name->level)."""
        names = manifest.get("behaviors")
        if not names:
            raise DataError(f"dataset '{manifest.get('name', '?')}' has no behavior column; multi-behavior "
                            "models need one (prepare the log with its behaviors)")
        names = tuple(str(n) for n in names)
        if not order:
            return cls(names, tuple(range(len(names))))
        if isinstance(order, dict):
            unknown = sorted(set(order) - set(names))
            missing = sorted(set(names) - set(order))
            if unknown or missing:
                raise ConfigError(f"behavior_order {order}: unknown {unknown}, missing {missing} "
                                  f"(dataset behaviors: {', '.join(names)})")
            return cls(names, tuple(int(order[n]) for n in names))
        order = [str(o) for o in order]
        if sorted(order) != sorted(names):
            raise ConfigError(f"behavior_order {order} must list each of the dataset's behaviors "
                              f"{', '.join(names)} exactly once")
        return cls(names, tuple(order.index(n) for n in names))


@dataclass
class SessionSplit:
    """Per user row: training ``[0, valid_start)``, validation ``[valid_start, test_start)``, test ``[test_start, n)``."""

    seqs: UserSequences  # behaviors set; session_ids = the gap sessions used for the split
    valid_start: np.ndarray  # (U,) row-relative index of the validation session's first event
    test_start: np.ndarray  # (U,) row-relative index of the last session's first event
    levels: BehaviorLevels
    session_gap: int

    @property
    def behaviors(self) -> np.ndarray:
        assert self.seqs.behaviors is not None
        return self.seqs.behaviors

    def bounds(self, which: str) -> tuple[np.ndarray, np.ndarray]:
        """(U,) row-relative [start, end) of ``which`` in {train, valid, test}."""
        n = self.seqs.lengths
        parts = {"train": (np.zeros_like(n), self.valid_start), "valid": (self.valid_start, self.test_start),
                 "test": (self.test_start, n)}
        if which not in parts:
            raise ConfigError(f"unknown split part '{which}' (train, valid or test)")
        return parts[which]

    def part_mask(self, which: str) -> np.ndarray:
        """(E,) bool over the flat events: True on the events of ``which``."""
        start, end = self.bounds(which)
        rel = np.arange(len(self.seqs.items)) - np.repeat(self.seqs.offsets[:-1], self.seqs.lengths)
        return (rel >= np.repeat(start, self.seqs.lengths)) & (rel < np.repeat(end, self.seqs.lengths))


def session_split(inter: Interactions, levels: BehaviorLevels, session_gap: int = 3600) -> SessionSplit:
    """Cut sessions by ``session_gap`` seconds and split every user by its last two sessions."""
    if inter.behavior is None:
        raise DataError("session split: the interactions have no behavior column")
    if int(inter.behavior.max()) >= levels.num_behaviors or int(inter.behavior.min()) < 0:
        raise DataError(f"session split: behavior ids outside 0..{levels.num_behaviors - 1}")
    seqs = UserSequences.from_interactions(inter)
    sess = sessionize(np.repeat(seqs.user_ids, seqs.lengths), seqs.timestamps, session_gap, None)  # (E,)
    seqs.session_ids = sess
    e = len(sess)
    idx = np.arange(e)
    first = np.r_[True, sess[1:] != sess[:-1]]  # (E,) event opens a session
    starts = seqs.offsets[:-1]  # (U,) every row is non-empty
    opens = np.where(first, idx, -1)
    test_start = np.maximum.reduceat(opens, starts)  # (U,) global index of the last session's start
    opens_before = np.where(first & (idx < np.repeat(test_start, seqs.lengths)), idx, -1)
    valid_start = np.maximum.reduceat(opens_before, starts)  # -1 when the user has one session
    valid_start = np.where(valid_start < 0, test_start, valid_start)
    return SessionSplit(seqs, (valid_start - starts).astype(np.int64), (test_start - starts).astype(np.int64),
                        levels, int(session_gap))


class BehaviorQueries(NamedTuple):
    """Evaluation queries for one behavior: history ``row[:hist_end]``, targets = items with it in the session."""

    behavior: int
    rows: np.ndarray  # (Q,) user rows
    hist_end: np.ndarray  # (Q,) row-relative start of the evaluated session
    target_offsets: np.ndarray  # (Q+1,) query q's targets are targets[target_offsets[q]:target_offsets[q+1]]
    targets: np.ndarray  # (sum,) distinct item ids per query, ascending

    def __len__(self) -> int:
        return len(self.rows)

    def target_sets(self) -> list[np.ndarray]:
        return [self.targets[a:b] for a, b in zip(self.target_offsets[:-1], self.target_offsets[1:])]

    def subset(self, keep: np.ndarray) -> BehaviorQueries:
        sets = self.target_sets()
        chosen = [sets[i] for i in keep]
        offs = np.r_[0, np.cumsum([len(s) for s in chosen])].astype(np.int64)
        tg = np.concatenate(chosen) if chosen else np.zeros(0, np.int64)
        return BehaviorQueries(self.behavior, self.rows[keep], self.hist_end[keep], offs, tg)


def behavior_queries(split: SessionSplit, which: str, behavior: int, min_history: int = 1) -> BehaviorQueries:
    """Users whose ``which`` session (valid | test) holds ``behavior``; histories end where the session starts."""
    if which not in ("valid", "test"):
        raise ConfigError(f"behavior queries are built for 'valid' or 'test', not '{which}'")
    start, end = split.bounds(which)
    seqs = split.seqs
    rows, ends, offs, tgs = [], [], [0], []
    for u in np.flatnonzero((end > start) & (start >= min_history)):
        lo, hi = seqs.offsets[u] + start[u], seqs.offsets[u] + end[u]
        items = np.unique(seqs.items[lo:hi][split.behaviors[lo:hi] == behavior])
        if items.size == 0:
            continue
        rows.append(u)
        ends.append(start[u])
        tgs.append(items)
        offs.append(offs[-1] + items.size)
    return BehaviorQueries(int(behavior), np.asarray(rows, np.int64), np.asarray(ends, np.int64),
                           np.asarray(offs, np.int64), np.concatenate(tgs) if tgs else np.zeros(0, np.int64))


def candidate_items(split: SessionSplit, behavior: int, mode: str = "behavior_history", which: str = "test"
                    ) -> np.ndarray:
    """Sorted item ids the beam search may return for ``behavior``.

    ``behavior_history`` (default, leak-free): items with ``behavior`` in some user's events before that
    user's ``which`` session (the training parts, plus the validation sessions when ``which`` is test).
    ``history`` (leak-free): items with *any* behavior before the evaluated sessions, so a purchase of an item
    that was only viewed or carted before stays reachable.
    ``behavior``: items that occur with it anywhere in the log; this reads the evaluated sessions too, so
    it tells a model which items are ever bought (kept for comparison, stamped in every result).
    ``all``: every item of the log (GAMER's released trie only forces the behavior prefix).
    """
    seqs = split.seqs
    if mode == "all":
        return np.unique(seqs.items)
    if mode == "behavior":
        return np.unique(seqs.items[split.behaviors == behavior])
    if mode in ("behavior_history", "history"):
        before = split.part_mask("train") | (split.part_mask("valid") if which == "test" else False)
        if mode == "behavior_history":
            before = before & (split.behaviors == behavior)
        return np.unique(seqs.items[before])
    raise ConfigError(f"candidates '{mode}' is not one of {CANDIDATE_MODES}")


def thinned_copies(behaviors: np.ndarray, levels: np.ndarray, copies: int, rng: np.random.Generator
                   ) -> list[np.ndarray]:
    """Keep-masks of the ``copies`` thinned versions of one sequence (behavior ids (n,) -> list of (n,) bool).

    Copy ``k`` drops ``floor(n_b * (k/copies) / (level_b + 1))`` random events of each behavior ``b`` below the
    top level; a copy that keeps fewer than two events is left out.
    """
    beh = np.asarray(behaviors, dtype=np.int64)
    top = int(levels.max())
    out = []
    for k in range(1, copies + 1):
        ratio = k / copies
        keep = np.ones(beh.shape[0], dtype=bool)
        for b in np.unique(beh):
            level = int(levels[b])
            if level == top:
                continue  # conversions are never dropped
            pos = np.flatnonzero(beh == b)
            n_drop = int(len(pos) * ratio / (level + 1))
            if n_drop:
                keep[rng.choice(pos, n_drop, replace=False)] = False
        if keep.sum() >= 2:
            out.append(keep)
    return out


class TrainSequences(NamedTuple):
    """Training sequences as flat event indices into ``split.seqs`` (all inside the training part)."""

    rows: np.ndarray  # (S,) user row of each sequence
    offsets: np.ndarray  # (S+1,)
    index: np.ndarray  # (sum,) flat event indices, chronological within a sequence
    augmented: np.ndarray  # (S,) bool: a thinned copy

    def __len__(self) -> int:
        return len(self.rows)

    def events(self, s: int) -> np.ndarray:
        return self.index[self.offsets[s]:self.offsets[s + 1]]


def training_sequences(split: SessionSplit, max_len: int, augment: int = 0, windows: str = "last",
                       seed: int = 0) -> TrainSequences:
    """Every user's training part (+ ``augment`` thinned copies), cut to windows of ``max_len + 1`` interactions.

    ``windows="last"`` keeps the most recent window of each sequence (GAMER's single example per user);
    ``"all"`` cuts the whole sequence into consecutive windows from the end.
    """
    if windows not in WINDOW_MODES:
        raise ConfigError(f"train_windows '{windows}' is not one of {WINDOW_MODES}")
    if max_len < 1:
        raise ConfigError(f"data.max_len must be >= 1, got {max_len}")
    rng = np.random.default_rng([seed, 42])
    lv = split.levels.array()
    width = max_len + 1
    rows, pieces, aug = [], [], []
    for u in np.flatnonzero(split.valid_start >= 1):
        idx = split.seqs.offsets[u] + np.arange(split.valid_start[u])  # (n,) training events only
        variants = [(idx, False)]
        if augment:
            variants += [(idx[keep], True) for keep in thinned_copies(split.behaviors[idx], lv, augment, rng)]
        for seq, is_aug in variants:
            cuts = [seq[-width:]] if windows == "last" else [seq[max(0, e - width):e]
                                                             for e in range(len(seq), 0, -width)][::-1]
            for c in cuts:
                rows.append(u)
                pieces.append(c)
                aug.append(is_aug)
    offs = np.r_[0, np.cumsum([len(p) for p in pieces])].astype(np.int64)
    index = np.concatenate(pieces).astype(np.int64) if pieces else np.zeros(0, np.int64)
    return TrainSequences(np.asarray(rows, np.int64), offs, index, np.asarray(aug, bool))
