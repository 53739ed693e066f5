"""The peer, side by side: RecBole SASRec and genrec SASRec on the same split and protocol, in one invocation.

Both are evaluated on the full catalogue with the user's history NOT excluded from the ranking (RecBole's
protocol for sequential models; genrec runs with ``eval.exclude_history=false``), on genrec's leave-one-out split
written out as RecBole atomic files (recbole_files.py; the check that both hold the same users, items and
per-user validation/test targets is printed). RecBole runs first, then genrec, one after the other in their own
processes with the same thread count; each stops once validation NDCG@10 reaches ``--target`` (or at its epoch or
time bound; genrec's time bound is RecBole's training time). Printed: seconds per epoch, per full validation, to
the target validation NDCG@10 (or to the best value both reach), peak memory, and RecBole-over-genrec ratios;
the record goes to benchmarks/results/ with ``time_to_quality_ratio``.

RecBole lives in its own virtual environment (.bench-env/recbole, git-ignored), never in genrec's:

    python benchmarks/peer_recbole.py --setup                       # once
    python benchmarks/peer_recbole.py --data data_cache/beauty      # the comparison (tens of minutes on 2 cores)
    python benchmarks/peer_recbole.py --data data_cache/beauty --quick   # first 2,000 users, one epoch each

Without the environment (or with ``--skip-recbole``) only genrec's side runs and no ratio is printed.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import command_line, commit, machine, write_result  # noqa: E402
from recbole_files import check_files, describe_check, subset_dataset, write_recbole_files  # noqa: E402

from genrec.config import RunConfig, load_config  # noqa: E402
from genrec.data.loading import load_data  # noqa: E402
from genrec.data.schema import load_dataset  # noqa: E402
from genrec.data.sequences import UserSequences  # noqa: E402
from genrec.data.splits import split_from_config  # noqa: E402
from genrec.errors import ConfigError, GenrecError  # noqa: E402
from genrec.train.trainer import Trainer  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
ENV = ROOT / ".bench-env" / "recbole"
DRIVER = Path(__file__).resolve().parent / "recbole_driver.py"
PROTOCOL = "full catalogue, history NOT excluded, leave-one-out P5 Beauty split"
TORCH_PIN = "torch==2.13.0"  # first, on its own: resolves to the CPU wheel where one is cached (plain torch: CUDA)
RECBOLE_PIN = "recbole==1.2.1"  # installed --no-deps: its ray pin serves hyper-parameter tuning only
RUNTIME_PINS = ["numpy==2.4.6", "pandas==2.3.3", "scipy==1.17.1", "scikit-learn==1.9.1", "pyyaml==6.0.3",
                "tqdm==4.70.1", "tensorboard==2.21.0", "tabulate==0.10.0", "texttable==1.7.0", "psutil==7.2.2",
                "colorlog==4.7.2", "colorama==0.4.4", "thop==0.1.1.post2209072238"]
def differences(cfg: RunConfig) -> list[str]:
    """What still differs between the two sides after the sizes are matched, read from the genrec recipe."""
    o, m, t = cfg.objective, cfg.model, cfg.train
    sim = m.get("similarity", "cosine")
    negs = (f"{o.num_negatives} uniform negatives " + ("shared by the batch" if o.shared_negatives else "per position")
            + (" plus the position's own earlier items" if o.history_negatives else "") + ", ") \
        if o.name == "sampled_softmax" else ""
    loss = f"{o.name.replace('_', ' ')} ({negs}temperature {o.temperature:g}, {sim} scores)"
    return [
        "loss: RecBole CE over the full catalogue at the last position of each history prefix; genrec " + loss +
        " at every position of the user's last max_len+1 training events (so a user's targets older than that "
        "are trained by RecBole only)",
        "block: RecBole post-LayerNorm transformer with dot-product scores; genrec pre-LayerNorm SASRec "
        f"(inputs E*sqrt(d)+P){' with L2-normalised outputs' if sim == 'cosine' else ''}; both ReLU FFN, "
        "LayerNorm eps 1e-8",
        f"optimiser: RecBole Adam betas (0.9, 0.999) (not configurable); genrec AdamW betas {tuple(t.betas)}, "
        f"weight decay {t.weight_decay:g}",
        "batch: RecBole --recbole-batch-size history prefixes; genrec train.batch_size users (all their positions)",
    ]


# -- the environment --------------------------------------------------------------------------------
def setup_env(env: Path) -> None:
    """Make RecBole's virtual environment: torch first (the pinned CPU build), then RecBole's runtime needs."""
    subprocess.run([sys.executable, "-m", "venv", str(env)], check=True)
    pip = [str(env / "bin" / "python"), "-m", "pip", "install", "--no-input"]
    subprocess.run([*pip, TORCH_PIN], check=True)
    subprocess.run([*pip, *RUNTIME_PINS], check=True)
    subprocess.run([*pip, "--no-deps", RECBOLE_PIN], check=True)
    subprocess.run([str(env / "bin" / "python"), "-c", "import recbole, torch; print('RecBole', recbole.__version__, "
                    "'torch', torch.__version__)"], check=True)


# -- genrec's side (runs in a process of its own, so its peak memory is its own) ----------------------------
class TimedTrainer(Trainer):
    """genrec's retriever trainer and loop, unchanged, with the training seconds of each epoch, the seconds of each
    validation and the clock at each validation's end recorded; stops once validation NDCG@10 reaches
    ``target`` or the clock passes ``max_seconds`` (0 = neither)."""

    def __init__(self, *args: Any, target: float = 0.0, max_seconds: float = 0.0, **kw: Any) -> None:
        self.target, self.max_seconds = target, max_seconds
        self.train_seconds: list[float] = []
        self.valid_seconds: list[float] = []
        self.valid: list[dict[str, float]] = []
        self.curve: list[tuple[float, float, float]] = []  # (wall s, cpu s since fit began, valid ndcg@10)
        self.t0 = self.cpu0 = self._t_epoch = 0.0
        super().__init__(*args, **kw)

    def start_clock(self) -> None:
        self.t0, self.cpu0 = time.perf_counter(), time.process_time()

    def epoch_batches(self, epoch: int) -> list:
        self._t_epoch = time.perf_counter()
        return super().epoch_batches(epoch)

    def validate(self) -> tuple[dict[str, Any], float | None]:
        t = time.perf_counter()
        self.train_seconds.append(t - self._t_epoch)
        metrics, value = super().validate()
        self.valid_seconds.append(time.perf_counter() - t)
        self.valid.append(metrics)
        self.curve.append((time.perf_counter() - self.t0, time.process_time() - self.cpu0, float(value or 0.0)))
        print(f"genrec epoch {len(self.curve)}: train {self.train_seconds[-1]:.1f} s, validation "
              f"{self.valid_seconds[-1]:.1f} s, valid ndcg@10 {self.curve[-1][2]:.4f}, {self.curve[-1][0]:.0f} s "
              "so far", flush=True)
        return metrics, value

    @property
    def should_stop(self) -> bool:
        if self.curve and self.target and self.curve[-1][2] >= self.target:
            return True
        if self.curve and self.max_seconds and self.curve[-1][0] >= self.max_seconds:
            return True
        return super().should_stop


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def genrec_worker(args: argparse.Namespace) -> None:
    """Train genrec SASRec (unfiltered validation after every epoch) and write its timings to ``--result``."""
    t_load = time.perf_counter()
    cfg = load_config(args.recipe, genrec_overrides(args, args.data))
    ds = load_data(cfg.data)
    run_dir = Path(tempfile.mkdtemp(prefix="genrec-run-", dir=args.work))
    tr = TimedTrainer(cfg, run_dir, ds, resume=False, target=args.target, max_seconds=args.max_seconds)
    load_s = time.perf_counter() - t_load
    tr.start_clock()
    tr.fit()
    fit_s = time.perf_counter() - tr.t0
    tr.load_best()
    t_test = time.perf_counter()
    test = tr.evaluate("test", exclude_history=False)
    import torch

    rec = {"framework": "genrec", "torch": torch.__version__, "threads": torch.get_num_threads(),
           "config": {"recipe": args.recipe, "overrides": genrec_overrides(args, args.data)},
           "load_seconds": load_s, "fit_seconds": fit_s, "train_seconds": tr.train_seconds,
           "valid_seconds": tr.valid_seconds, "valid": tr.valid, "curve": tr.curve,
           "test": {k: v for k, v in test["metrics"].items() if k != "num_queries"},
           "test_seconds": time.perf_counter() - t_test, "n_parameters": sum(p.numel() for p in tr.model.parameters()),
           "peak_rss_mib": peak_rss_mib()}
    Path(args.result).write_text(json.dumps(rec, indent=2) + "\n")


def genrec_overrides(args: argparse.Namespace, data: str) -> list[str]:
    """The recipe's settings with unfiltered evaluation, this benchmark's bounds, CPU and the thread count."""
    return [*args.set, f"data.path={data}", "eval.exclude_history=false", f"train.epochs={args.genrec_epochs}",
            f"train.seed={args.seed}", f"train.num_threads={args.threads}", "train.device=cpu", "train.eval_every=1",
            "train.progress=false", "train.tensorboard=false"]


# -- the two runs ---------------------------------------------------------------------------------------------
def run_child(cmd: list[str], result: Path, env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run one side to completion (its progress lines pass through) and read the record it wrote."""
    subprocess.run(cmd, check=True, env=env)
    return json.loads(result.read_text())


