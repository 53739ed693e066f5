"""``genrec tune SPEC --data DIR --out DIR``: a recipe search on validation, resumable, from one command."""

from __future__ import annotations

import argparse
from typing import Any

import yaml

from genrec.errors import ConfigError


def _cmd_tune(args: argparse.Namespace) -> int:
    from genrec.tune.records import TRIALS_FILE, format_table
    from genrec.tune.search import run_search

    settings = {}
    for item in args.set or []:
        key, eq, value = item.partition("=")
        if not eq:
            raise ConfigError(f"--set {item}: expected section.key=value")
        settings[key.strip()] = yaml.safe_load(value)
    res = run_search(args.spec, args.out, data=args.data, limit=args.limit, settings=settings)
    print(f"{len(res.trials)} of {res.total} trials, sorted by validation {res.metric} "
          f"({'lower' if res.minimize else 'higher'} is better); every trial: {res.out / TRIALS_FILE}")
    print(format_table(res.trials, res.metric, res.minimize))
    if res.pending:
        print(f"{res.pending} trials still to run: run the same command again to go on")
    if res.best_path is not None:
        print(f"best recipe: {res.best_path} (genrec train {res.best_path} --out RUN)")
    return 0


def register(subparsers: Any) -> None:
    """Add the ``tune`` command."""
    t = subparsers.add_parser("tune", help="search recipes on validation (grid, random or Optuna), resumable",
                              description="Train one run per trial of a search spec on the training split, "
                                          "compare them on validation (never on test), write every trial to "
                                          "OUT/trials.jsonl and the best recipe to OUT/best.yaml.")
    t.add_argument("spec", help="search spec (YAML): recipe, grid: / random: / optuna:, trials, budget, ...")
    t.add_argument("--data", help="prepared dataset folder (overrides data.path of the recipe)")
    t.add_argument("--out", required=True, help="search folder; run the same command again to resume")
    t.add_argument("--limit", type=int, metavar="N", help="train at most N more trials in this call")
    t.add_argument("--set", nargs="*", metavar="train.KEY=VALUE",
                   help="how this call runs its trials, e.g. train.num_threads=1 (device, threads, progress, "
                        "tensorboard, checkpoint_every); not kept in best.yaml")
    t.set_defaults(func=_cmd_tune)
