"""Train a recipe over several seeds and record mean and spread of the test metrics.

Example (Amazon Beauty, P5 split, full-catalogue ranking):
    python benchmarks/accuracy.py --recipe configs/sasrec-beauty.yaml --data data_cache/beauty --seeds 1 2 3

A recipe with ``stages: [pretrain, finetune]`` (e.g. configs/hpgr-hstu-beauty.yaml) runs HPGR's stage 1 into
RUN/pretrain and the retriever into RUN/finetune; the record adds each seed's stage-1 seconds.

``--ablation RECIPE [RECIPE ...]`` applies those recipes' own keys (not their ``extends``) over ``--recipe``, in
order: an ablation at another model size or on another dataset, e.g. the CPU-budget GLASS recipe with the TIGER
baseline's switches (results name glass-ml100k-cpu+tiger__ml-100k):
    python benchmarks/accuracy.py --recipe configs/glass-ml100k-cpu.yaml --ablation configs/glass-ml100k-tiger.yaml \
        --data data_cache/ml-100k --seeds 1 2 3

A run longer than one sitting (a short GPU loan, a CPU session) is the same command repeated with a time budget:
``--set train.max_seconds=540`` stops each call with a checkpoint after 9 minutes of training, the next call
resumes it exactly, and the call that finishes the last seed writes the record, e.g. on a CUDA machine (bf16
autocast is on by default there):
    python benchmarks/accuracy.py --recipe configs/tiger-beauty.yaml --data data_cache/beauty --seeds 1 \
        --set train.device=cuda train.max_seconds=540
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import ablation_suffix, shown_config, write_result  # noqa: E402
from seeds import add_record_options, check_record_target, earlier_record, joined, stamped  # noqa: E402

from genrec.config import load_config  # noqa: E402
from genrec.errors import GenrecError  # noqa: E402
from genrec.train.run import train_run  # noqa: E402


def evaluate_as_is(cfg, run_dir: Path) -> dict:
    """Test metrics of a run folder's best weights so far, exactly as train_run reports a finished run."""
    from genrec.train.run import model_kind

    if model_kind(cfg) == "generator":
        from genrec.eval.evaluate import evaluate_run
        from genrec.runs.open import open_run
        from genrec.sid.build import load_sid_table

        run = open_run(run_dir)
        res = evaluate_run(run, "test", constrained=True)
        del res["train"]  # stamped last below, where train_run's record has it
        if cfg.generator.test_other_decoding:
            other = evaluate_run(run, "test", constrained=not cfg.generator.constrained)
            res["metrics_other_decoding"] = {"constrained": not cfg.generator.constrained,
                                             "metrics": other["metrics"]}
        res["sid_health"] = load_sid_table(run_dir / "sid").health().as_dict()
        state = json.loads(sorted((run_dir / "checkpoints").glob("*/state.json"))[-1].read_text()) \
            if list((run_dir / "checkpoints").glob("*/state.json")) else {}
        res["train"] = {k: state.get(k) for k in ("epoch", "best_epoch", "finished", "train_seconds")}
        return res
    from genrec.data.loading import load_data
    from genrec.train.trainer import Trainer

    trainer = Trainer(cfg, run_dir, load_data(cfg.data), resume=True)
    trainer.load_best()
    res = trainer.evaluate("test")
    other = trainer.evaluate("test", exclude_history=not res["protocol"]["exclude_history"])
    res["metrics_other_exclusion"] = {"exclude_history": other["protocol"]["exclude_history"],
                                      "metrics": other["metrics"]}
    res["train"] = trainer.summary()
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recipe", required=True)
    ap.add_argument("--ablation", nargs="+", default=[],
                    help="apply these recipes' own keys over --recipe, in order (e.g. a CPU budget, then a baseline)")
    ap.add_argument("--data", required=True, help="prepared dataset folder")
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    ap.add_argument("--runs", default="runs/bench", help="where the run folders go")
    ap.add_argument("--name", help="results file name (default: recipe stem + dataset folder name)")
    ap.add_argument("--set", nargs="*", default=[], metavar="SECTION.KEY=VALUE")
    ap.add_argument("--evaluate-only", action="store_true",
                    help="evaluate the run folders' best weights as they stand, without training; seeds whose "
                         "early stopping had not ended are marked finished=false")
    ap.add_argument("--add-seeds", action="store_true",
                    help="train only --seeds and join them to the existing record of the same experiment (its "
                         "per-seed rows kept, mean and spread over all), e.g. seed 3 in a later session")
    add_record_options(ap)
    args = ap.parse_args()
    stem = Path(args.recipe).stem
    for abl in args.ablation:  # glass-ml100k-cpu + glass-ml100k-tiger -> glass-ml100k-cpu+tiger
        stem += "+" + ablation_suffix(Path(args.recipe).stem, Path(abl).stem)
    name = args.name or f"{stem}__{Path(args.data).name}"
    check_record_target(name, args.seeds, args)
    old = (earlier_record(name, recipe=args.recipe, ablation=" + ".join(args.ablation) or None, overrides=args.set,
                          seeds=args.seeds) if args.add_seeds else None)
    per_seed = []
    for seed in args.seeds:
        # quiet by default; --set train.progress=true shows progress lines within long epochs
        cfg = load_config(args.recipe, ["train.progress=false", *args.set, f"data.path={args.data}",
                                        f"train.seed={seed}"], ablation=args.ablation)
        # a finished run folder is resumed (only re-evaluated), so time comes from the run's own record
        run_dir = Path(args.runs) / f"{name}-seed{seed}"
        staged = "pretrain" in cfg.stages  # two stages: the retriever run lives in RUN/finetune
        if staged:
            cfg_ft = dataclasses.replace(cfg, model={**cfg.model, "pretrained": str(run_dir / "pretrain")}, stages=[])
            run_dir, pre_dir = run_dir / "finetune", run_dir / "pretrain"
        done = run_dir / "results" / "test.json"  # written by train_run once the run finished: reuse it
        if args.evaluate_only:
            res = evaluate_as_is(cfg_ft if staged else cfg, run_dir)
        elif done.exists() and json.loads(done.read_text()).get("train", {}).get("finished"):
            res = json.loads(done.read_text())
        else:
            res = train_run(cfg, run_dir.parent if staged else run_dir, resume=True)
            if "stopped_early_by" in res:  # train.max_steps / max_seconds: this call's window is spent
                print(f"seed {seed}: stopped at step {res['summary']['global_step']} by {res['stopped_early_by']}; "
                      "run the same command again to resume", flush=True)
                return
        secs = res["train"].get("train_seconds")
        if secs is None:  # runs written before train_seconds was checkpointed: sum the logged epoch times
            log = run_dir / "metrics.jsonl"
            secs = sum(json.loads(line).get("epoch_seconds", 0.0) for line in log.read_text().splitlines())
            res["train"]["train_seconds"] = secs
        other_key = "metrics_other_exclusion" if "metrics_other_exclusion" in res else "metrics_other_decoding"
        per_seed.append({"seed": seed, "metrics": res["metrics"], "best_epoch": res["protocol"]["best_epoch"],
                         other_key: res.get(other_key),
                         "train_seconds": res["train"].get("train_seconds"), "device": res.get("device"),
                         "finished": res["train"].get("finished"), "epochs_run": res["train"].get("epoch")})
        if staged:
            per_seed[-1]["pretrain_seconds"] = json.loads((pre_dir / "pretrain.json").read_text()).get("seconds")
        m = res["metrics"]
        print(f"seed {seed}: " + " ".join(f"{k}={m[k]:.4f}" for k in ("hr@5", "ndcg@5", "hr@10", "ndcg@10", "mrr")),
              flush=True)
    if args.no_record:
        print("--no-record: no record written")
        return
    config = shown_config(res["config"], args.runs)
    per_seed = (joined(old, per_seed, data_fingerprint=res["data_fingerprint"], protocol=res["protocol"], config=config)
                if old else stamped(per_seed))
    train_secs = [s["train_seconds"] for s in per_seed]
    keys = [k for k in per_seed[0]["metrics"] if k != "num_queries"]
    mean = {k: statistics.fmean(s["metrics"][k] for s in per_seed) for k in keys}
    std = {k: (statistics.stdev(s["metrics"][k] for s in per_seed) if len(per_seed) > 1 else 0.0) for k in keys}
    okeys = keys
    has_other = all(s[other_key] for s in per_seed)
    other_mean = {k: statistics.fmean(s[other_key]["metrics"][k] for s in per_seed) for k in okeys} if has_other else {}
    setting = {k: v for k, v in per_seed[0][other_key].items() if k != "metrics"} if has_other else {}
    rec = {"dataset": res["dataset"], "data_fingerprint": res["data_fingerprint"], "model": res["model"],
           "recipe": args.recipe, "ablation": " + ".join(args.ablation) or None, "overrides": list(args.set),
           "protocol": res["protocol"], "seeds": [s["seed"] for s in per_seed], "metrics": mean, "metrics_mean": mean,
           "metrics_std": std, f"{other_key}_mean": {**setting, "metrics": other_mean} if has_other else None,
           "per_seed": per_seed, "train_seconds_per_seed": train_secs, "config": config}
    if "sid_health" in res:
        rec["sid_health"] = res["sid_health"]
    path = write_result(name, rec)
    print("mean: " + " ".join(f"{k}={mean[k]:.4f}±{std[k]:.4f}" for k in ("hr@5", "ndcg@5", "hr@10", "ndcg@10")))
    print(f"wrote {path}")


if __name__ == "__main__":
    try:
        main()
    except GenrecError as exc:  # bad recipe, data folder or override: one line, not a traceback
        sys.exit(f"error: {exc}")