def recbole_settings(cfg: RunConfig, args: argparse.Namespace) -> dict[str, Any]:
    """RecBole SASRec's size and training knobs, taken from the genrec recipe where RecBole has the knob."""
    m = cfg.model
    return {"max_len": cfg.data.max_len, "num_layers": m.get("num_layers", 2), "num_heads": m.get("num_heads", 1),
            "d_model": m.get("d_model", 64), "d_ff": m.get("d_ff") or m.get("d_model", 64),
            "dropout": m.get("dropout", 0.2), "lr": cfg.train.lr, "patience": cfg.train.patience,
            "train_batch_size": args.recbole_batch_size, "eval_batch_size": 4096, "seed": args.seed,
            "threads": args.threads}


def run_recbole(python: Path, work: Path, name: str, cfg: RunConfig, args: argparse.Namespace) -> dict[str, Any]:
    settings = work / "recbole-settings.json"
    settings.write_text(json.dumps(recbole_settings(cfg, args)))
    result = work / "recbole-result.json"
    cmd = [str(python), str(DRIVER), "--data-dir", str(work), "--dataset", name, "--settings", str(settings),
           "--epochs", str(args.recbole_epochs), "--target", str(args.target), "--max-seconds",
           str(args.recbole_max_seconds), "--result", str(result)]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # nothing of genrec's on RecBole's path
    return run_child(cmd, result, env)


