"""bf16 against fp32 training steps, measured in one run: ms per step, the speed ratio, and how much of this
machine's own matmul rate at each dtype a step reaches.

For each recipe two trainers start from the same weights (same seed), one with ``train.precision=fp32`` and one
with ``train.precision=bf16``; they take the real loop step (``TrainerBase._train_step``: forward, loss,
backward, AdamW) on the same batches, interleaved (fp32 first on even steps, bf16 first on odd ones), after
``--warmup`` untimed steps each. FLOPs of a step are counted by torch's FlopCounterMode over the fp32 trainer
(the same arithmetic in either dtype); the matmul rates are (n x n) products at fp32 and at bf16.

    python benchmarks/precision_speed.py --data data_cache/beauty
    python benchmarks/precision_speed.py --data data_cache/beauty --recipe configs/hstu-beauty.yaml --profile
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import counted_flops, interleaved_steps, matmul_flops_per_second, write_result  # noqa: E402

from genrec.config import load_config  # noqa: E402
from genrec.data.loading import load_data  # noqa: E402
from genrec.train.trainer import Trainer  # noqa: E402

RECIPES = ["configs/sasrec-beauty.yaml", "configs/hstu-beauty.yaml"]
PRECISIONS = ("fp32", "bf16")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def trainers(recipe: str, data: str, overrides: list[str], dataset: Any = None, fused_adamw: bool = False,
             compile_loss: bool = False) -> dict[str, Trainer]:
    """One fresh trainer per precision, same recipe, same seed (so the same initial weights); the experiments
    (``fused_adamw``: torch's fused CPU AdamW; ``compile_loss``: torch.compile of model + objective) apply to both."""
    out = {}
    for prec in PRECISIONS:
        cfg = load_config(recipe, [*overrides, f"data.path={data or repr('')}", "train.progress=false",
                                   "train.tensorboard=false", f"train.precision={prec}"])
        dataset = dataset if dataset is not None else load_data(cfg.data)
        tr = Trainer(cfg, tempfile.mkdtemp(prefix=f"genrec-{prec}-"), dataset, resume=False)
        if fused_adamw:
            tc = cfg.train
            tr.optimizer = torch.optim.AdamW(tr.model.parameters(), lr=tc.lr, betas=tuple(tc.betas),
                                             weight_decay=tc.weight_decay, fused=True)
        if compile_loss:
            tr.loss_module = torch.compile(tr.loss_module)
        tr.model.train()
        out[prec] = tr
    return out


def timed_steps(trs: dict[str, Trainer], steps: int, warmup: int) -> tuple[dict[str, list[float]], list[Any]]:
    """Seconds per step of each trainer on the same batches, interleaved, and the timed batches; warm-up steps
    are not kept."""
    times, timed = interleaved_steps({p: trs[p] for p in PRECISIONS}, steps, warmup)
    return {p: times[p] for p in PRECISIONS}, timed


def step_flops(tr: Trainer, batches: list[Any]) -> list[int]:
    """FLOPs (forward + backward) of a training step on each of ``batches``."""
    return [counted_flops(lambda rows=rows: tr._train_step(rows)) for rows in batches]


MATMUL_OPS = ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::_scaled_dot_product_flash_attention_for_cpu",
              "aten::_scaled_dot_product_flash_attention_for_cpu_backward")


