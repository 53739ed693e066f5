"""A recipe search: train each trial on the training split, select on validation, never evaluate on test.

``run_search(SPEC, OUT, data=DIR)`` (``genrec tune SPEC --data DIR --out OUT``) trains trial after trial into
``OUT/trials/<id>/`` under :func:`genrec.train.run_folder.validation_only`, appends each one's line to
``OUT/trials.jsonl`` and finally writes ``OUT/best.yaml`` (layout: :mod:`genrec.tune.records`). Run it again
after a kill and it goes on: recorded trials are not rerun, a half-trained trial resumes from its checkpoint
with what is left of its time budget, and raising ``trials:`` extends a finished search.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from genrec.config import RunConfig, early_stop_metric
from genrec.data.loading import load_data
from genrec.data.schema import Dataset
from genrec.errors import ConfigError
from genrec.eval.metrics import CTR, GENERATION, RETRIEVAL, default_stop_metric
from genrec.io import write_json_atomic
from genrec.models.base import GENERATOR, RANKER, RETRIEVER
from genrec.progress import duration, say
from genrec.runs import lock
from genrec.runs.checkpoint import latest_checkpoint, read_state, summary_of
from genrec.runs.kinds import config_kind
from genrec.runs.layout import CHECKPOINT_DIR, results_path
from genrec.train.run import train_run
from genrec.train.run_folder import lower_is_better, validation_only
from genrec.tune.records import (
    SEARCH_FILE,
    TRIAL_FILE,
    TRIALS_DIR,
    append_trial,
    best_trial,
    describe,
    read_trials,
    trial_id,
    valid_metrics_at,
    write_best,
)
from genrec.tune.samplers import Point, grid_size, overrides_of, propose
from genrec.tune.spec import SearchSpec, build_config, check_values, load_spec, merge_overrides

_TASKS = {RETRIEVER: RETRIEVAL, RANKER: CTR, GENERATOR: GENERATION}
# how this machine runs the trials, not what they learn: settable per call (``--set``), kept out of best.yaml
RUN_SETTINGS = ("train.device", "train.num_threads", "train.progress", "train.progress_interval", "train.tensorboard",
                "train.checkpoint_every")


def check_run_settings(settings: dict[str, Any]) -> None:
    """Refuse a per-call setting that would change what a trial learns (that belongs in the spec)."""
    for key in settings:
        if key not in RUN_SETTINGS:
            raise ConfigError(f"--set {key}: only settings that leave what a trial learns alone may be given per call "
                              f"({', '.join(RUN_SETTINGS)}); put {key} in the spec's fixed:")


@dataclass
class SearchResult:
    """What one call of :func:`run_search` leaves: every recorded trial (by id), the best, and how many remain."""

    out: Path
    metric: str
    minimize: bool
    trials: list[dict[str, Any]]
    total: int
    best: dict[str, Any] | None
    best_path: Path | None

    @property
    def pending(self) -> int:
        return self.total - len(self.trials)


def search_metric(spec: SearchSpec, cfg: RunConfig) -> str:
    """The validation metric trials are compared by: the spec's, else the recipe's early-stopping metric."""
    if spec.metric:
        return spec.metric
    task = _TASKS.get(config_kind(cfg))
    if task is None and cfg.train.early_stop_metric in ("", "auto"):
        raise ConfigError(f"{spec.path}: name the validation metric to compare trials by (metric: ...)")
    return early_stop_metric(cfg, default_stop_metric(task, cfg.eval.ks) if task else "")


def search_base(spec: SearchSpec, data: str | None) -> tuple[dict[str, Any], str]:
    """The raw recipe every trial starts from (base recipe, ``--data``, ``fixed:``, the metric) and the metric."""
    base = merge_overrides(spec.base, {"data.path": data} if data else {})
    base = merge_overrides(base, spec.fixed)
    metric = search_metric(spec, build_config(base, spec.recipe))
    if spec.metric:  # trials early-stop and keep their best weights by the metric they are compared by
        base = merge_overrides(base, {"train.early_stop_metric": metric})
    check_values(spec, base)
    return base, metric


def _check_same_search(out: Path, spec: SearchSpec, base: dict[str, Any]) -> None:
    """A folder holds one search: a rerun with another space, base or budget is refused, naming what differs."""
    ident = json.loads(json.dumps({**spec.identity(), "base": base}, default=str))
    ident.pop("recipe", None)  # the same recipe may be named from another folder
    path = out / SEARCH_FILE
    if path.exists():
        old = json.loads(path.read_text())
        diff = sorted(k for k in ident.keys() | old.keys() if ident.get(k) != old.get(k))
        if diff:
            raise ConfigError(f"{out}: holds a search with other {', '.join(diff)}; use another --out "
                              "(only trials: may change between calls)")
    else:
        write_json_atomic(path, ident)


def run_search(spec_path: str | Path, out: str | Path, data: str | None = None, limit: int | None = None,
               settings: dict[str, Any] | None = None) -> SearchResult:
    """Run (or go on with) the search of ``spec_path`` into ``out``; ``data`` overrides ``data.path``;
    ``limit`` caps the trials trained by this call; ``settings`` (:data:`RUN_SETTINGS` only, e.g.
    ``{"train.num_threads": 1}``) say how this call runs its trials. Returns every recorded trial and the best."""
    spec = load_spec(spec_path)
    settings = dict(settings or {})
    check_run_settings(settings)
    base, metric = search_base(spec, data)
    minimize = lower_is_better(metric)
    out = Path(out)
    held = lock.acquire(out)
    try:
        _check_same_search(out, spec, base)
        done = read_trials(out)
        total = min(spec.trials or grid_size(spec), grid_size(spec)) if spec.method == "grid" else spec.trials
        datasets: dict[tuple[Any, ...], Dataset] = {}
        ran = 0
        for i in range(total):
            tid = trial_id(i)
            if tid in done:
                continue
            if limit is not None and ran >= limit:
                break
            point = _trial_point(spec, i, out, done, minimize)
            say(f"trial {tid} ({i + 1}/{total}): {describe(overrides_of(spec.params, point))}")
            rec = run_trial(spec, tid, point, merge_overrides(base, settings), out, metric, datasets)
            append_trial(out, rec)
            done[tid] = rec
            ran += 1
            shown = "no value" if rec["value"] is None else f"valid {metric} {rec['value']:.4f} @ epoch {rec['best_epoch']}"
            say(f"trial {tid}: {rec['status']}, {shown}, {duration(rec['wall_seconds'])}")
        trials = [done[k] for k in sorted(done)]
        best = best_trial(trials, minimize)
        best_path = None
        if best is not None:
            best_path = write_best(out, merge_overrides(base, best["overrides"]), best, metric, len(trials))
    finally:
        lock.release(held)
    return SearchResult(out, metric, minimize, trials, total, best, best_path)


def _trial_point(spec: SearchSpec, index: int, out: Path, done: dict[str, dict[str, Any]], minimize: bool
                 ) -> Point:
    """A started trial keeps the point it was started with; a new one is proposed from the trials before it."""
    started = out / TRIALS_DIR / trial_id(index) / TRIAL_FILE
    if started.exists():
        return json.loads(started.read_text())["point"]
    history = [(done[k]["point"], done[k]["value"]) for k in sorted(done)
               if int(k) < index and done[k].get("value") is not None]
    return propose(spec, index, history, minimize)


def _dataset(cfg: RunConfig, cache: dict[tuple[Any, ...], Dataset]) -> Dataset:
    """Load each dataset once per search (trials that vary model or training settings share it)."""
    d = cfg.data
    key = (d.path, d.synthetic_users, d.synthetic_items, d.synthetic_seed)
    if key not in cache:
        cache[key] = load_data(d)
    return cache[key]


def _spent(run_dir: Path) -> tuple[float, dict[str, Any] | None]:
    """Training seconds a trial has banked in its newest checkpoint (0 for a fresh one), and that summary."""
    ckpt = latest_checkpoint(run_dir / CHECKPOINT_DIR) if (run_dir / CHECKPOINT_DIR).exists() else None
    if ckpt is None:
        return 0.0, None
    summary = summary_of(read_state(ckpt))
    return float(summary.get("train_seconds") or 0.0), summary


def run_trial(spec: SearchSpec, tid: str, point: Point, base: dict[str, Any], out: Path, metric: str,
              cache: dict[tuple[Any, ...], Dataset]) -> dict[str, Any]:
    """Train (or resume) one trial under its budget and return its line for ``trials.jsonl``."""
    run_dir = out / TRIALS_DIR / tid
    overrides = overrides_of(spec.params, point)
    if not (run_dir / TRIAL_FILE).exists():
        write_json_atomic(run_dir / TRIAL_FILE, {"trial": tid, "point": point, "overrides": overrides})
    rec: dict[str, Any] = {"trial": tid, "point": point, "overrides": overrides, "metric": metric, "value": None}
    t0 = time.time()
    raw = merge_overrides(base, overrides)
    if "epochs" in spec.budget:
        raw = merge_overrides(raw, {"train.epochs": int(spec.budget["epochs"])})
    try:
        cfg = build_config(raw, f"trial {tid}")
    except ConfigError as exc:  # a combination the recipe checks refuse (each value alone passed)
        return {**rec, "status": "failed", "error": str(exc), "wall_seconds": 0.0}
    budget = spec.budget.get("seconds", 0.0)
    spent, summary = _spent(run_dir)
    if budget and spent >= budget and summary is not None:  # killed after its budget ran out, before its line
        res: dict[str, Any] = {"summary": summary}
    else:
        if budget:
            cfg.train.max_seconds = budget - spent
        try:
            with validation_only():
                res = train_run(cfg, run_dir, resume=True, dataset=_dataset(cfg, cache))
        except FloatingPointError as exc:
            return {**rec, "status": "failed", "error": str(exc), "wall_seconds": round(time.time() - t0, 1)}
    trained_in = Path((res.get("finetune") or {}).get("dir") or run_dir)
    refuse_test(res, tid, (run_dir, trained_in))
    summary = res["summary"]
    best_epoch = summary.get("best_epoch")
    return {**rec, "value": summary.get("best_metric"), "valid": valid_metrics_at(trained_in, best_epoch),
            "best_epoch": best_epoch, "epochs": summary.get("epoch"), "seconds": round(summary.get("train_seconds") or 0, 1),
            "wall_seconds": round(time.time() - t0, 1), "status": "complete" if summary.get("finished") else "budget"}


def refuse_test(res: dict[str, Any], tid: str, run_dirs: tuple[Path, ...]) -> None:
    """A trial must never have been evaluated on the test split: no test metrics returned, no test record
    written. (An explicit raise, kept under ``python -O``.)"""
    if res.get("metrics") is not None or any(results_path(d).exists() for d in run_dirs):
        raise AssertionError(f"trial {tid} was evaluated on the test split; a search selects on validation only")
