"""``genrec compare`` and ``genrec plot``: read finished runs and benchmark records, write tables and pictures.

Only argparse is imported here (``genrec.cli`` imports this module for every command); the readers, and
matplotlib for ``plot``, are imported inside the handlers. Neither command writes into a run folder.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from genrec.errors import GenrecError


def _metric_list(values: list[str] | None) -> list[str] | None:
    """``--metrics ndcg@10 hr@10`` or ``--metrics ndcg@10,hr@10``."""
    return [m for v in values or [] for m in v.split(",") if m] or None


def _cmd_compare(args: argparse.Namespace) -> int:
    from genrec.eval.compare import compare, format_for, render

    entries, metrics = compare(args.paths, _metric_list(args.metrics), allow_mixed=args.allow_mixed)
    fmt = format_for(args.out, args.format)
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(render(entries, metrics, fmt), encoding="utf-8")
        print(render(entries, metrics, "table"), end="")
        print(f"wrote {out} ({fmt})")
    else:
        print(render(entries, metrics, fmt), end="")
    return 0


def _cmd_plot(args: argparse.Namespace) -> int:
    from genrec.eval import plots

    if not (args.runs or args.records or args.sid or args.pgsa):
        raise GenrecError("plot: give run folders (learning curves), --records (leaderboard), --sid or --pgsa")
    plots.require_matplotlib()
    written: list[Path] = []
    if args.runs:
        written += plots.plot_learning_curves(args.runs, args.out, args.metric)
    if args.records:
        written.append(plots.plot_leaderboard(args.records, args.out, args.metric, allow_mixed=args.allow_mixed))
    if args.sid:
        written.append(plots.plot_sid_usage(args.sid, args.out))
    if args.pgsa:
        written.append(plots.plot_pgsa_kept(args.pgsa, args.out))
    for path in written:
        print(path)
    return 0


def register(subparsers: Any) -> None:
    """Add ``compare`` and ``plot`` to the ``genrec`` command line."""
    c = subparsers.add_parser(
        "compare", help="a table of test metrics, protocol stamps and seeds of runs or benchmark records",
        description="Compare finished runs (folders written by genrec train) and benchmark records "
                    "(benchmarks/results/*.json). Entries measured under different protocols are refused "
                    "unless --allow-mixed.")
    c.add_argument("paths", nargs="+", metavar="RUN_OR_RECORD", help="run folders and/or JSON record files")
    c.add_argument("--metrics", nargs="+", metavar="METRIC",
                   help="metric columns, e.g. ndcg@10 hr@10 (default: every metric any entry has)")
    c.add_argument("--format", choices=["table", "markdown", "csv", "json"],
                   help="output format (default: table, or what --out's suffix says: .md, .csv, .json)")
    c.add_argument("--out", metavar="FILE", help="write the comparison to FILE (the table is printed too)")
    c.add_argument("--allow-mixed", action="store_true",
                   help="compare entries whose protocol stamps or datasets differ (the stamps are shown)")
    c.set_defaults(func=_cmd_compare)

    p = subparsers.add_parser(
        "plot", help="PNG pictures: learning curves, a leaderboard, SID code usage (needs genrec[plot])",
        description="Write PNG files: learning curves of run folders (loss and validation metric against "
                    "epochs and seconds), a leaderboard bar chart of runs or records (--records), the "
                    "semantic-ID code usage per level (--sid), PGSA's kept-column share (--pgsa).")
    p.add_argument("runs", nargs="*", metavar="RUN", help="run folders whose learning curves to overlay")
    p.add_argument("--records", nargs="+", metavar="RUN_OR_RECORD", help="leaderboard of these records or runs")
    p.add_argument("--metric", help="validation metric of the curves / test metric of the leaderboard "
                                    "(default: the first run's early-stopping metric)")
    p.add_argument("--sid", metavar="RUN_OR_TABLE", help="a generator run folder or a SID table (file or folder)")
    p.add_argument("--pgsa", nargs="+", metavar="RECORD", help="benchmarks/pgsa.py records")
    p.add_argument("--out", default="plots", metavar="DIR", help="folder for the PNG files (default plots/)")
    p.add_argument("--allow-mixed", action="store_true", help="leaderboard: allow entries whose protocols differ")
    p.set_defaults(func=_cmd_plot)
