"""Cost curve of a retriever training step against history length: HSTU against dense softmax attention.

At each history length L (200 / 1,000 / 4,000 by default) one training step (embeddings, every block, sampled
softmax over 128 negatives per position, backward, AdamW) of genrec's HSTU (pointwise SiLU attention with
relative time and position biases, the (B, h, L, L) scores materialised) and of genrec's SASRec (softmax attention
through torch's fused scaled_dot_product_attention), both at the HSTU paper's ML-1M width (d = 50, 2 blocks,
1 head), on the same synthetic batch of B full-length histories. Every (model, L) point runs in its own child
process so its peak resident memory is its own; the parent prints the HSTU-over-SASRec ratios measured in one
invocation. ``--packed`` adds HSTU with ``train.packed`` where the build has it.

    python benchmarks/cost_curve.py --threads 1
    python benchmarks/cost_curve.py --quick     # seconds: L = 32, 64, for tests
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import median_step_seconds, write_result  # noqa: E402

from genrec.config import ObjectiveConfig  # noqa: E402
from genrec.data.sequences import SeqBatch  # noqa: E402
from genrec.models.registry import build_model  # noqa: E402
from genrec.nn.optim import adamw  # noqa: E402
from genrec.objectives.next_item import SampledSoftmax  # noqa: E402

MODELS = {  # configs/hstu-ml1m.yaml and configs/sasrec-ml1m.yaml widths
    "hstu": {"name": "hstu", "d_model": 50, "num_layers": 2, "num_heads": 1, "dqk": 50, "dv": 50, "dropout": 0.2,
             "linear_dropout": 0.2},
    "sasrec": {"name": "sasrec", "d_model": 50, "num_layers": 2, "num_heads": 1, "dropout": 0.2},
}


def make_batch(B: int, L: int, items: int) -> SeqBatch:
    """B full-length histories: random items, increasing timestamps, every position supervised."""
    g = torch.Generator().manual_seed(L)
    seq = torch.randint(1, items + 1, (B, L + 1), generator=g)  # (B, L+1)
    ts = torch.cumsum(torch.randint(1, 3600, (B, L + 1), generator=g), 1)  # (B, L+1)
    return SeqBatch(items=seq[:, :-1], timestamps=ts[:, :-1], lengths=torch.full((B,), L), query_time=ts[:, -1],
                    targets=seq[:, 1:], target_times=ts[:, 1:])


def one_point(model_name: str, L: int, args: argparse.Namespace) -> dict[str, float]:
    """Median seconds of a training step (after one warm-up step) and this process's peak RSS."""
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = build_model(MODELS[model_name], args.items, L)
    model.train()
    loss_fn = SampledSoftmax(ObjectiveConfig(name="sampled_softmax", num_negatives=128, temperature=0.05,
                                             shared_negatives=False))
    opt = adamw(model.parameters(), 1e-3, (0.9, 0.98))
    batch = make_batch(args.batch, L, args.items)
    gen = torch.Generator().manual_seed(0)

    def step() -> None:
        states = model.sequence_output(batch)  # (B, L, D)
        valid = batch.targets > 0  # (B, L)
        loss = loss_fn(model, states[valid], batch.targets[valid], gen) / valid.sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # MB: interpreter, model, batch
    seconds = median_step_seconds(step, args.reps)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"step_s": seconds, "peak_rss_mb": peak, "step_extra_mb": peak - before,
            "tokens_per_s": args.batch * L / seconds}


def child(model_name: str, L: int, args: argparse.Namespace) -> dict[str, float]:
    """Run one point in a fresh interpreter (its own peak memory)."""
    cmd = [sys.executable, __file__, "--one", model_name, str(L), "--batch", str(args.batch), "--reps",
           str(args.reps), "--threads", str(args.threads), "--items", str(args.items)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lengths", default="200,1000,4000", help="history lengths L")
    ap.add_argument("--batch", type=int, default=4, help="histories per step")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--items", type=int, default=3706, help="catalogue size (ML-1M's)")
    ap.add_argument("--quick", action="store_true", help="L = 32, 64, batch 2, 1 rep (a test)")
    ap.add_argument("--name", default="cost-curve__hstu-vs-sasrec")
    ap.add_argument("--one", nargs=2, metavar=("MODEL", "L"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.one:
        print(json.dumps(one_point(args.one[0], int(args.one[1]), args)))
        return {}
    if args.quick:
        args.lengths, args.batch, args.reps = "32,64", 2, 1
    curve = {}
    for L in (int(x) for x in args.lengths.split(",")):
        pts = {m: child(m, L, args) for m in MODELS}
        h, s = pts["hstu"], pts["sasrec"]
        curve[str(L)] = {**{f"{m}_{k}": v for m, p in pts.items() for k, v in p.items()},
                         "step_ratio_hstu_over_sasrec": h["step_s"] / s["step_s"],
                         "memory_ratio_hstu_over_sasrec": h["peak_rss_mb"] / s["peak_rss_mb"],
                         "step_memory_ratio_hstu_over_sasrec": h["step_extra_mb"] / max(s["step_extra_mb"], 1.0)}
        c = curve[str(L)]
        print(f"L={L:5d}  HSTU {h['step_s']:.3f} s/step +{h['step_extra_mb']:.0f} MB | SASRec {s['step_s']:.3f} "
              f"s/step +{s['step_extra_mb']:.0f} MB | HSTU/SASRec time {c['step_ratio_hstu_over_sasrec']:.2f}x step memory "
              f"{c['step_memory_ratio_hstu_over_sasrec']:.2f}x", flush=True)
    rec = {"dataset": "synthetic (full-length histories)", "model": "hstu vs sasrec",
           "recipe": "configs/hstu-ml1m.yaml / configs/sasrec-ml1m.yaml widths (d=50, 2 blocks, 1 head)",
           "protocol": {"step": "forward + sampled softmax (128 negatives per position) + backward + AdamW",
                        "batch": args.batch, "reps": args.reps, "threads": args.threads, "items": args.items,
                        "memory": "peak RSS of a fresh process per point, and its rise during the steps (step_extra_mb)"},
           "metrics": {"by_history_length": curve}, "seeds": [0]}
    if not args.quick or args.name != ap.get_default("name"):
        write_result(args.name, rec)
    return rec


if __name__ == "__main__":
    main()