def run_genrec(data: str, work: Path, args: argparse.Namespace, max_seconds: float, target: float
               ) -> dict[str, Any]:
    result = work / "genrec-result.json"
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", "genrec", "--data", data, "--recipe",
           args.recipe, "--work", str(work), "--result", str(result), "--target", str(target), "--max-seconds",
           str(max_seconds), "--genrec-epochs", str(args.genrec_epochs), "--seed", str(args.seed), "--threads",
           str(args.threads), "--set", *args.set]
    return run_child(cmd, result)


# -- the comparison ---------------------------------------------------------------------------------------
def time_to_quality(curves: dict[str, list], target: float) -> dict[str, Any]:
    """Seconds (wall and CPU) from the start of training to the end of the first validation whose NDCG@10 reaches
    ``target``; when a side never reaches it, to the best value both reach. Curves hold (wall s, cpu s, ndcg)."""
    best = {k: max((v for *_, v in c), default=0.0) for k, c in curves.items()}
    reached = all(b >= target for b in best.values())
    level = target if reached else min(best.values())

    def first(c: list) -> tuple[float, float, int] | None:
        return next(((w, cpu, i + 1) for i, (w, cpu, v) in enumerate(c) if v >= level and v > 0), None)

    hit = {k: first(c) for k, c in curves.items()}
    out: dict[str, Any] = {"level": level, "target": target, "target_reached_by_both": reached, "best": best,
                           "seconds": {k: h and h[0] for k, h in hit.items()},
                           "cpu_seconds": {k: h and h[1] for k, h in hit.items()},
                           "epochs": {k: h and h[2] for k, h in hit.items()}}
    s, c = out["seconds"], out["cpu_seconds"]
    out["ratio"] = s["recbole"] / s["genrec"] if s.get("recbole") and s.get("genrec") else None
    out["cpu_ratio"] = c["recbole"] / c["genrec"] if c.get("recbole") and c.get("genrec") else None
    return out


