"""What a long step tells the person waiting: a live bar on a terminal, plain timed lines in a log.

The training loop, ``genrec sid build`` and the RQ-VAE fit report through here, so a run watched on a terminal
and one whose output goes to a file (``nohup``, ``| tee``, CI, a batch scheduler) both show progress: on a
terminal a tqdm bar that each finished unit (an epoch, a stage) replaces with one line; elsewhere the same lines
plus a plain line at most every ``interval`` seconds while a unit runs. Everything goes to standard error, looked
up at each call, so redirections and test captures see it; standard output keeps the results alone.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

INTERVAL = 60.0  # seconds between plain progress lines when a caller gives none (the training loop reads its own)


def interactive() -> bool:
    """Whether standard error is a terminal (a live bar can redraw itself there)."""
    try:
        return bool(sys.stderr.isatty())
    except (AttributeError, ValueError):  # a replaced or closed stream
        return False


def say(line: str) -> None:
    """One line on standard error, flushed at once (a log written through a pipe shows it now)."""
    print(line, file=sys.stderr, flush=True)


def duration(seconds: float) -> str:
    """``41.2 s``, ``3m 05s`` or ``2h 07m``: short enough for a progress line, exact enough to compare."""
    if seconds < 60:
        return f"{seconds:.1f} s"
    m, s = divmod(int(round(seconds)), 60)
    if m < 60:
        return f"{m}m {s:02d}s"
    h, m = divmod(m, 60)
    return f"{h}h {m:02d}m"


class Progress:
    """Progress over ``total`` units (``initial`` already done, e.g. after a resume).

    On a terminal, with ``bar``, a tqdm bar that disappears when closed (the caller prints the unit's summary
    line in its place). Elsewhere a plain line ``DESC  UNIT n/total (p%)  FIELDS  elapsed, eta`` at most every
    ``interval`` seconds (0: none; default :data:`INTERVAL`). The interface is tqdm's ``update`` / ``set_postfix`` / ``close``.
    """

    def __init__(self, desc: str, total: int, *, initial: int = 0, interval: float | None = None, bar: bool = True,
                 unit: str = "step") -> None:
        self.desc, self.total, self.n, self.unit = desc, total, initial, unit
        self._start_n = initial
        self._fields: dict[str, Any] = {}
        self._bar = None
        self.interval = INTERVAL if interval is None else interval
        if interactive():
            self.interval = 0.0  # the bar (or nothing) on a terminal, never both
            if bar:
                from tqdm.auto import tqdm

                self._bar = tqdm(total=total, initial=initial, desc=desc, leave=False, dynamic_ncols=True,
                                 disable=None)
        self._t0 = self._last = time.time()
        self._due = False

    def update(self, n: int = 1) -> None:
        self._flush()  # a line due at the last update that no set_postfix followed
        self.n += n
        if self._bar is not None:
            self._bar.update(n)
            return
        now = time.time()
        if self.interval > 0 and now - self._last >= self.interval:
            self._last, self._due = now, True  # said once this unit's fields are known (set_postfix)

    def set_postfix(self, **fields: Any) -> None:
        self._fields = fields
        if self._bar is not None:
            self._bar.set_postfix(**fields)
        self._flush()

    def _flush(self) -> None:
        if self._due:
            self._due = False
            say(self.line())

    def line(self, now: float | None = None) -> str:
        """The plain progress line: position, the last fields, elapsed time and the time left at this pace."""
        elapsed = (now or time.time()) - self._t0
        pct = f" ({100 * self.n / self.total:.0f}%)" if self.total else ""
        parts = [self.desc, f"{self.unit} {self.n}/{self.total}{pct}"]
        parts += [f"{k} {v}" for k, v in self._fields.items()]
        done = self.n - self._start_n
        eta = f", {duration(elapsed / done * (self.total - self.n))} left" if done > 0 and self.total else ""
        parts.append(f"{duration(elapsed)}{eta}")
        return "  ".join(parts)

    def close(self) -> None:
        self._flush()
        if self._bar is not None:
            self._bar.close()
            self._bar = None


@contextmanager
def stage(name: str) -> Iterator[None]:
    """Announce a long step, then say how long it took: ``NAME ...`` and ``NAME: 12.3 s``."""
    say(f"{name} ...")
    t0 = time.time()
    yield
    say(f"{name}: {duration(time.time() - t0)}")
