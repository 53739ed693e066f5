"""``genrec data ...``: prepare, inspect, fetch and synthesize datasets from the command line.

Handlers raise :class:`~genrec.errors.GenrecError` for user mistakes; the main CLI prints those
on one line. Heavy imports happen inside the handlers so ``genrec --help`` stays instant.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from genrec.errors import ConfigError

_READER_FLAGS = ("user_col", "item_col", "time_col", "rating_col", "behavior_col", "sep", "time_format", "no_header",
                 "names", "time_window")
_PREPARE_FLAGS = ("min_rating", "dedup", "user_core", "item_core", "session_gap", "max_session_len", "behavior_order",
                  "tie_order")


def _summary(out: Path) -> str:
    manifest = json.loads((out / "manifest.json").read_text())
    c = manifest["counts"]
    dropped = {k: v for k, v in c.items() if k.startswith("dropped") and v}
    lines = [
        f"prepared {manifest['name']} -> {out}",
        f"  users {c['users']:,}  items {c['items']:,}  interactions {c['interactions']:,}  "
        f"sessions {c['sessions']:,}",
    ]
    if dropped:
        lines.append("  " + "  ".join(f"{k} {v:,}" for k, v in dropped.items()))
    if manifest.get("behaviors"):
        lines.append(f"  behaviors {' < '.join(manifest['behaviors'])}")
    held = manifest.get("published_split")
    if held:
        lines.append(f"  published held-out pairs {held['pairs']:,} of {held['rows']:,} -> {held['file']}")
    lines.append(f"  fingerprint {manifest['fingerprint']}")
    return "\n".join(lines)


def cmd_prepare(args: argparse.Namespace) -> int:
    """Read INPUT with SOURCE's reader and write the canonical folder."""
    from genrec.data.sources import get_source, prepare_source

    spec = get_source(args.source)
    given = {k: getattr(args, k) for k in _READER_FLAGS if getattr(args, k, None) is not None}
    refused = [k for k in given if k not in spec.options]
    if refused:
        flags = ", ".join("--" + k.replace("_", "-") for k in refused)
        raise ConfigError(f"source '{spec.name}' does not take {flags}")
    params: dict[str, Any] = {k: getattr(args, k) for k in _PREPARE_FLAGS if getattr(args, k, None) is not None}
    out = prepare_source(spec.name, args.input, args.out, name=args.name, overwrite=args.force, **given, **params)
    print(_summary(Path(out)))
    return 0


def cmd_stats(args: argparse.Namespace) -> int:
    """Print the statistics of a prepared folder (as text, or JSON with --json)."""
    from genrec.data.schema import load_dataset
    from genrec.data.stats import dataset_stats, format_stats

    d = dataset_stats(load_dataset(args.dir))
    print(json.dumps(d, indent=2) if args.json else format_stats(d))
    return 0


def cmd_fetch(args: argparse.Namespace) -> int:
    """Download (or copy with --from) a known archive, checksum-verified."""
    from genrec.data.fetch import fetch

    path = fetch(args.name, args.out, from_file=args.from_file)
    print(f"{args.name} -> {path}")
    return 0


def cmd_synth(args: argparse.Namespace) -> int:
    """Generate a synthetic log and prepare it, for tests and quick starts without downloads."""
    from genrec.data.prepare import prepare
    from genrec.data.synthetic import generate

    if args.users < 1 or args.items < 2:
        raise ConfigError(f"--users must be >= 1 and --items >= 2 (got {args.users}, {args.items})")
    raw = generate(num_users=args.users, num_items=args.items, seed=args.seed)
    out = prepare(raw, args.out, name=args.name or f"synthetic-{args.users}u-{args.items}i-s{args.seed}",
                  overwrite=args.force)
    print(_summary(Path(out)))
    return 0


