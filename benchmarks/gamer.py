"""Multi-behavior track (GAMER): one variant over several seeds, per-behavior metrics with mean and spread.

A variant is a recipe: GAMER (configs/gamer-taobao.yaml), an ablation recipe that extends it, or a baseline
recipe (model.name sasrec | tiger | recency). ``--ablation RECIPE`` applies that recipe's own keys (without
its ``extends``) over ``--recipe``, e.g. an ablation on the CPU-budget size. Every variant is evaluated with
the same queries, targets, candidates (``multibehavior.candidates``, stamped) and metrics
(genrec.eval.multibehavior). Finished seeds (run folders with their results file) are not retrained. Another
candidate mode (``--set multibehavior.candidates=all``) gets its own results name (``...-cand-all``); GAMER
runs that early-stop on the validation loss are then only re-tested, not retrained. The recency heuristic is
deterministic and is evaluated once.

Examples:
    python benchmarks/gamer.py --recipe configs/gamer-taobao.yaml --data data_cache/taobao-mb --seeds 1 2 3
    python benchmarks/gamer.py --recipe configs/gamer-taobao-nocross.yaml --data data_cache/taobao-mb
    python benchmarks/gamer.py --recipe configs/gamer-taobao-tiger.yaml --data data_cache/taobao-mb
    python benchmarks/gamer.py --recipe configs/gamer-taobao-recency.yaml --data data_cache/taobao-mb
    # CPU budget and an ablation on that budget (results name gamer-taobao-mb-gamer-taobao-cpu-nocross)
    python benchmarks/gamer.py --recipe configs/gamer-taobao-cpu.yaml --data data_cache/taobao-mb
    python benchmarks/gamer.py --recipe configs/gamer-taobao-cpu.yaml --ablation configs/gamer-taobao-nocross.yaml \
        --data data_cache/taobao-mb
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402
from seeds import add_record_options, check_record_target, earlier_record, joined, stamped  # noqa: E402

from genrec.config import apply_overrides, config_from_dict, load_yaml, with_ablation  # noqa: E402
from genrec.data.schema import load_dataset  # noqa: E402
from genrec.errors import GenrecError  # noqa: E402
from genrec.models import get_model_class  # noqa: E402
from genrec.runs.layout import SESSION_SID_FILE  # noqa: E402
from genrec.sid.codebook import SIDTable  # noqa: E402
from genrec.train.multibehavior_baselines import (  # noqa: E402
    DEFAULT_CANDIDATES,
    run_variant,
    selection_uses_candidates,
)

SKIP = ("num_users", "num_candidates", "targets_in_candidates")  # per-behavior counts, equal across seeds


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for one value); NaN when any value is NaN."""
    if any(math.isnan(v) for v in values):
        return float("nan"), float("nan")
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def variant_name(data: str, recipe: str, ablation: str | None) -> str:
    """``gamer-<data>-<recipe>[-<ablation>]``; the ablation without the leading words it shares with the recipe
    (gamer-tmall-cpu + gamer-tmall-nocross gives ...-gamer-tmall-cpu-nocross)."""
    name = f"gamer-{Path(data).name}-{Path(recipe).stem}"
    if ablation:
        name += "-" + common.ablation_suffix(Path(recipe).stem, Path(ablation).stem)
    return name


def rows_of(rec: dict[str, Any]) -> dict[str, dict[str, float]]:
    """Per-behavior rows plus the merged row of one results record."""
    return {**rec["metrics"]["per_behavior"], "merged": rec["metrics"]["merged"]}


def summarize(per_seed: list[dict[str, Any]]) -> tuple[dict, dict, dict]:
    """Mean and spread of every metric of every row over the seeds, and the per-row counts (users, candidates,
    share of targets inside the candidates: the ceiling of recall), which do not depend on the seed."""
    means: dict[str, dict[str, float]] = {}
    spread: dict[str, dict[str, float]] = {}
    users: dict[str, dict[str, float]] = {}
    for row, first in per_seed[0]["metrics"].items():
        users[row] = {k: first[k] for k in SKIP if k in first}
        keys = [k for k in first if k not in SKIP]
        stats = {k: mean_std([float(s["metrics"][row][k]) for s in per_seed]) for k in keys}
        means[row] = {k: v[0] for k, v in stats.items()}
        spread[row] = {k: v[1] for k, v in stats.items()}
    return means, spread, users


