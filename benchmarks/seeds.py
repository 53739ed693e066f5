"""``--add-seeds``: join new seeds to a committed record instead of replacing it.

A 3-seed table on a CPU can outlast a sitting, and a fresh machine has none of the earlier run folders. With
``--add-seeds`` the benchmark scripts train only the seeds given, then write the record with the earlier record's
per-seed rows kept and the mean and spread recomputed over all of them. Joining is refused (one line, nothing
written) unless the two are the same experiment: same recipe, ablation and overrides, same prepared data
(fingerprint), same protocol and the same config apart from the seed (settings that change only how a run is carried out,
``OPERATIONAL``, aside). Each per-seed row carries the commit and
date that produced it, so a table that spans sessions says so.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

import common

_SEED_IN_PATH = re.compile(r"-seed\d+")
_RUN_KEYS = {"best_epoch"}  # protocol fields that differ per seed by nature
# settings that change how a run is carried out, never what it computes (a resumed run is exact)
OPERATIONAL = {"train.num_threads", "train.tensorboard", "train.progress", "train.checkpoint_every",
               "train.max_seconds", "train.max_steps"}


def _substantive(overrides: list[str]) -> list[str]:
    return [o for o in overrides if o.split("=", 1)[0].strip() not in OPERATIONAL]


def earlier_record(name: str, *, recipe: str, ablation: Any, overrides: list[str], seeds: list[int],
                   results: Path | None = None) -> dict:
    """The record NAME (in ``results``, default benchmarks/results), checked before any training: it exists, it
    was run with the same recipe, ablation and overrides, and none of ``seeds`` is in it already."""
    path = (results or common.RESULTS) / f"{name}.json"
    if not path.exists():
        raise SystemExit(f"--add-seeds: no record {path.name} to join; run without --add-seeds first")
    try:
        old = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise SystemExit(f"--add-seeds: {path.name} is not valid JSON ({e.msg}, line {e.lineno})") from None
    for key, have, new in (("recipe", old.get("recipe"), recipe), ("ablation", old.get("ablation"), ablation),
                           ("overrides", _substantive(old.get("overrides") or []), _substantive(list(overrides)))):
        if have != new:
            raise SystemExit(f"--add-seeds: {path.name} was run with {key}={have!r}, not {new!r}")
    dup = sorted(set(seeds) & {s["seed"] for s in old.get("per_seed", [])})
    if dup:
        raise SystemExit(f"--add-seeds: seed(s) {dup} already in {path.name}; give only new seeds")
    return old


def add_record_options(ap: Any) -> None:
    """``--replace`` and ``--no-record``, the options every seeded benchmark script shares with ``--add-seeds``."""
    ap.add_argument("--replace", action="store_true",
                    help="start the record over although it holds seeds this call does not train")
    ap.add_argument("--no-record", action="store_true",
                    help="train (or re-evaluate) the seeds' run folders and write no record: seeds trained apart, "
                         "on several machines or processes, are recorded by one later call")


def check_record_target(name: str, seeds: list[int], args: Any, results: Path | None = None) -> None:
    """Before any training: refuse a call whose record would replace one that holds seeds it does not train
    (a record is a 3-seed claim; losing seeds by a typo in --seeds is not an update)."""
    if args.add_seeds or args.replace or args.no_record:
        return
    path = (results or common.RESULTS) / f"{name}.json"
    try:
        held = [r["seed"] for r in json.loads(path.read_text()).get("per_seed", [])]
    except (OSError, json.JSONDecodeError, KeyError, TypeError):
        return  # no record (or not one of ours): nothing to lose
    lost = sorted(set(held) - set(seeds))
    if lost:
        raise SystemExit(f"{path.name} holds seed(s) {lost} that --seeds {' '.join(map(str, seeds))} does not "
                         "train: --add-seeds joins the new seeds to it, --replace starts it over, --name writes "
                         "another record")


def _flat(d: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(d, dict):
        out: dict[str, Any] = {}
        for k, v in d.items():
            out.update(_flat(v, f"{prefix}{k}."))
        return out
    if isinstance(d, str):
        d = _SEED_IN_PATH.sub("-seed*", d)  # a run folder of another seed
    return {prefix[:-1]: d}


def config_difference(old: dict, new: dict) -> str | None:
    """The first setting on which two run configs differ, seed aside; keys only one of them has are skipped
    (a knob added since, at its default, which keeps the earlier behaviour)."""
    a, b = _flat(old), _flat(new)
    for key in sorted(a.keys() & b.keys()):
        if key != "train.seed" and key not in OPERATIONAL and a[key] != b[key]:
            return f"{key}: {a[key]!r} there, {b[key]!r} here"
    return None


def stamped(rows: list[dict]) -> list[dict]:
    """New per-seed rows with the commit and date that produced them."""
    return [{**r, "commit": common.commit(), "date": time.strftime("%Y-%m-%d")} for r in rows]


def joined(old: dict, new_rows: list[dict], *, data_fingerprint: str, protocol: dict, config: dict) -> list[dict]:
    """Earlier per-seed rows (stamped with the earlier record's commit and date where they have none) followed by
    the new ones, sorted by seed; refuses when the data, protocol or config differ."""
    name = f"{old.get('recipe')} record"
    if old.get("data_fingerprint") != data_fingerprint:
        raise SystemExit(f"--add-seeds: data fingerprint {data_fingerprint} differs from the {name}'s "
                         f"{old.get('data_fingerprint')}; nothing written (the run folders are kept)")
    p_old = {k: v for k, v in (old.get("protocol") or {}).items() if k not in _RUN_KEYS}
    p_new = {k: v for k, v in protocol.items() if k not in _RUN_KEYS}
    diff = config_difference(p_old, p_new) or config_difference(old.get("config") or {}, config)
    if diff:
        raise SystemExit(f"--add-seeds: not the same experiment as the {name} ({diff}); nothing written "
                         "(the run folders are kept: rerun with --name to record them apart)")
    earlier = [{"commit": old.get("commit"), "date": old.get("date"), **r} for r in old.get("per_seed", [])]
    return sorted(earlier + stamped(new_rows), key=lambda r: r["seed"])
