"""``genrec compare``: the test metrics, protocol stamps and seeds of runs and benchmark records, in one table.

A number is only comparable to another measured the same way, so entries whose protocol stamps (or dataset
fingerprints) differ are refused with one line naming the stamp, unless the caller allows a mixed table; the
stamps are columns of the table either way. Run folders of every kind and benchmark records
(``benchmarks/results/*.json``, mean and standard deviation over their seeds) read into one :class:`Entry`.
"""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from genrec.data.prepare import DEFAULT_TIE_ORDER
from genrec.errors import GenrecError
from genrec.runs.layout import CONFIG_FILE, VARIANT_RESULTS, results_path

# how a test number was measured: two entries compared in one table must agree on every one of these
STAMPS = ("task", "split", "evaluated_on", "candidates", "exclude_history", "labels", "tie_order")
DATA_STAMP = "data_fingerprint"
FORMATS = ("table", "markdown", "csv", "json")
SUFFIX_FORMATS = {".md": "markdown", ".markdown": "markdown", ".csv": "csv", ".json": "json"}
# counters and settings that results records keep beside their metrics
NOT_METRICS = {"beam_size", "gauc_users", "positive_rate", "targets_in_candidates"}


@dataclass
class Entry:
    """One column-set of the table: a run folder's test results or a benchmark record's seed mean."""

    name: str
    source: Path  # the run folder or the record file
    model: str
    dataset: str
    data_fingerprint: str
    protocol: dict[str, Any]
    seeds: list[Any]
    metrics: dict[str, float]  # flat keys: "ndcg@10", GAMER's "buy/hit@10"
    std: dict[str, float] = field(default_factory=dict)  # over seeds, when the record has several
    run_dir: Path | None = None  # set for run folders (their metrics.jsonl can be plotted)

    def stamp(self, key: str) -> Any:
        """The value of protocol stamp ``key`` (None when the record has none)."""
        if key == DATA_STAMP:
            return self.data_fingerprint or None
        if key == "candidates" and "candidate_mode" in self.protocol:  # GAMER: how ranked is said apart
            return self.protocol["candidate_mode"]
        if key == "tie_order":  # records from before the stamp ordered ties the stable way
            return self.protocol.get(key, DEFAULT_TIE_ORDER)
        return self.protocol.get(key)


def flat_metrics(metrics: Any, prefix: str = "") -> dict[str, float]:
    """Numeric metrics with nested groups joined by ``/`` (a multi-behavior record's ``per_behavior`` and
    ``merged`` rows become ``buy/hit@10``, ``merged/hit@10``; its ``headline`` repeats a behavior and is
    dropped); counts (``num_*``) and settings kept beside the metrics are left out."""
    if not isinstance(metrics, dict):
        return {}
    if "per_behavior" in metrics:
        metrics = {**metrics["per_behavior"], **{k: v for k, v in metrics.items()
                                                 if k not in ("per_behavior", "headline")}}
    out: dict[str, float] = {}
    for k, v in metrics.items():
        if isinstance(v, dict):
            out.update(flat_metrics(v, f"{prefix}{k}/"))
        elif isinstance(v, (int, float)) and not isinstance(v, bool) and not (
                k.startswith("num_") or k in NOT_METRICS):
            out[f"{prefix}{k}"] = float(v)
    return out


def _name_of(x: Any) -> str:
    return str(x.get("name", "")) if isinstance(x, dict) else str(x or "")


def entry_from_record(rec: dict[str, Any], name: str, source: Path, run_dir: Path | None = None) -> Entry:
    """An :class:`Entry` from a results record (a run's ``results/test.json``) or a benchmark record."""
    fp = rec.get(DATA_STAMP) or (rec["dataset"].get("fingerprint") if isinstance(rec.get("dataset"), dict) else "")
    seeds = rec.get("seeds")
    if not seeds:
        seed = ((rec.get("config") or {}).get("train") or {}).get("seed")
        seeds = [] if seed is None else [seed]
    metrics = rec.get("metrics_mean") or rec.get("metrics")
    std = rec.get("metrics_std") or rec.get("spread") or {}
    protocol = rec.get("protocol") if isinstance(rec.get("protocol"), dict) else {}
    return Entry(name, source, _name_of(rec.get("model")), _name_of(rec.get("dataset")), str(fp or ""), protocol,
                 list(seeds), flat_metrics(metrics), flat_metrics(std), run_dir)


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise GenrecError(f"{path}: not a readable JSON file ({exc})") from None


