"""The ``multibehavior:`` recipe section: protocol and GAMER training-data knobs.

It lives beside the data it shapes (:mod:`genrec.data.multibehavior`) and imports nothing heavy, so
:mod:`genrec.config` can list it with the other sections while staying light, and ``data/`` never imports
``config``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from genrec.errors import ConfigError

CANDIDATE_MODES = ("behavior_history", "history", "behavior", "all")
WINDOW_MODES = ("last", "all")


@dataclass
class MultiBehaviorConfig:
    """Multi-behavior protocol and GAMER training-data knobs (a ``multibehavior:`` recipe section)."""

    session_gap: int = 3600  # seconds of inactivity that end a session
    behavior_order: list[str] = field(default_factory=list)  # levels lowest first; empty = the manifest's order
    min_history: int = 1  # evaluation queries need this many interactions before the evaluated session
    augment: int = 4  # x thinned copies per training sequence (ratios k/x, k = 1..x); 0 = no augmentation
    train_windows: str = "last"  # last: the last max_len+1 interactions per sequence (GAMER); all: every window
    candidates: str = "behavior_history"  # behavior_history | history (both leak-free) | behavior | all
    eval_behaviors: list[str] = field(default_factory=list)  # empty = every behavior
    warmup_ratio: float = 0.04  # linear warmup over this fraction of all steps, then cosine decay to 0
    early_stop: str = "valid_loss"  # valid_loss (GAMER) or "<behavior>/<metric>", e.g. buy/ndcg@10
    valid_max_users: int = 0  # 0 = every validation user; else a fixed seeded subset
    length_bucketing: bool = False  # training batches and evaluation queries of similar length; off = file order

    def check(self) -> None:
        """A ConfigError naming the first ``multibehavior.*`` value the protocol cannot use."""
        _at_least("session_gap", self.session_gap, 0, " seconds")
        _at_least("augment", self.augment, 0)
        _one_of("train_windows", self.train_windows, WINDOW_MODES)
        _one_of("candidates", self.candidates, CANDIDATE_MODES)
        if not 0.0 <= self.warmup_ratio < 1.0:
            raise ConfigError(f"multibehavior.warmup_ratio must lie in [0, 1), got {self.warmup_ratio}")
        _at_least("min_history", self.min_history, 0)


def with_defaults(recorded: dict[str, Any] | None) -> dict[str, Any] | None:
    """A run record's ``multibehavior`` section with every key it lacks at its default.

    A run recorded before a key existed ran with that key's default, so it still matches a recipe that leaves the
    key at its default (an older run folder resumes) and differs from one that turns it on.
    """
    return None if recorded is None else {**asdict(MultiBehaviorConfig()), **recorded}


def _at_least(key: str, value: int, low: int, unit: str = "") -> None:
    """One wording for every lower bound of the section."""
    if value < low:
        raise ConfigError(f"multibehavior.{key} must be >= {low}{unit}, got {value}")


def _one_of(key: str, value: str, options: tuple[str, ...]) -> None:
    """One wording for every choice among named modes."""
    if value not in options:
        raise ConfigError(f"multibehavior.{key} '{value}' is not one of {options}")