def compare(sides: dict[str, dict[str, Any]], target: float) -> dict[str, Any]:
    """Medians per side and RecBole-over-genrec ratios (None where a side did not run)."""
    rows: dict[str, dict[str, float | None]] = {
        "seconds_per_epoch": {k: statistics.median(r["train_seconds"]) for k, r in sides.items()},
        "seconds_per_full_validation": {k: statistics.median(r["valid_seconds"]) for k, r in sides.items()},
        "peak_rss_mib": {k: r["peak_rss_mib"] for k, r in sides.items()},
        "best_valid_ndcg@10": {k: max(v for *_, v in r["curve"]) for k, r in sides.items()},
        "test_ndcg@10_of_best": {k: r["test"]["ndcg@10"] for k, r in sides.items()},
        "epochs_run": {k: len(r["curve"]) for k, r in sides.items()},
    }
    for row in rows.values():
        row["ratio"] = row["recbole"] / row["genrec"] if row.get("recbole") and row.get("genrec") else None
    ttq = time_to_quality({k: r["curve"] for k, r in sides.items()}, target) if "recbole" in sides else None
    return {"rows": rows, "time_to_quality": ttq, "time_to_quality_ratio": ttq and ttq["ratio"]}


def table(cmp: dict[str, Any]) -> str:
    def f(v: Any, digits: int = 2) -> str:
        if v is None or isinstance(v, int):
            return "-" if v is None else str(v)
        return f"{v:,.{digits}f}"

    lines = ["| | RecBole | genrec | RecBole / genrec |", "| --- | --- | --- | --- |"]
    for name, row in cmp["rows"].items():
        d = 4 if "ndcg" in name else 2
        lines.append(f"| {name} | {f(row.get('recbole'), d)} | {f(row.get('genrec'), d)} | {f(row.get('ratio'))} |")
    t = cmp["time_to_quality"]
    if t:
        lines.append(f"| seconds to valid ndcg@10 >= {t['level']:.4f} | {f(t['seconds']['recbole'])} | "
                     f"{f(t['seconds']['genrec'])} | {f(t['ratio'])} |")
        lines.append(f"| cpu seconds to the same | {f(t['cpu_seconds']['recbole'])} | {f(t['cpu_seconds']['genrec'])}"
                     f" | {f(t['cpu_ratio'])} |")
    return "\n".join(lines)