def check_run_folder(path: Path) -> None:
    """A one-line error unless ``path`` is a run folder (it holds the run record); names the runs inside a
    folder that only holds runs (a staged run's stages)."""
    if not path.exists():
        raise GenrecError(f"{path}: no such run folder or record")
    if path.is_dir() and (path / CONFIG_FILE).is_file():
        return
    inner = sorted(str(p.parent) for p in path.glob(f"*/{CONFIG_FILE}")) if path.is_dir() else []
    hint = f"; run folders inside it: {', '.join(inner[:4])}{' ...' * (len(inner) > 4)}" if inner else ""
    raise GenrecError(f"{path}: not a genrec run folder (no {CONFIG_FILE}){hint}")


def load_entry(path: str | Path) -> Entry:
    """A run folder (its test results) or a JSON record file (benchmark or results record)."""
    p = Path(path)
    if p.is_file():
        rec = _read_json(p)
        if not isinstance(rec, dict) or not isinstance(rec.get("metrics"), dict):
            raise GenrecError(f"{p}: not a benchmark or results record (no 'metrics' object)")
        return entry_from_record(rec, p.stem, p)
    check_run_folder(p)
    res = run_results(p)
    if res is None:
        raise GenrecError(f"{p}: no {results_path(p).relative_to(p)} yet (a run writes it when training finishes)")
    return entry_from_record(_read_json(res), p.name, p, run_dir=p)


def run_results(run_dir: Path) -> Path | None:
    """A run folder's test results record: ``results/test.json``, or a multi-behavior variant run's
    ``results.json``; None before training has finished."""
    for path in (results_path(run_dir), run_dir / VARIANT_RESULTS):
        if path.is_file():
            return path
    return None


def load_entries(paths: list[str | Path]) -> list[Entry]:
    """Entries for every path; two with one name are told apart by their parent folder."""
    entries = [load_entry(p) for p in paths]
    names = [e.name for e in entries]
    for e in entries:
        if names.count(e.name) > 1:
            e.name = f"{e.source.parent.name}/{e.name}"
    return entries


def _show(value: Any, key: str = "") -> str:
    """A stamp as a short cell: a CTR split or label dict by its name, other dicts as compact JSON."""
    if value is None:
        return "-"
    if isinstance(value, dict):
        for k in (key, "split", "label"):
            if isinstance(value.get(k), str):
                return value[k]
        return json.dumps(value, sort_keys=True, separators=(",", ":"))
    return str(value)


def check_protocols(entries: list[Entry], allow_mixed: bool = False) -> None:
    """Refuse (one line naming the first differing stamp) unless every entry shares the first one's stamps."""
    if allow_mixed or len(entries) < 2:
        return
    first = entries[0]
    for key in (DATA_STAMP, *STAMPS):
        for e in entries[1:]:
            a, b = first.stamp(key), e.stamp(key)
            if json.dumps(a, sort_keys=True, default=str) != json.dumps(b, sort_keys=True, default=str):
                what = "dataset fingerprint" if key == DATA_STAMP else f"protocol stamp '{key}'"
                raise GenrecError(f"{what} differs: {first.name} has {_show(a, key)}, {e.name} has "
                                  f"{_show(b, key)}; pass --allow-mixed to compare them anyway")


def metric_columns(entries: list[Entry], wanted: list[str] | None = None) -> list[str]:
    """``wanted`` (each must be in some entry), else the union of the entries' metrics in first-seen order."""
    union = list(dict.fromkeys(k for e in entries for k in e.metrics))
    if not wanted:
        return union
    missing = [m for m in wanted if m not in union]
    if missing:
        raise GenrecError(f"no entry has metric(s) {', '.join(missing)} (known: {', '.join(union) or 'none'})")
    return list(wanted)


