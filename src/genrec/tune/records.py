"""What a search folder holds, and the files it writes::

    OUT/
      search.json        the spec (base recipe resolved) and data the search runs; a rerun must match it
      trials.jsonl       one JSON line per finished trial, appended atomically (a killed search loses none)
      trials/<id>/       the trial's run folder (trial.json: its point and overrides, written before it trains)
      best.yaml          base recipe + the best trial's overrides: train it with ``genrec train OUT/best.yaml``
      .lock              one search per folder

A trial line holds its id, point, overrides, validation metric and value, the validation metrics of its best
epoch, best epoch, epochs trained, training seconds (across resumes), the wall seconds of the call that
finished it and status (``complete``: ran to ``train.epochs`` or
patience; ``budget``: stopped by the spec's per-trial budget; ``failed``: the recipe refused the point or the
loss diverged). It never holds a test metric.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import yaml

from genrec.errors import ConfigError
from genrec.runs.layout import METRICS_LOG

SEARCH_FILE = "search.json"
TRIALS_FILE = "trials.jsonl"
TRIALS_DIR = "trials"
TRIAL_FILE = "trial.json"
BEST_FILE = "best.yaml"
VALID_PREFIX = "valid/"


def trial_id(index: int) -> str:
    return f"{index:04d}"


def append_trial(out: Path, rec: dict[str, Any]) -> None:
    """Append one trial line with a single ``O_APPEND`` write, then fsync: a kill leaves the line whole or
    absent (a torn tail is dropped by :func:`read_trials`)."""
    data = (json.dumps(rec, default=str) + "\n").encode()
    fd = os.open(out / TRIALS_FILE, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        while data:
            data = data[os.write(fd, data):]
        os.fsync(fd)
    finally:
        os.close(fd)


def read_trials(out: Path) -> dict[str, dict[str, Any]]:
    """The recorded trials by id; a torn last line (a write cut by a kill) is cut off the file."""
    path = out / TRIALS_FILE
    if not path.exists():
        return {}
    text = path.read_text()
    lines = text.split("\n")
    done: dict[str, dict[str, Any]] = {}
    for n, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except ValueError:
            if n == len(lines) - 1:  # the torn tail: drop it, so the next append starts a line of its own
                tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
                tmp.write_text("\n".join(lines[:-1]) + "\n" if n else "")
                tmp.replace(path)
                break
            raise ConfigError(f"{path}: line {n + 1} is not JSON; fix or remove it") from None
        done[str(rec["trial"])] = rec
    return done


def valid_metrics_at(run_dir: Path, epoch: int | None) -> dict[str, Any]:
    """The validation metrics logged at ``epoch`` (the best one) in the run's ``metrics.jsonl``."""
    path = run_dir / METRICS_LOG
    if epoch is None or not path.exists():
        return {}
    found: dict[str, Any] = {}
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if rec.get("epoch") == epoch and any(k.startswith(VALID_PREFIX) for k in rec):
            found = {k.removeprefix(VALID_PREFIX): v for k, v in rec.items() if k.startswith(VALID_PREFIX)}
    return found


def best_trial(trials: list[dict[str, Any]], minimize: bool) -> dict[str, Any] | None:
    """The trial with the best value (the lowest id among ties); None when no trial has one."""
    scored = [t for t in trials if t.get("value") is not None]
    if not scored:
        return None
    return min(scored, key=lambda t: ((t["value"] if minimize else -t["value"]), t["trial"]))


def write_best(out: Path, recipe: dict[str, Any], best: dict[str, Any], metric: str, count: int) -> Path:
    """``OUT/best.yaml``: the recipe the best trial trained (without the search's per-trial budget)."""
    head = (f"# genrec tune: the best of {count} trials by validation {metric} = {best['value']:.6g} "
            f"(trial {best['trial']}, best epoch {best.get('best_epoch')})\n"
            f"# overrides: {json.dumps(best['overrides'], default=str)}\n")
    path = out / BEST_FILE
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
    tmp.write_text(head + yaml.safe_dump(recipe, sort_keys=False, default_flow_style=None, width=110))
    tmp.replace(path)
    return path


def describe(overrides: dict[str, Any]) -> str:
    """``key=value ...``, or what no overrides mean (the baseline trial)."""
    return " ".join(f"{k}={v}" for k, v in overrides.items()) or "(the base recipe as it is)"


def format_table(trials: list[dict[str, Any]], metric: str, minimize: bool) -> str:
    """Every trial, best first (trials without a value last), one line each."""
    def order(t: dict[str, Any]) -> tuple[Any, ...]:
        v = t.get("value")
        return (v is None, 0.0 if v is None else (v if minimize else -v), t["trial"])

    lines = [f"{'rank':>4} {'trial':>5} {'status':>8} {metric:>10} {'best ep':>7} {'epochs':>6} {'seconds':>8}  overrides"]
    for rank, t in enumerate(sorted(trials, key=order), 1):
        v = "-" if t.get("value") is None else f"{t['value']:.4f}"
        lines.append(f"{rank:>4} {t['trial']:>5} {t['status']:>8} {v:>10} {str(t.get('best_epoch') or '-'):>7} "
                     f"{t.get('epochs') or 0:>6} {t.get('seconds') or 0:>8.0f}  {describe(t.get('overrides') or {})}")
    return "\n".join(lines)