def sid_health(run_dir: Path, fingerprint: str | None) -> dict[str, Any] | None:
    """The health report (code usage, entropy, collisions) of the SID table a GAMER or TIGER run decoded with;
    None for a model without one (SASRec, the heuristic)."""
    path = run_dir / SESSION_SID_FILE
    if not fingerprint or not path.exists():
        return None
    table = SIDTable.load(path)
    if table.fingerprint != fingerprint:
        raise SystemExit(f"{path}: SID table {table.fingerprint} is not the one the run recorded ({fingerprint})")
    return table.health().as_dict()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recipe", required=True, help="GAMER, ablation or baseline recipe")
    ap.add_argument("--ablation", help="apply this ablation recipe's own keys over --recipe")
    ap.add_argument("--data", required=True, help="prepared multi-behavior dataset folder")
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    ap.add_argument("--runs", default="runs/bench", help="where the run folders go")
    ap.add_argument("--name", help="base name of the results file and run folders (default: "
                    "gamer-<data>-<recipe>[-<ablation>]; another candidate mode appends -cand-<mode>)")
    ap.add_argument("--set", nargs="*", default=[], metavar="SECTION.KEY=VALUE")
    ap.add_argument("--results", help="write the record into this folder instead of benchmarks/results")
    ap.add_argument("--add-seeds", action="store_true",
                    help="train only --seeds and join them to the existing record of the same experiment (its "
                         "per-seed rows kept, mean and spread over all), e.g. seed 3 in a later session")
    add_record_options(ap)
    args = ap.parse_args(argv)
    name = args.name or variant_name(args.data, args.recipe, args.ablation)
    raw = load_yaml(args.recipe)
    if args.ablation:
        raw = with_ablation(raw, args.ablation)
    dataset = load_dataset(args.data)
    first = config_from_dict(apply_overrides(raw, args.set), args.recipe)
    deterministic = not get_model_class(first.model["name"]).trainable  # a heuristic: one evaluation
    seeds = args.seeds[:1] if deterministic else args.seeds
    per_seed, rec = [], {}
    mode = first.multibehavior.candidates
    folder = name  # run folders are shared across candidate modes when the trained weights do not depend on them
    if mode != DEFAULT_CANDIDATES:  # --name is the base name: a record of another mode never overwrites it
        name = f"{name}-cand-{mode}"
        folder = name if selection_uses_candidates(first) else folder
    if args.add_seeds and deterministic:
        raise SystemExit(f"--add-seeds: {first.model['name']} is deterministic; its record has one evaluation")
    check_record_target(name, seeds, args, Path(args.results) if args.results else None)
    old = (earlier_record(name, recipe=args.recipe, ablation=args.ablation, overrides=args.set, seeds=seeds,
                          results=Path(args.results) if args.results else None) if args.add_seeds else None)
    for seed in seeds:
        over = [*args.set, f"data.path={args.data}", f"train.seed={seed}", "train.progress=false"]
        cfg = config_from_dict(apply_overrides(raw, over), args.recipe)
        rec = run_variant(cfg, Path(args.runs) / f"{folder}-seed{seed}", dataset, cfg.multibehavior)
        summary = rec.get("summary", {})
        per_seed.append({"seed": seed, "metrics": rows_of(rec), "best_epoch": rec["protocol"].get("best_epoch"),
                         "epochs_run": summary.get("epoch"), "finished": summary.get("finished"),
                         "train_seconds": rec.get("train_seconds"), "eval_seconds": rec.get("eval_seconds"),
                         "sid_fingerprint": rec.get("sid_fingerprint")})
        head = rec["protocol"]["headline_behavior"]
        m = rows_of(rec)[head]
        print(f"seed {seed}: {head} hit@10={m.get('hit@10', float('nan')):.4f} "
              f"ndcg@10={m.get('ndcg@10', float('nan')):.4f} ({m.get('num_users', 0)} users)", flush=True)
    if args.no_record:
        print("--no-record: no record written")
        return 0
    config = common.shown_config(rec["config"], args.runs)
    if old and old.get("sid_fingerprint") != rec.get("sid_fingerprint"):
        raise SystemExit(f"--add-seeds: SID table {rec.get('sid_fingerprint')} differs from the {name} record's "
                         f"{old.get('sid_fingerprint')}; nothing written (the run folders are kept)")
    per_seed = (joined(old, per_seed, data_fingerprint=rec["data_fingerprint"], protocol=rec["protocol"],
                       config=config) if old else stamped(per_seed))
    seeds = [s["seed"] for s in per_seed]
    means, spread, users = summarize(per_seed)
    protocol = {**rec["protocol"], "best_epoch": [s["best_epoch"] for s in per_seed]}
    levels = protocol["behavior_levels"]
    out = {
        "dataset": rec["dataset"], "data_fingerprint": rec["data_fingerprint"], "model": rec["model"],
        "variant": name, "recipe": args.recipe, "ablation": args.ablation, "overrides": list(args.set),
        "task": protocol["task"], "protocol": protocol, "seeds": seeds, "deterministic": deterministic,
        "headline_behavior": protocol["headline_behavior"],
        "behaviors": sorted(levels, key=lambda b: -levels[b]),  # headline (top level) first
        "metrics": means, "spread": spread, "counts": users,
        "num_users": {row: int(c.get("num_users", 0)) for row, c in users.items()}, "per_seed": per_seed,
        "train_seconds_per_seed": [s["train_seconds"] for s in per_seed],
        "num_parameters": rec.get("num_parameters"), "sid_fingerprint": rec.get("sid_fingerprint"),
        "config": config,
    }
    health = sid_health(Path(args.runs) / f"{folder}-seed{seed}", rec.get("sid_fingerprint"))
    if health is not None:
        out["sid_health"] = health
    saved = common.RESULTS
    common.RESULTS = Path(args.results) if args.results else saved
    try:
        path = common.write_result(name, out)
    finally:
        common.RESULTS = saved
    head = out["headline_behavior"]
    print(f"{head} mean over {len(seeds)} seed(s): " + " ".join(
        f"{k}={means[head][k]:.4f}±{spread[head][k]:.4f}" for k in ("hit@10", "recall@10", "ndcg@10")
        if k in means[head]))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    try:
        raise SystemExit(main())
    except GenrecError as exc:  # bad recipe, data or settings: one clear line instead of a traceback
        raise SystemExit(f"error: {exc}") from None
