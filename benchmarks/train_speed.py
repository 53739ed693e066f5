"""Time genrec's training and evaluation and compare them with the machine's own matmul speed.

Reports, in one run on one machine: milliseconds per training step, seconds per epoch, seconds
per full-catalogue evaluation of every test user, and the fraction of the measured dense matmul
FLOP rate that a training step reaches (FLOPs counted by torch's FlopCounterMode).

    python benchmarks/train_speed.py --recipe configs/sasrec-beauty.yaml --data data_cache/beauty
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import matmul_flops_per_second, write_result  # noqa: E402

from genrec.config import load_config  # noqa: E402
from genrec.data.loading import load_data  # noqa: E402
from genrec.data.sequences import batch_order, make_train_batch  # noqa: E402
from genrec.eval.retrieval import rank_targets  # noqa: E402
from genrec.train.trainer import Trainer  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recipe", default="configs/sasrec-beauty.yaml")
    ap.add_argument("--data", required=True)
    ap.add_argument("--steps", type=int, default=50, help="timed training steps")
    ap.add_argument("--name", default=None)
    ap.add_argument("--set", nargs="*", default=[])
    args = ap.parse_args()
    cfg = load_config(args.recipe, [*args.set, f"data.path={args.data}", "train.progress=false",
                                    "train.tensorboard=false"])
    ds = load_data(cfg.data)
    import tempfile

    tr = Trainer(cfg, tempfile.mkdtemp(prefix="genrec-speed-"), ds, resume=False)
    model = tr.model
    lengths = tr.split.train_end[tr.train_rows]
    batches = batch_order(lengths, cfg.train.batch_size, np.random.default_rng(0), cfg.train.length_bucketing)

    def step(rows, gen_step):
        batch = make_train_batch(tr.seqs, tr.train_rows[rows], tr.split.train_end, cfg.data.max_len)
        lsum, count = tr.loss_module(batch, tr._step_generator(gen_step))
        loss = lsum / count.clamp(min=1)
        tr.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        tr.optimizer.step()
        return int(count)

    model.train()
    # FLOPs of the average step (forward + backward), counted over a sample of batches
    flops, pos = 0, 0
    sample = batches[: min(20, len(batches))]
    for i, rows in enumerate(sample):
        with FlopCounterMode(display=False) as fc:
            pos += step(rows, i)
        flops += fc.get_total_flops()
    flops_per_step = flops / len(sample)
    # step time over the same kind of batches (warm)
    times = []
    for i in range(args.steps):
        rows = batches[i % len(batches)]
        t0 = time.perf_counter()
        step(rows, i)
        times.append(time.perf_counter() - t0)
    t0 = time.perf_counter()
    for i, rows in enumerate(batches):
        step(rows, i)
    epoch_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    rank_targets(model, tr.seqs, tr.split.test, cfg.eval.exclude_history, cfg.eval.batch_size)
    eval_s = time.perf_counter() - t0
    peak = matmul_flops_per_second()
    step_ms = statistics.median(times) * 1e3
    achieved = flops_per_step / (statistics.median(times))
    rec = {
        "dataset": ds.manifest.get("name"), "data_fingerprint": ds.fingerprint, "model": cfg.model["name"],
        "recipe": args.recipe, "protocol": {"batch_size": cfg.train.batch_size, "max_len": cfg.data.max_len,
                                            "objective": cfg.objective.name, "negatives": cfg.objective.num_negatives,
                                            "eval": "full catalogue, every test user"},
        "metrics": {"ms_per_step_median": step_ms, "steps_per_epoch": len(batches), "seconds_per_epoch": epoch_s,
                    "seconds_per_full_eval": eval_s, "eval_users": len(tr.split.test),
                    "train_gflop_per_step": flops_per_step / 1e9, "train_gflops_achieved": achieved / 1e9,
                    "matmul_gflops_measured": peak / 1e9, "fraction_of_matmul_rate": achieved / peak},
    }
    m = rec["metrics"]
    print(f"{cfg.model['name']} on {ds.manifest.get('name')}: {step_ms:.1f} ms/step (median of {args.steps}), "
          f"{epoch_s:.1f} s/epoch ({len(batches)} steps), {eval_s:.1f} s per full evaluation of {len(tr.split.test)} users")
    print(f"training reaches {m['train_gflops_achieved']:.1f} GFLOP/s = {m['fraction_of_matmul_rate']:.1%} of this "
          f"machine's measured fp32 matmul rate ({m['matmul_gflops_measured']:.1f} GFLOP/s)")
    name = args.name or f"speed__{Path(args.recipe).stem}__{Path(args.data).name}"
    print(f"wrote {write_result(name, rec)}")


if __name__ == "__main__":
    main()
