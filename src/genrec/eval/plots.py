"""``genrec plot``: pictures of runs and benchmark records, one PNG file per figure.

- learning curves: each run's training loss and validation metric against epochs and against cumulative
  training seconds, several runs overlaid (read from ``metrics.jsonl``, any kind of run);
- a leaderboard: one bar per run or record (the seeds' mean, their standard deviation as an error bar), under
  the protocol check of ``genrec compare``;
- semantic-ID code usage: per level, how many items each code holds (a generator run's table or a table file);
- PGSA's kept-column share against history length (a ``benchmarks/pgsa.py`` record).

matplotlib is the optional ``plot`` extra. Figures are drawn on matplotlib's Agg canvas through ``Figure``
objects, never pyplot: no display is needed and no global figure state outlives a call.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from genrec.errors import GenrecError
from genrec.eval.compare import Entry, check_protocols, check_run_folder, load_entries, run_results
from genrec.progress import say
from genrec.runs.layout import CONFIG_FILE, METRICS_LOG, SESSION_SID_FILE, SID_DIR

INSTALL_HINT = "pip install 'genrec[plot]'"
DPI = 120
VALID_PREFIX = "valid/"  # how the training loop logs a validation metric in metrics.jsonl


def require_matplotlib() -> None:
    """One line saying how to install matplotlib when it is missing."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise GenrecError(f"`genrec plot` needs matplotlib, which is not installed: {INSTALL_HINT}") from None


def _figure(rows: int, cols: int, size: tuple[float, float]) -> tuple[Any, np.ndarray]:
    """A figure on the Agg canvas and its (rows, cols) axes."""
    require_matplotlib()
    from matplotlib.figure import Figure

    fig = Figure(figsize=size, layout="constrained")
    return fig, fig.subplots(rows, cols, squeeze=False)


def _save(fig: Any, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI)
    return path


def slug(text: str) -> str:
    """``ndcg@10`` -> ``ndcg-10``: a metric name that is safe in a file name and a Markdown link."""
    return re.sub(r"[^A-Za-z0-9._]+", "-", text).strip("-") or "metric"


# -- learning curves -----------------------------------------------------------------------------------


@dataclass
class Curves:
    """One run's epoch records: what ``metrics.jsonl`` logged when each epoch closed."""

    name: str
    epoch: np.ndarray  # (E,) epochs completed
    seconds: np.ndarray  # (E,) cumulative training seconds at each epoch's end (validation excluded)
    loss: np.ndarray  # (E,) mean training loss of the epoch
    valid: dict[str, np.ndarray]  # "valid/ndcg@10" -> (E,), NaN where the epoch was not validated
    stop_metric: str | None  # the metric the run early-stopped on, as logged ("valid/ndcg@10")


def _epoch_records(path: Path) -> list[dict[str, Any]]:
    """The records that close an epoch, the last one per epoch (a run continued later appends more)."""
    if not path.is_file():
        raise GenrecError(f"{path}: missing (the run has not finished an epoch yet)")
    by_epoch: dict[int, dict[str, Any]] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:  # a line cut short by a killed process
            continue
        if isinstance(rec, dict) and "train_loss_epoch" in rec:
            by_epoch[int(round(float(rec["epoch"])))] = rec
    if not by_epoch:
        raise GenrecError(f"{path}: no finished epoch logged yet")
    return [by_epoch[e] for e in sorted(by_epoch)]


def _stop_metric(run_dir: Path, logged: set[str]) -> str | None:
    """The logged validation key of the run's early-stopping metric (its results' ``early_stopping`` stamp,
    e.g. ``ndcg@10 on validation`` or GAMER's ``valid_loss``), else the first validation key logged."""
    names: list[str] = []
    res = run_results(run_dir)
    if res is not None:
        stamp = (json.loads(res.read_text(encoding="utf-8")).get("protocol") or {}).get("early_stopping")
        if isinstance(stamp, str) and stamp.split():
            names.append(stamp.split()[0])
    names += [n.removeprefix("valid_") for n in names]
    for n in names:
        if VALID_PREFIX + n in logged:
            return VALID_PREFIX + n
    return next(iter(sorted(k for k in logged if k.startswith(VALID_PREFIX))), None)


def read_curves(run_dir: str | Path) -> Curves:
    """A run folder's learning curves (any kind: every trainer logs through the one training loop)."""
    run_dir = Path(run_dir)
    check_run_folder(run_dir)
    recs = _epoch_records(run_dir / METRICS_LOG)
    keys = list(dict.fromkeys(k for r in recs for k in r if k.startswith(VALID_PREFIX)))
    valid = {k: np.array([float(r.get(k, math.nan)) for r in recs]) for k in keys}
    return Curves(run_dir.name, np.array([float(r["epoch"]) for r in recs]),
                  np.cumsum([float(r.get("epoch_seconds", 0.0)) for r in recs]),
                  np.array([float(r["train_loss_epoch"]) for r in recs]), valid, _stop_metric(run_dir, set(keys)))


