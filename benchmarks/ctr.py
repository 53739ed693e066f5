"""Ranking (CTR) track: train a ranker recipe over several seeds and record AUC / GAUC / LogLoss, mean and spread.

Impressions, labels and the global temporal split come from the recipe's ``ranking:`` section (stamped in
the record's protocol). Finished seeds are resumed, i.e. only re-evaluated, so the script can be rerun.

Examples:
    python benchmarks/ctr.py --recipe configs/hstu_ranker-ml100k.yaml --data data_cache/ml-100k --seeds 1 2 3 \
        --set train.num_threads=1
    python benchmarks/ctr.py --recipe configs/hstu_ranker-taobao.yaml --data data_cache/taobao --seeds 1 2 3 \
        --set train.num_threads=1
    # an ablation: its own results name, the override recorded under "overrides"
    python benchmarks/ctr.py --recipe configs/mtgr-taobao.yaml --data data_cache/taobao --seeds 1 2 3 \
        --name ctr-taobao-mtgr-taobao-nocross --set train.num_threads=1 model.cross_features=false
    # an HPGR ablation that changes only stage 2 fine-tunes from the main recipe's stage-1 artifacts (same seeds)
    python benchmarks/ctr.py --recipe configs/hpgr-ml100k-dense.yaml --data data_cache/ml-100k --seeds 1 2 3 \
        --pretrained-from ctr-ml-100k-hpgr-ml100k --set train.num_threads=1
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import shown_config, shown_path, write_result  # noqa: E402
from seeds import add_record_options, check_record_target, earlier_record, joined, stamped  # noqa: E402

from genrec.config import load_config  # noqa: E402
from genrec.data.loading import load_data  # noqa: E402
from genrec.models.base import RANKER  # noqa: E402
from genrec.train.run import model_kind, train_run  # noqa: E402

METRICS = ("auc", "gauc", "logloss")


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for one seed); NaN when any seed is NaN."""
    if any(math.isnan(v) for v in values):
        return float("nan"), float("nan")
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recipe", required=True)
    ap.add_argument("--data", required=True, help="prepared dataset folder")
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    ap.add_argument("--runs", default="runs/bench", help="where the run folders go")
    ap.add_argument("--name", help="results file and run folder name (default: ctr-<data folder>-<recipe stem>); "
                    "give one for each --set variant of a recipe")
    ap.add_argument("--set", nargs="*", default=[], metavar="SECTION.KEY=VALUE")
    ap.add_argument("--pretrained-from", metavar="NAME",
                    help="fine-tune only, from the stage-1 artifact of run NAME with the same seed "
                    "(RUNS/NAME-seedS/pretrain): for ablations whose stage 1 equals the main recipe's")
    ap.add_argument("--add-seeds", action="store_true",
                    help="train only --seeds and join them to the existing record of the same experiment (its "
                         "per-seed rows kept, mean and spread over all), e.g. seed 3 in a later session")
    add_record_options(ap)
    args = ap.parse_args()
    name = args.name or f"ctr-{Path(args.data).name}-{Path(args.recipe).stem}"
    check_record_target(name, args.seeds, args)
    old = (earlier_record(name, recipe=args.recipe, ablation=None, overrides=args.set, seeds=args.seeds)
           if args.add_seeds else None)
    dataset = None
    per_seed = []
    res: dict = {}
    for seed in args.seeds:
        shared = []
        if args.pretrained_from:
            art = Path(args.runs) / f"{args.pretrained_from}-seed{seed}" / "pretrain"
            if not (art / "pretrain.json").exists():
                raise SystemExit(f"--pretrained-from: no stage-1 artifact at {art}; run that recipe's seed {seed} first")
            shared = ["stages=[finetune]", f"model.pretrained={art}"]
        # quiet by default; --set train.progress=true shows progress lines within long epochs
        cfg = load_config(args.recipe, ["train.progress=false", *args.set, *shared, f"data.path={args.data}",
                                        f"train.seed={seed}"])
        if model_kind(cfg) != RANKER:
            raise SystemExit(f"{args.recipe}: model '{cfg.model['name']}' is not a ranker; use benchmarks/accuracy.py")
        dataset = dataset if dataset is not None else load_data(cfg.data)
        # rankers train with genrec.train.ranker; recipes with stages (HPGR) pre-train first, then fine-tune
        res = train_run(cfg, Path(args.runs) / f"{name}-seed{seed}", resume=True, dataset=dataset)
        if "metrics" not in res:
            raise SystemExit(f"seed {seed}: training stopped before the end ({res.get('stopped_early_by')})")
        tr = res["train"]
        per_seed.append({"seed": seed, "metrics": res["metrics"], "best_epoch": res["protocol"]["best_epoch"],
                         "epochs_run": tr.get("epoch"), "finished": tr.get("finished"),
                         "train_seconds": tr.get("train_seconds")})
        if "pretrain" in res:
            per_seed[-1]["pretrain_seconds"] = res["pretrain"].get("seconds")
        elif args.pretrained_from:
            per_seed[-1]["pretrained_from"] = shown_path(art, args.runs)
        m = res["metrics"]
        print(f"seed {seed}: " + " ".join(f"{k}={m[k]:.4f}" for k in METRICS), flush=True)
    if args.no_record:
        print("--no-record: no record written")
        return
    config = shown_config(res["config"], args.runs)
    per_seed = (joined(old, per_seed, data_fingerprint=res["data_fingerprint"], protocol=res["protocol"], config=config)
                if old else stamped(per_seed))
    keys = [k for k in per_seed[0]["metrics"] if k not in ("num_impressions", "gauc_users", "positive_rate")]
    stats = {k: mean_std([s["metrics"][k] for s in per_seed]) for k in keys}
    rec = {
        "dataset": res["dataset"], "data_fingerprint": res["data_fingerprint"], "model": res["model"],
        "recipe": args.recipe, "overrides": list(args.set), "stages": res.get("stages", ["finetune"]),
        "pretrained_from": args.pretrained_from,
        "task": "ranking (CTR)", "protocol": res["protocol"], "seeds": [s["seed"] for s in per_seed],
        "metrics": {k: v[0] for k, v in stats.items()}, "spread": {k: v[1] for k, v in stats.items()},
        "test_impressions": res["metrics"]["num_impressions"], "test_positive_rate": res["metrics"]["positive_rate"],
        "per_seed": per_seed, "train_seconds_per_seed": [s["train_seconds"] for s in per_seed],
        "config": config,
    }
    rec["protocol"] = {**rec["protocol"], "best_epoch": [s["best_epoch"] for s in per_seed]}
    path = write_result(name, rec)
    print("mean: " + " ".join(f"{k}={rec['metrics'][k]:.4f}±{rec['spread'][k]:.4f}" for k in METRICS))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