def _list(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


def command_group(subparsers: Any, name: str, help: str, commands: tuple[str, ...]) -> Any:
    """The sub-command action of a new ``genrec NAME {commands}`` group, the sub-command required.

    Every command room's group is made here, so they share the ``NAME_command`` destination and
    the usage line; argparse alone would let ``genrec NAME`` run without a sub-command.
    """
    group = subparsers.add_parser(name, help=help)
    sub = group.add_subparsers(dest=f"{name}_command", metavar="{" + ",".join(commands) + "}")
    sub.required = True
    return sub


def register(subparsers: Any) -> None:
    """Add the ``data`` command group (prepare, stats, fetch, synth) to an argparse subparsers object."""
    sub = command_group(subparsers, "data", "prepare, inspect, fetch and synthesize datasets",
                        ("prepare", "stats", "fetch", "synth"))

    p = sub.add_parser("prepare", help="raw log -> canonical parquet folder + manifest")
    p.add_argument("source", help="reader name: movielens, amazon_p5, amazon_5core, seqrecbench, taobao, "
                                     "tmall_cml, retailrocket_cml, generic")
    p.add_argument("input", help="input file or folder")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--name", help="dataset name in the manifest (default: output folder name)")
    p.add_argument("--force", action="store_true", help="replace a prepared dataset already in --out")
    g = p.add_argument_group("generic reader columns")
    g.add_argument("--user-col", help="the column holding user ids (a header name, or a position with --no-header)")
    g.add_argument("--item-col", help="the column holding item ids")
    g.add_argument("--time-col", help="the column holding event times (see --time-format)")
    g.add_argument("--rating-col", help="optional: a numeric rating column (for --min-rating)")
    g.add_argument("--behavior-col", help="optional: a behavior-type column (e.g. pv, cart, buy)")
    g.add_argument("--sep", help="field separator (default: sniffed; 'tab' for TAB)")
    g.add_argument("--time-format", help="unix_s (default), unix_ms, iso, or a strptime format")
    g.add_argument("--no-header", action="store_true", default=None,
                   help="the file has no header row (e.g. MovieLens u.data): columns are named 1, 2, 3, ... by "
                        "position, so --user-col 1 --item-col 2 --time-col 4")
    g.add_argument("--names", type=_list, help="the columns of a file without a header row, comma-separated, "
                                               "e.g. user,item,rating,ts (implies --no-header)")
    p.add_argument("--time-window", help="taobao: START,END unix seconds to keep, or 'none'; tmall_cml, "
                                         "retailrocket_cml: every row must lie inside (default: the dataset's "
                                         "documented window), 'none' skips the check")
    f = p.add_argument_group("filters and sessions")
    f.add_argument("--min-rating", type=float, help="drop interactions rated below this")
    f.add_argument("--dedup", choices=["first", "last", "none"], help="repeated (user, item) pairs (default: the source's; first, none for amazon_p5)")
    f.add_argument("--user-core", type=int, help="iterative k-core: keep users with >= K interactions")
    f.add_argument("--item-core", type=int, help="iterative k-core: keep items with >= K interactions")
    f.add_argument("--session-gap", type=int, help="seconds of inactivity that end a session")
    f.add_argument("--max-session-len", type=int, help="cut sessions at this many events (0 = no cap)")
    f.add_argument("--behavior-order", type=_list, help="behavior levels lowest first, e.g. pv,fav,cart,buy")
    f.add_argument("--tie-order", choices=["stable", "hstu"],  # data.prepare.TIE_ORDERS (kept light: --help)
                   help="events of one user with the same timestamp: stable = the file's order (default); "
                        "hstu = the HSTU reference code's non-stable sort (its MovieLens tables)")
    p.set_defaults(func=cmd_prepare)

    s = sub.add_parser("stats", help="print statistics of a prepared dataset")
    s.add_argument("dir", help="prepared dataset folder")
    s.add_argument("--json", action="store_true", help="print JSON instead of text")
    s.set_defaults(func=cmd_stats)

    fe = sub.add_parser("fetch", help="download a known dataset archive (or import a local copy)")
    fe.add_argument("name", help="ml-100k, ml-1m or ml-20m")
    fe.add_argument("--out", required=True, help="folder to put the archive in")
    fe.add_argument("--from", dest="from_file", help="copy this local file instead of downloading")
    fe.set_defaults(func=cmd_fetch)

    sy = sub.add_parser("synth", help="write a prepared synthetic dataset")
    sy.add_argument("--out", required=True, help="output folder")
    sy.add_argument("--users", type=int, default=1000, help="number of users (default 1000)")
    sy.add_argument("--items", type=int, default=500, help="number of items (default 500)")
    sy.add_argument("--seed", type=int, default=0, help="generator seed (default 0)")
    sy.add_argument("--name", help="dataset name in the manifest (default synthetic-USERSu-ITEMSi-sSEED)")
    sy.add_argument("--force", action="store_true", help="replace a prepared dataset already in --out")
    sy.set_defaults(func=cmd_synth)