def _valid_key(curves: list[Curves], metric: str | None) -> str | None:
    """The validation key to draw: ``metric`` (logged by some run, or an error), else the first run's
    early-stopping metric; runs that did not log it are named on standard error."""
    logged = list(dict.fromkeys(k for c in curves for k in c.valid))
    if metric:
        key = metric if metric.startswith(VALID_PREFIX) else VALID_PREFIX + metric
        if key not in logged:
            known = ", ".join(k.removeprefix(VALID_PREFIX) for k in logged) or "none"
            raise GenrecError(f"no run logged validation metric '{metric}' (logged: {known})")
    else:
        key = next((c.stop_metric for c in curves if c.stop_metric), None)
    for c in curves:
        if key and key not in c.valid:
            say(f"{c.name}: no {key} in its {METRICS_LOG}; left out of the validation panel")
    return key


def _best(values: np.ndarray, key: str) -> int:
    """Index of the best validated epoch: the lowest of a loss, the highest of anything else."""
    return int(np.nanargmin(values) if "loss" in key.lower() else np.nanargmax(values))


def plot_learning_curves(runs: list[str | Path], out: str | Path, metric: str | None = None) -> list[Path]:
    """Two PNGs (against epochs, against cumulative seconds), each with a loss panel and, when any run
    validated, a validation panel; runs overlaid. Returns the files written."""
    curves = [read_curves(r) for r in runs]
    names = [c.name for c in curves]
    for c, r in zip(curves, runs):
        if names.count(c.name) > 1:
            c.name = f"{Path(r).parent.name}/{c.name}"
    key = _valid_key(curves, metric)
    written = []
    for x_attr, x_label in (("epoch", "epoch"), ("seconds", "training seconds (cumulative, validation excluded)")):
        fig, axes = _figure(2 if key else 1, 1, (7.5, 7.0 if key else 4.0))
        for c in curves:
            x = getattr(c, x_attr)
            axes[0][0].plot(x, c.loss, label=c.name)
            if key and key in c.valid:
                ok = ~np.isnan(c.valid[key])
                line, = axes[1][0].plot(x[ok], c.valid[key][ok], marker=".", label=c.name)
                best = _best(c.valid[key], key)
                axes[1][0].plot(x[best], c.valid[key][best], marker="*", markersize=13, color=line.get_color())
        axes[0][0].set_ylabel("training loss (epoch mean)")
        if key:
            axes[1][0].set_ylabel(f"validation {key.removeprefix(VALID_PREFIX)}")
        for ax in axes[:, 0]:
            ax.set_xlabel(x_label)
            ax.grid(alpha=0.3)
            ax.legend(fontsize="small")
        fig.suptitle(f"Learning curves: {', '.join(c.name for c in curves)}"
                     + (" (star: best validation)" if key else ""), fontsize="medium")
        written.append(_save(fig, Path(out) / f"learning-curves-{x_attr}.png"))
    return written


# -- leaderboard -------------------------------------------------------------------------------------


def _default_metric(entries: list[Entry]) -> str:
    """The first entry's early-stopping metric when it has it as a test metric, else ndcg@10, else its first."""
    first = entries[0]
    stamp = first.protocol.get("early_stopping")
    for m in ([stamp.split()[0]] if isinstance(stamp, str) and stamp.split() else []) + ["ndcg@10"]:
        if m in first.metrics:
            return m
    if not first.metrics:
        raise GenrecError(f"{first.source}: no test metrics to plot")
    return next(iter(first.metrics))


def plot_leaderboard(paths: list[str | Path], out: str | Path, metric: str | None = None,
                     allow_mixed: bool = False) -> Path:
    """A bar per run or record, best first: the test ``metric`` (the seeds' mean, their standard deviation as
    an error bar when a record has several seeds). Entries measured differently are refused as in compare."""
    entries = load_entries(paths)
    check_protocols(entries, allow_mixed)
    metric = metric or _default_metric(entries)
    lacking = [e.name for e in entries if metric not in e.metrics]
    if lacking:
        raise GenrecError(f"no test metric '{metric}' in {', '.join(lacking)}")
    entries.sort(key=lambda e: e.metrics[metric], reverse="loss" not in metric.lower())
    means = [e.metrics[metric] for e in entries]
    errs = [e.std.get(metric, 0.0) if len(e.seeds) > 1 else 0.0 for e in entries]
    fig, axes = _figure(1, 1, (max(5.0, 1.3 * len(entries) + 2), 4.5))
    ax = axes[0][0]
    x = np.arange(len(entries))
    ax.bar(x, means, yerr=errs, capsize=4, color="#4c72b0")
    for i, (m, s) in enumerate(zip(means, errs)):
        ax.annotate(f"{m:.4f}", (i, m + s), textcoords="offset points", xytext=(0, 3), ha="center",
                    fontsize="small")
    ax.set_xticks(x, [f"{e.name}\n({len(e.seeds)} seed{'s' * (len(e.seeds) != 1)})" for e in entries],
                  fontsize="small", rotation=20, ha="right")
    ax.set_ylabel(f"test {metric}")
    ax.grid(axis="y", alpha=0.3)
    first = entries[0]
    where = ", ".join(str(v) for v in (first.dataset, first.protocol.get("candidates"),
                                       _history_stamp(first.protocol)) if v)
    ax.set_title(f"test {metric}: {where}" + (" (mixed protocols)" if allow_mixed else ""), fontsize="medium")
    return _save(fig, Path(out) / f"leaderboard-{slug(metric)}.png")


