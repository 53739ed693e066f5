"""Repeat or new: the multi-behavior metrics on the targets a user met before the session, and on the rest.

On a purchase log where many buys are of items the buyer carted earlier, a model can score by repeating the
history (the recency heuristic does nothing else). This script re-tests finished run folders of
``benchmarks/gamer.py`` (GAMER, TIGER, SASRec: any kind the multi-behavior protocol takes) and, optionally, the
recency heuristic on the same queries, candidates and beam as their records, and splits each behavior's targets
into ``repeat`` (met before the session, in any behavior) and ``new``; each part is averaged over the queries
that have one (``genrec.eval.multibehavior.repeat_new_metrics``). Nothing is retrained; the run folders are read
only. One record with a row per variant goes to ``benchmarks/results/repeat-breakdown__<dataset>.json``.

    python benchmarks/repeat_breakdown.py --data data_cache/tmall-cml \\
        --run runs/gamer-tmall-cml-gamer-tmall-cpu-e4-seed1 --run runs/gamer-tmall-cml-gamer-tmall-sasrec-seed1 \\
        --recency configs/gamer-tmall-recency.yaml
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402

from genrec.config import RunConfig, config_from_dict, load_yaml  # noqa: E402
from genrec.data.multibehavior import BehaviorLevels, session_split  # noqa: E402
from genrec.data.schema import Dataset, load_dataset  # noqa: E402
from genrec.errors import GenrecError  # noqa: E402
from genrec.eval.multibehavior import behavior_eval  # noqa: E402
from genrec.eval.multibehavior_baselines import behavior_ranker  # noqa: E402
from genrec.models.registry import build_model  # noqa: E402
from genrec.runs.open import open_run  # noqa: E402


def breakdown(ranker: Any, cfg: RunConfig, dataset: Dataset, behavior: str) -> dict[str, Any]:
    """The test metrics of one ranker on ``behavior`` under its recipe's evaluation settings (the records'):
    all targets, then the repeat and new parts."""
    opts = cfg.multibehavior
    levels = BehaviorLevels.from_manifest(dataset.manifest, opts.behavior_order or None)
    split = session_split(dataset.interactions, levels, opts.session_gap)
    t0 = time.time()
    ev = behavior_eval(ranker, cfg, opts, split, "test", [levels.id_of(behavior)], repeat_breakdown=True)
    m = dict(ev.per_behavior[behavior])
    parts = {"repeat": m.pop("repeat"), "new": m.pop("new")}
    return {"all": m, **parts, "eval_seconds": round(time.time() - t0, 1)}


def from_run(run_dir: Path, behavior: str) -> dict[str, Any]:
    run = open_run(run_dir)
    row = breakdown(behavior_ranker(run.model), run.cfg, run.dataset, behavior)
    return {"variant": run_dir.name, "model": run.cfg.model["name"], "seed": run.cfg.train.seed,
            "best_epoch": run.state.get("best_epoch"), "data_fingerprint": run.record.get("data_fingerprint"),
            **row}


def from_recency(recipe: Path, dataset: Dataset, behavior: str) -> dict[str, Any]:
    cfg = config_from_dict(load_yaml(recipe))
    model = build_model(cfg.model, dataset.num_items, cfg.data.max_len)
    row = breakdown(behavior_ranker(model), cfg, dataset, behavior)
    return {"variant": recipe.stem, "model": cfg.model["name"], "seed": None, "best_epoch": None, **row}


def table(rows: list[dict[str, Any]], metric: str) -> str:
    lines = [f"| variant | model | {metric} | repeat {metric} (users) | new {metric} (users) |",
             "| --- | --- | --- | --- | --- |"]
    for r in rows:
        rep, new = r["repeat"], r["new"]
        lines.append(f"| {r['variant']} | {r['model']} | {r['all'][metric]:.4f} | "
                     f"{rep.get(metric, float('nan')):.4f} ({rep['num_users']}) | "
                     f"{new.get(metric, float('nan')):.4f} ({new['num_users']}) |")
    return "\n".join(lines)


def shown_command(runs: list[Path]) -> str:
    """The command line with each run folder as a committed record shows it (``runs/bench/<name>`` when it lies
    outside the repository), so no machine-specific path lands in the record."""
    line = common.command_line()
    for run in runs:
        line = line.replace(str(run), common.shown_path(run, run.resolve().parent))
    return line


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", required=True, help="the prepared multi-behavior dataset the runs were trained on")
    ap.add_argument("--run", action="append", default=[], type=Path, help="a finished run folder (repeatable)")
    ap.add_argument("--recency", type=Path, help="a recency recipe to evaluate beside the runs")
    ap.add_argument("--behavior", default="buy", help="the behavior whose targets are split (default: buy)")
    ap.add_argument("--name", help="record name (default repeat-breakdown__<dataset>)")
    ap.add_argument("--results", type=Path, help="write the record into this folder instead of benchmarks/results")
    args = ap.parse_args(argv)
    if not args.run and args.recency is None:
        ap.error("give at least one --run or --recency")
    try:
        dataset = load_dataset(args.data)
        fp = dataset.fingerprint
        rows = []
        for run_dir in args.run:
            row = from_run(run_dir, args.behavior)
            if row.pop("data_fingerprint") not in (None, fp):
                raise GenrecError(f"{run_dir}: trained on other data than {args.data} (fingerprint differs)")
            rows.append(row)
            print(f"{row['variant']}: recall@10 all {row['all']['recall@10']:.4f}  repeat "
                  f"{row['repeat'].get('recall@10', float('nan')):.4f}  new {row['new'].get('recall@10', float('nan')):.4f}",
                  flush=True)
        if args.recency is not None:
            rows.append(from_recency(args.recency, dataset, args.behavior))
    except GenrecError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for metric in ("recall@10", "ndcg@10"):
        print(table(rows, metric))
    data_name = Path(args.data).name
    name = args.name or f"repeat-breakdown__{data_name}"
    rec = {"dataset": data_name, "data_fingerprint": fp, "behavior": args.behavior,
           "protocol": {"evaluated_on": "test", "parts": "repeat: targets met before the session in any behavior; "
                        "new: the rest; each part averaged over the queries that have one"},
           "model": ",".join(dict.fromkeys(r["model"] for r in rows)), "metrics": rows}  # one row per variant
    saved = common.RESULTS
    common.RESULTS = args.results or saved
    try:
        print(f"wrote {common.write_result(name, rec, shown_command(args.run))}")
    finally:
        common.RESULTS = saved
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