# -- the command --------------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--setup", action="store_true", help="make RecBole's virtual environment (--env) and stop")
    ap.add_argument("--env", default=str(ENV), help="RecBole's virtual environment")
    ap.add_argument("--data", default="data_cache/beauty", help="genrec prepared dataset folder")
    ap.add_argument("--recipe", default="configs/sasrec-beauty.yaml")
    ap.add_argument("--set", nargs="*", default=[], metavar="SECTION.KEY=VALUE", help="genrec recipe overrides")
    ap.add_argument("--quick", action="store_true", help="--users 2000, one epoch each")
    ap.add_argument("--users", type=int, default=0, help="only the first N users (items renumbered); 0 = all")
    ap.add_argument("--target", type=float, default=0.0399, help="validation NDCG@10 both sides train towards")
    ap.add_argument("--recbole-epochs", type=int, default=8)
    ap.add_argument("--recbole-max-seconds", type=float, default=0.0, help="RecBole stops after the epoch that "
                    "passes this (0 = no bound); genrec's bound is the seconds RecBole trained")
    ap.add_argument("--recbole-batch-size", type=int, default=2048, help="RecBole's train_batch_size (its default)")
    ap.add_argument("--genrec-epochs", type=int, default=60)
    ap.add_argument("--max-seconds", type=float, default=0.0, help="genrec's bound without RecBole (0 = none)")
    ap.add_argument("--skip-recbole", action="store_true", help="genrec's side only")
    ap.add_argument("--recbole-result", default="", help="RecBole's record (recbole_driver.py --result) of an "
                    "earlier invocation on the same files, instead of running RecBole again; the record says so")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch threads of both sides")
    ap.add_argument("--work", default="", help="folder for the atomic files and runs (default: a temporary one)")
    ap.add_argument("--name", default="", help="results file name (default peer__recbole-sasrec__DATASET)")
    ap.add_argument("--record", default="", help="write the record to this path instead of benchmarks/results/")
    ap.add_argument("--worker", choices=["genrec"], help=argparse.SUPPRESS)
    ap.add_argument("--result", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.quick:
        args.users = args.users or 2000
        args.recbole_epochs, args.genrec_epochs = 1, 1
    return args


def prepare_files(args: argparse.Namespace, work: Path) -> tuple[str, RunConfig, dict[str, Any], dict[str, Any]]:
    """The dataset both sides use (a user subset when asked), its RecBole files and the split check."""
    data = args.data
    cfg = load_config(args.recipe, genrec_overrides(args, data))
    ds = load_data(cfg.data)
    if args.users:
        data = str(subset_dataset(ds, args.users, work / "data"))
        ds = load_dataset(data)
    if cfg.data.split not in ("leave_one_out", "loo"):
        raise ConfigError(f"the peer benchmark compares leave-one-out splits; the recipe asks for '{cfg.data.split}'")
    seqs = UserSequences.from_interactions(ds.interactions)
    split = split_from_config(seqs, cfg.data)
    write_recbole_files(seqs, split, work, "peer", cfg.data.max_len)
    check = check_files(seqs, split, work, "peer", cfg.data.max_len, ds.num_items)
    info = {"name": ds.manifest.get("name"), "fingerprint": ds.fingerprint, "users": len(seqs),
            "items": ds.num_items, "interactions": len(ds.interactions)}
    return data, cfg, check, info


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.setup:
        setup_env(Path(args.env))
        return
    if args.worker == "genrec":
        genrec_worker(args)
        return
    work = Path(args.work or tempfile.mkdtemp(prefix="peer-recbole-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        compare_sides(args, work)
    finally:
        if not args.work:  # a temporary folder: the atomic files, RecBole's checkpoints and genrec's run go
            shutil.rmtree(work, ignore_errors=True)


def compare_sides(args: argparse.Namespace, work: Path) -> None:
    """Files and check, RecBole's run, genrec's run, the table and the record."""
    print(f"protocol: {PROTOCOL} (both sides; RecBole's protocol for sequential models)", flush=True)
    data, cfg, check, info = prepare_files(args, work)
    print(describe_check(check), flush=True)
    if not check["ok"]:
        sys.exit("error: the RecBole files do not hold genrec's split; nothing was trained")
    sides: dict[str, dict[str, Any]] = {}
    python = Path(args.env) / "bin" / "python"
    if args.skip_recbole or not (python.exists() or args.recbole_result):
        why = "--skip-recbole" if args.skip_recbole else \
            f"no environment at {args.env}; python benchmarks/peer_recbole.py --setup makes it"
        print(f"RecBole: skipped ({why})", flush=True)
    elif args.recbole_result:
        sides["recbole"] = json.loads(Path(args.recbole_result).read_text())
        print(f"RecBole: the record of an earlier invocation on the same files ({args.recbole_result})", flush=True)
    else:
        sides["recbole"] = run_recbole(python, work, "peer", cfg, args)
        rc = sides["recbole"]["check"]
        print(f"RecBole's loaded data: {rc['users']} users, {rc['items']} items; valid {rc['valid']}, "
              f"test {rc['test']}", flush=True)
    bound = sum(sides["recbole"]["train_seconds"]) if "recbole" in sides else args.max_seconds
    stop_at = args.target
    if "recbole" in sides and max(v for *_, v in sides["recbole"]["curve"]) < args.target:
        stop_at = max(v for *_, v in sides["recbole"]["curve"])  # the best both can reach is RecBole's best
        print(f"RecBole's best validation NDCG@10 {stop_at:.4f} is below {args.target}: genrec stops at it", flush=True)
    sides["genrec"] = run_genrec(data, work, args, bound, stop_at)
    cmp = compare(sides, args.target)
    print(f"\n{info['name']}: {info['users']} users x {info['items']} items; {PROTOCOL}; {args.threads} threads each")
    print(table(cmp))
    if cmp["time_to_quality_ratio"] is not None:
        t = cmp["time_to_quality"]
        note = "" if t["target_reached_by_both"] else f" (the best both reach; target {args.target} is not)"
        print(f"time to validation NDCG@10 >= {t['level']:.4f}{note}: RecBole {t['seconds']['recbole']:.0f} s (epoch {t['epochs']['recbole']}), genrec "
              f"{t['seconds']['genrec']:.0f} s (epoch {t['epochs']['genrec']}) -> {t['ratio']:.1f}x")
    write_record(args, cfg, info, check, sides, cmp)


def write_record(args: argparse.Namespace, cfg: RunConfig, info: dict[str, Any], check: dict[str, Any],
                 sides: dict[str, dict[str, Any]], cmp: dict[str, Any]) -> None:
    rec = {"dataset": info["name"], "data_fingerprint": info["fingerprint"], "model": "sasrec",
           "recipe": args.recipe, "overrides": list(args.set), "baseline": "RecBole 1.2.1 SASRec",
           "protocol": {"evaluation": PROTOCOL, "split_check": check, "threads": args.threads, "target": args.target,
                        "users": info["users"], "items": info["items"], "quick": args.quick,
                        "differences": differences(cfg), "recbole_epochs": args.recbole_epochs,
                        "genrec_epochs": args.genrec_epochs, "recbole_batch_size": args.recbole_batch_size,
                        "recbole_run": "an earlier invocation (--recbole-result), same files and machine"
                        if args.recbole_result else "this invocation, before genrec's"},
           "time_to_quality_ratio": cmp["time_to_quality_ratio"],
           "metrics": {**cmp["rows"], "time_to_quality": cmp["time_to_quality"],
                       "time_to_quality_ratio": cmp["time_to_quality_ratio"]},
           "seeds": [args.seed], "runs": sides}
    if args.record:
        path = Path(args.record)
        path.write_text(json.dumps({**rec, "command": command_line(), "date": time.strftime("%Y-%m-%d"),
                                    "commit": commit(), "machine": machine()}, indent=2) + "\n")
    else:
        path = write_result(args.name or f"peer__recbole-sasrec__{Path(args.data).name}", rec)
    print(f"wrote {path}")


if __name__ == "__main__":
    try:
        main()
    except GenrecError as exc:
        sys.exit(f"error: {exc}")