def _cells(e: Entry, stamps: list[str], metrics: list[str], with_std: bool) -> list[str]:
    row = [e.name, e.model or "-", e.data_fingerprint or "-", *(_show(e.stamp(s), s) for s in stamps),
           ",".join(str(s) for s in e.seeds) or "-"]
    for m in metrics:
        v = e.metrics.get(m)
        cell = "-" if v is None else f"{v:.4f}"
        if with_std and v is not None and m in e.std and len(e.seeds) > 1:
            cell += f" ± {e.std[m]:.4f}"
        row.append(cell)
    return row


def compare_rows(entries: list[Entry], metrics: list[str]) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the text table: name, model, data fingerprint, the stamps any entry has, seeds,
    then the metrics (``mean ± std`` for a record of several seeds)."""
    stamps = [s for s in STAMPS if any(e.stamp(s) is not None for e in entries)]
    header = ["name", "model", "data", *stamps, "seeds", *metrics]
    return header, [_cells(e, stamps, metrics, with_std=True) for e in entries]


def _text_table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in [header, *rows]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _markdown(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join("---" for _ in header) + " |"]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in r) + " |" for r in rows]
    return "\n".join(lines)


def _csv_stamp(value: Any) -> str:
    return "" if value is None else value if isinstance(value, str) else json.dumps(value, sort_keys=True)


def _csv(entries: list[Entry], metrics: list[str]) -> str:
    """Machine-readable: full-precision means, a ``METRIC_std`` column beside each metric any entry has a
    standard deviation for, every stamp as its JSON value."""
    stamps = [s for s in STAMPS if any(e.stamp(s) is not None for e in entries)]
    with_std = [m for m in metrics if any(m in e.std and len(e.seeds) > 1 for e in entries)]
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["name", "model", "dataset", DATA_STAMP, *stamps, "seeds",
                *(c for m in metrics for c in ((m, f"{m}_std") if m in with_std else (m,)))])
    for e in entries:
        row = [e.name, e.model, e.dataset, e.data_fingerprint, *(_csv_stamp(e.stamp(s)) for s in stamps),
               " ".join(str(s) for s in e.seeds)]
        for m in metrics:
            v = e.metrics.get(m)
            row.append("" if v is None or not math.isfinite(v) else repr(v))
            if m in with_std:
                row.append(repr(e.std[m]) if m in e.std and len(e.seeds) > 1 else "")
        w.writerow(row)
    return buf.getvalue()


def _json(entries: list[Entry], metrics: list[str]) -> str:
    out = [{"name": e.name, "source": str(e.source), "model": e.model, "dataset": e.dataset,
            DATA_STAMP: e.data_fingerprint, "protocol": {s: e.stamp(s) for s in STAMPS if e.stamp(s) is not None},
            "seeds": e.seeds, "metrics": {m: e.metrics[m] for m in metrics if m in e.metrics},
            "std": {m: e.std[m] for m in metrics if m in e.std and len(e.seeds) > 1}} for e in entries]
    return json.dumps(out, indent=2, default=str)


def render(entries: list[Entry], metrics: list[str], fmt: str = "table") -> str:
    """The comparison in ``fmt`` (table, markdown, csv or json)."""
    if fmt == "csv":
        return _csv(entries, metrics)
    if fmt == "json":
        return _json(entries, metrics) + "\n"
    header, rows = compare_rows(entries, metrics)
    return (_markdown if fmt == "markdown" else _text_table)(header, rows) + "\n"


def compare(paths: list[str | Path], metrics: list[str] | None = None, allow_mixed: bool = False
            ) -> tuple[list[Entry], list[str]]:
    """Read and check the entries; returns them and the metric columns to show."""
    if not paths:
        raise GenrecError("compare: give at least one run folder or record")
    entries = load_entries(paths)
    check_protocols(entries, allow_mixed)
    return entries, metric_columns(entries, metrics)


def format_for(out: str | None, fmt: str | None) -> str:
    """The format asked for, else the one ``out``'s suffix names (``.md``, ``.csv``, ``.json``), else a table."""
    if fmt:
        if fmt not in FORMATS:
            raise GenrecError(f"--format {fmt}: expected one of {', '.join(FORMATS)}")
        return fmt
    return SUFFIX_FORMATS.get(Path(out).suffix.lower(), "table") if out else "table"