def profile(tr: Trainer, steps: int, rows_per: int = 25) -> tuple[str, float]:
    """torch.profiler's table of where ``steps`` steps of ``tr`` spend their CPU time, and the share of it
    spent inside matmul kernels (forward and backward)."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    batches = tr.epoch_batches(2)
    with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
        for i in range(steps):
            tr._train_step(batches[i % len(batches)])
    avg = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in avg)
    share = sum(e.self_cpu_time_total for e in avg if e.key in MATMUL_OPS) / max(total, 1e-9)
    return avg.table(sort_by="self_cpu_time_total", row_limit=rows_per), share


def measure(recipe: str, data: str, overrides: list[str], steps: int, warmup: int, matmul_n: int,
            dataset: Any = None, profile_steps: int = 0, **experiments: bool) -> dict[str, Any]:
    """The record of one recipe (without command/date/commit, which ``write_result`` adds).

    The achieved rate of a precision is the FLOPs of the timed steps over their summed time; the ratio is of
    the median step times. With ``profile_steps``, the record adds the share of an fp32 step spent in matmuls
    and the speed-up bf16 could give at most (Amdahl: those matmuls at the bf16 matmul rate, the rest as is)."""
    trs = trainers(recipe, data, overrides, dataset, **experiments)
    ref = trs["fp32"]
    if trs["bf16"].precision != "bf16":
        raise SystemExit("train.precision=bf16 fell back to fp32 on this machine (no native bf16): nothing to compare")
    times, timed = timed_steps(trs, steps, warmup)
    flops = sum(step_flops(ref, timed))
    ms = {p: statistics.median(t) * 1e3 for p, t in times.items()}
    rate = {p: matmul_flops_per_second(matmul_n, dtype=DTYPES[p]) for p in PRECISIONS}
    achieved = {p: flops / sum(times[p]) for p in PRECISIONS}
    cfg, ds = ref.cfg, ref.dataset
    metrics = {"ms_per_step_fp32": ms["fp32"], "ms_per_step_bf16": ms["bf16"],
               "speedup_bf16_over_fp32": ms["fp32"] / ms["bf16"], "train_gflop_per_step": flops / len(timed) / 1e9}
    for p in PRECISIONS:
        metrics[f"train_gflops_{p}"] = achieved[p] / 1e9
        metrics[f"matmul_gflops_{p}"] = rate[p] / 1e9
        metrics[f"fraction_of_matmul_rate_{p}"] = achieved[p] / rate[p]
    tables = {}
    if profile_steps:
        for p in PRECISIONS:
            tables[p], metrics[f"matmul_share_of_step_{p}"] = profile(trs[p], profile_steps)
        share = metrics["matmul_share_of_step_fp32"]
        metrics["bf16_speedup_bound"] = 1 / (1 - share + share * rate["fp32"] / rate["bf16"])
    return {"dataset": ds.manifest.get("name"), "data_fingerprint": ds.fingerprint, "model": cfg.model["name"],
            "recipe": recipe, "overrides": overrides, "seeds": [cfg.train.seed],
            "protocol": {"batch_size": cfg.train.batch_size, "max_len": cfg.data.max_len,
                         "objective": cfg.objective.name, "negatives": cfg.objective.num_negatives,
                         "timed_steps": steps, "warmup_steps": warmup, "interleaved": True,
                         "threads": torch.get_num_threads(), "matmul_n": matmul_n, **experiments,
                         "step": "TrainerBase._train_step (forward, loss, backward, AdamW)"},
            "metrics": metrics, "_profiles": tables}


def report(rec: dict[str, Any]) -> str:
    m = rec["metrics"]
    return (f"{rec['model']} on {rec['dataset']} (batch {rec['protocol']['batch_size']}): "
            f"fp32 {m['ms_per_step_fp32']:.1f} ms/step, bf16 {m['ms_per_step_bf16']:.1f} ms/step "
            f"(median of {rec['protocol']['timed_steps']}): bf16 is {m['speedup_bf16_over_fp32']:.2f}x fp32\n"
            f"  {m['train_gflop_per_step']:.2f} GFLOP/step; fp32 reaches {m['train_gflops_fp32']:.1f} GFLOP/s = "
            f"{m['fraction_of_matmul_rate_fp32']:.1%} of the fp32 matmul rate ({m['matmul_gflops_fp32']:.0f} GFLOP/s), "
            f"bf16 {m['train_gflops_bf16']:.1f} GFLOP/s = {m['fraction_of_matmul_rate_bf16']:.1%} of the bf16 "
            f"matmul rate ({m['matmul_gflops_bf16']:.0f} GFLOP/s)"
            + (f"\n  matmuls are {m['matmul_share_of_step_fp32']:.0%} of an fp32 step ({m['matmul_share_of_step_bf16']:.0%} "
               f"of a bf16 one): bf16 can be at most {m['bf16_speedup_bound']:.2f}x faster (Amdahl)"
               if "bf16_speedup_bound" in m else ""))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recipe", nargs="+", default=RECIPES)
    ap.add_argument("--data", default="data_cache/beauty", help="a prepared dataset folder ('' = synthetic)")
    ap.add_argument("--steps", type=int, default=40, help="timed steps per precision")
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--matmul-n", type=int, default=1024)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    ap.add_argument("--fused-adamw", action="store_true", help="experiment: torch's fused AdamW (both precisions)")
    ap.add_argument("--compile", action="store_true", help="experiment: torch.compile model + objective (both)")
    ap.add_argument("--profile", type=int, default=10, metavar="STEPS",
                    help="profile STEPS more steps of each (0 = no profile)")
    ap.add_argument("--quick", action="store_true", help="a few steps, no JSON record (a smoke test)")
    ap.add_argument("--name", default=None, help="record name (one recipe) or prefix")
    ap.add_argument("--set", nargs="*", default=[])
    args = ap.parse_args()
    if args.quick:
        args.steps, args.warmup, args.matmul_n = 4, 1, 256
    if args.threads:
        torch.set_num_threads(args.threads)
    for recipe in args.recipe:
        rec = measure(recipe, args.data, args.set, args.steps, args.warmup, args.matmul_n,
                      profile_steps=args.profile, fused_adamw=args.fused_adamw, compile_loss=args.compile)
        for prec, table in rec.pop("_profiles").items():
            print(f"-- {prec}: where {args.profile} steps spend their time\n{table}")
        print(report(rec))
        if not args.quick:
            stem = f"{Path(recipe).stem}__{Path(args.data).name}"
            name = args.name if args.name and len(args.recipe) == 1 else f"{args.name or 'precision'}__{stem}"
            print(f"wrote {write_result(name, rec)}")


if __name__ == "__main__":
    main()
