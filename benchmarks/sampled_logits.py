"""Sampled softmax with per-position negatives on the CPU: the blocked-gather logits with a sparse backward
(``genrec.nn.gathered_logits``) against the dense paths they replace, measured in one run.

Two measurements, process-CPU seconds (a shared machine's waiting for a core is left out), medians:

- **the op**: the (T, R) logits and their gradients at a recipe's sizes (T = the positions of a mean training
  batch, R = ``objective.num_negatives``, N = the catalogue, D = ``model.d_model``), against the path the objective
  took before (one (T, N+1) product read back with ``gather`` where the catalogue is small, else the (T, R, D)
  gathered vectors). Same inputs; the largest gradient difference is printed.
- **the step**: two trainers of the recipe from the same seed (so the same weights and batches), the objective's
  ``gathered_on_cpu`` on and off, taking the real loop step (forward, loss, backward, AdamW) on the same batches,
  interleaved (``common.interleaved_steps``).

    python benchmarks/sampled_logits.py --recipe configs/hstu-ml1m.yaml --data data_cache/ml-1m
    python benchmarks/sampled_logits.py --recipe configs/sasrec-ml1m.yaml --data data_cache/ml-1m --steps 8
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import interleaved_steps, write_result  # noqa: E402

from genrec.config import load_config  # noqa: E402
from genrec.data.loading import load_data  # noqa: E402
from genrec.nn.gathered_logits import dense_gathered_logits, gathered_logits  # noqa: E402
from genrec.train.trainer import Trainer  # noqa: E402


def op_seconds(fn: Any, states: torch.Tensor, table: torch.Tensor, ids: torch.Tensor, weight: torch.Tensor,
               reps: int) -> tuple[float, tuple[torch.Tensor, ...]]:
    """Median process-CPU seconds of the logits and the gradients of a loss on them (one warm-up call)."""
    times, grads = [], ()
    for i in range(reps + 1):
        c0 = time.process_time()
        grads = torch.autograd.grad((fn(states, table, ids) * weight).sum(), [states, table])
        if i:
            times.append(time.process_time() - c0)
    return statistics.median(times), grads


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recipe", required=True, help="a retriever recipe with objective.name=sampled_softmax")
    ap.add_argument("--data", required=True, help="prepared dataset folder")
    ap.add_argument("--set", nargs="*", default=[], metavar="SECTION.KEY=VALUE")
    ap.add_argument("--steps", type=int, default=12, help="timed loop steps per side")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--reps", type=int, default=5, help="timed calls of the op per side")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--no-write", action="store_true", help="print only (no results record)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    trs: dict[str, Trainer] = {}
    dataset = None
    for side in ("gathered", "dense"):
        cfg = load_config(args.recipe, [*args.set, f"data.path={args.data}", "train.progress=false",
                                        "train.tensorboard=false", "train.device=cpu"])
        if cfg.objective.name != "sampled_softmax" or cfg.objective.shared_negatives:
            raise SystemExit(f"{args.recipe}: objective is not sampled_softmax with per-position negatives")
        dataset = dataset if dataset is not None else load_data(cfg.data)
        trs[side] = Trainer(cfg, tempfile.mkdtemp(prefix=f"genrec-{side}-"), dataset, resume=False)
        trs[side].objective.gathered_on_cpu = side == "gathered"
    cfg = trs["gathered"].cfg
    # the op at the recipe's sizes: a mean batch's supervised positions
    batches = trs["gathered"].epoch_batches(0)
    T = int(statistics.fmean(int((trs["gathered"].train_batch(b).targets > 0).sum()) for b in batches[:20]))
    R, N, D = cfg.objective.num_negatives, dataset.num_items + 1, int(cfg.model["d_model"])
    g = torch.Generator().manual_seed(0)
    states = torch.nn.functional.normalize(torch.randn(T, D, generator=g), dim=-1).requires_grad_()
    table = torch.nn.functional.normalize(torch.randn(N, D, generator=g), dim=-1).requires_grad_()
    ids, weight = torch.randint(1, N, (T, R), generator=g), torch.randn(T, R, generator=g)
    new_s, new_g = op_seconds(gathered_logits, states, table, ids, weight, args.reps)
    old_s, old_g = op_seconds(dense_gathered_logits, states, table, ids, weight, args.reps)
    diff = max(float((a - b).abs().max()) for a, b in zip(new_g, old_g))
    print(f"op  T={T} R={R} N={N} D={D}: dense {1000 * old_s:.0f} ms, gathered {1000 * new_s:.0f} ms, "
          f"{old_s / new_s:.2f}x (largest gradient difference {diff:.1e})")
    times, _ = interleaved_steps({"gathered": trs["gathered"], "dense": trs["dense"]}, args.steps, args.warmup)
    step = {k: statistics.median(v) for k, v in times.items()}
    print(f"step ({args.steps} interleaved, CPU time): dense {1000 * step['cpu_dense']:.0f} ms, gathered "
          f"{1000 * step['cpu_gathered']:.0f} ms, {step['cpu_dense'] / step['cpu_gathered']:.2f}x")
    record = {"dataset": dataset.manifest.get("name"), "model": cfg.model["name"], "recipe": args.recipe,
              "protocol": {"timed": "process-CPU seconds, medians; the op: logits + gradients; the step: the loop "
                                    "step on the same batches, interleaved", "threads": args.threads,
                           "steps": args.steps, "warmup": args.warmup, "reps": args.reps, "overrides": args.set},
              "metrics": {"op": {"T": T, "R": R, "N": N, "D": D, "dense_ms": round(1000 * old_s, 1),
                                 "gathered_ms": round(1000 * new_s, 1), "speedup": round(old_s / new_s, 2),
                                 "max_grad_diff": diff},
                          "step": {"dense_ms": round(1000 * step["cpu_dense"], 1),
                                   "gathered_ms": round(1000 * step["cpu_gathered"], 1),
                                   "speedup": round(step["cpu_dense"] / step["cpu_gathered"], 2),
                                   "dense_wall_ms": round(1000 * step["dense"], 1),
                                   "gathered_wall_ms": round(1000 * step["gathered"], 1)}},
              "seeds": [cfg.train.seed]}
    if not args.no_write:
        print(f"wrote {write_result(f'sampled-logits__{Path(args.recipe).stem}', record)}")
    return record


if __name__ == "__main__":
    main()
