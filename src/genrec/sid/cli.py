"""``genrec sid ...``: build a dataset's semantic-id table from a recipe, and print a table's health report."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from genrec.data.cli import command_group


def _cmd_build(args: argparse.Namespace) -> int:
    from genrec.config import load_config, resolve_recipe
    from genrec.data.loading import load_data
    from genrec.progress import duration, say, stage
    from genrec.sid.build import HEALTH_FILE, build_sid_table
    from genrec.train.run import run_cf_embeddings

    overrides = list(args.set or [])
    if args.data:
        overrides.append(f"data.path={args.data}")
    cfg = load_config(resolve_recipe(args.config), overrides)
    with stage("sid build: load dataset"):
        dataset = load_data(cfg.data)
    t0 = time.time()
    table = build_sid_table(cfg.sid, dataset, args.out, cf_loader=run_cf_embeddings)
    say(f"sid build: done in {duration(time.time() - t0)}")
    print(f"SID table for {dataset.num_items:,} items -> {args.out} "
          f"({cfg.sid.embeddings} embeddings, {cfg.sid.quantizer}, {table.length} positions)")
    print(table.health().summary())
    print(f"health report: {Path(args.out) / HEALTH_FILE}")
    return 0


def _cmd_health(args: argparse.Namespace) -> int:
    from genrec.sid.build import load_sid_table

    table = load_sid_table(args.table)
    h = table.health()
    print(json.dumps(h.as_dict(), indent=2) if args.json else h.summary())
    return 0


def register(subparsers: Any) -> None:
    """Add the ``sid`` command group (build, health)."""
    sub = command_group(subparsers, "sid", "semantic ids: build a SID table, inspect its health", ("build", "health"))
    b = sub.add_parser("build", help="item embeddings -> residual quantizer -> unique SIDs + health report")
    b.add_argument("config", help="recipe (YAML path or a name from configs/) whose sid: section is used")
    b.add_argument("--data", help="prepared dataset folder (overrides data.path)")
    b.add_argument("--out", required=True, help="SID folder to write (sid_table.parquet, health.json, build.json)")
    b.add_argument("--set", nargs="*", metavar="SECTION.KEY=VALUE", help="overrides, e.g. sid.quantizer=rqkmeans")
    b.set_defaults(func=_cmd_build)
    h = sub.add_parser("health", help="per-level code usage, entropy, collisions of a SID table")
    h.add_argument("table", help="a SID folder or a .parquet/.json table")
    h.add_argument("--json", action="store_true", help="print the report as JSON")
    h.set_defaults(func=_cmd_health)