def _history_stamp(protocol: dict[str, Any]) -> str:
    excl = protocol.get("exclude_history")
    return "" if excl is None else ("history excluded" if excl else "history kept")


# -- semantic-ID code usage ------------------------------------------------------------------------------


def _sid_table(path: Path) -> Any:
    """The SID table of a generator run folder (``sid/`` or a multi-behavior run's ``sids.json``), or a
    table file or folder (``genrec sid build --out``)."""
    from genrec.sid.build import load_sid_table
    from genrec.sid.codebook import SIDTable

    if path.is_dir() and (path / CONFIG_FILE).is_file():
        if (path / SID_DIR).is_dir():
            return load_sid_table(path / SID_DIR)
        if (path / SESSION_SID_FILE).is_file():
            return SIDTable.load(path / SESSION_SID_FILE)
        raise GenrecError(f"{path}: this run has no SID table (a generator run keeps it in {SID_DIR}/ or "
                          f"{SESSION_SID_FILE})")
    if not path.exists():
        raise GenrecError(f"{path}: no such run folder or SID table")
    return load_sid_table(path)


def plot_sid_usage(path: str | Path, out: str | Path) -> Path:
    """One panel per SID level: items per code, codes sorted by how many items they hold, with the level's
    used share and entropy (the ``genrec sid health`` numbers) in the panel title."""
    path = Path(path)
    table = _sid_table(path)
    health = table.health()
    m = table.length
    cols = min(m, 2)
    rows = math.ceil(m / cols)
    fig, axes = _figure(rows, cols, (5.0 * cols, 3.2 * rows))
    for lv, h in enumerate(health.levels):
        ax = axes[lv // cols][lv % cols]
        counts = np.sort(np.bincount(table.codes[:, lv], minlength=table.codebook_sizes[lv]))[::-1]  # (K,)
        ax.bar(np.arange(1, len(counts) + 1), counts, width=1.0, color="#55a868")
        collision = " (collision)" if table.collision_level and lv == m - 1 else ""
        ax.set_title(f"level {lv + 1}{collision}: {int((counts > 0).sum())} of {len(counts)} codes used, "
                     f"entropy {h.entropy_bits:.2f} of {math.log2(max(len(counts), 2)):.2f} bits", fontsize="small")
        ax.set_xlabel("code, by items held")
        ax.set_ylabel("items")
    for k in range(m, rows * cols):
        axes[k // cols][k % cols].set_visible(False)
    fig.suptitle(f"SID code usage: {table.num_items} items, {table.quantizer} "
                 f"(collision rate {health.collision_rate:.3f})", fontsize="medium")
    return _save(fig, Path(out) / f"sid-usage-{slug(path.stem if path.is_file() else path.name)}.png")


# -- PGSA kept columns ------------------------------------------------------------------------------------


def plot_pgsa_kept(records: list[str | Path], out: str | Path) -> Path:
    """Kept-column share of preference-guided sparse attention against history length N, one line per record
    (``metrics.by_history_length.N.kept_columns`` of a ``benchmarks/pgsa.py`` record)."""
    fig, axes = _figure(1, 1, (6.5, 4.0))
    ax = axes[0][0]
    for rec_path in map(Path, records):
        try:
            rec = json.loads(rec_path.read_text(encoding="utf-8"))
            by_n = rec["metrics"]["by_history_length"]
            n = np.array(sorted(int(k) for k in by_n))
            kept = np.array([float(by_n[str(k)]["kept_columns"]) for k in n])
        except (OSError, ValueError, KeyError, TypeError):
            raise GenrecError(f"{rec_path}: not a PGSA record with kept_columns by history length "
                              "(benchmarks/pgsa.py writes one)") from None
        pr = rec.get("protocol") or {}
        ax.plot(n, kept / n, marker="o", label=f"{rec_path.stem} (top_k {pr.get('top_k', '?')}, "
                                                 f"sigma {pr.get('sigma', '?')})")
        for x, k in zip(n, kept):
            ax.annotate(f"{k:.0f}", (x, k / x), textcoords="offset points", xytext=(0, 6), ha="center",
                        fontsize="x-small")
    ax.set_xscale("log", base=2)
    ax.set_xticks(n, [str(v) for v in n])
    ax.set_ylim(0, 1.08)
    ax.set_xlabel("history length N")
    ax.set_ylabel("kept columns / N")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    ax.set_title("PGSA: kept share of the history (kept columns on the points)", fontsize="medium")
    return _save(fig, Path(out) / "pgsa-kept-share.png")
