"""One HPGR training step with PGSA against the same model with dense HSTU attention, at long histories.

``benchmarks/pgsa.py`` times one attention layer; this script times what a run pays: a whole ranker training
step (embeddings, every layer, the head, BCE, backward, AdamW) of the HPGR ranker with ``pgsa: true`` (relevance,
Top-K, Gaussian windows, gathered attention) and with ``pgsa: false`` (dense target-aware HSTU attention), built
from the same seed and fed the same synthetic impressions (random items and increasing timestamps; relevance
comes from the model's own table, as with no pre-training). Both are measured in one run, so the printed ratio is
the acceptance figure of issue 18 ("a training step at N = 2,048 at least 3x faster than dense").

    python benchmarks/pgsa_step.py --threads 1
    python benchmarks/pgsa_step.py --device cuda --batch 64   # on a GPU: also the peak memory of each step
    python benchmarks/pgsa_step.py --quick   # seconds: N=64, for tests
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import median_step_seconds, write_result  # noqa: E402

from genrec.data.sequences import SeqBatch  # noqa: E402
from genrec.models.registry import build_model  # noqa: E402
from genrec.nn.optim import adamw  # noqa: E402
from genrec.objectives import ctr_bce  # noqa: E402


def model_cfg(args: argparse.Namespace, pgsa: bool) -> dict[str, Any]:
    """hpgr-ml1m.yaml's ranker (d=64, 2 layers, 2 heads, K=32, sigma=2, all rows, gather), without stage 1."""
    return {"name": "hpgr", "d_model": args.d, "num_layers": args.layers, "num_heads": args.heads, "dropout": 0.2,
            "linear_dropout": 0.1, "top_k": args.k, "sigma": args.sigma, "impl": "gather", "rows": "all",
            "use_sem": False, "pgsa": pgsa}


def make_batch(N: int, args: argparse.Namespace) -> tuple[SeqBatch, torch.Tensor, torch.Tensor]:
    """B impressions with full N-event histories: (history batch, candidates (B, 1), labels (B,)), on the
    device."""
    g = torch.Generator().manual_seed(N)
    B = args.batch
    items = torch.randint(1, args.items + 1, (B, N), generator=g)  # (B, N)
    ts = torch.cumsum(torch.randint(1, 3600, (B, N), generator=g), 1)  # (B, N) increasing
    batch = SeqBatch(items=items, timestamps=ts, lengths=torch.full((B,), N), query_time=ts[:, -1] + 60,
                     behaviors=torch.ones(B, N, dtype=torch.long))
    cands = torch.randint(1, args.items + 1, (B, 1), generator=g)  # (B, 1)
    labels = torch.randint(0, 2, (B,), generator=g).float()  # (B,)
    dev = torch.device(args.device)
    return batch.to(dev), cands.to(dev), labels.to(dev)


def measure(pgsa: bool, N: int, args: argparse.Namespace) -> tuple[float, float | None]:
    """Median seconds of one training step (after one warm-up step), and on CUDA the step's peak allocated
    memory in GiB (None on the CPU)."""
    torch.manual_seed(0)
    dev = torch.device(args.device)
    model = build_model(model_cfg(args, pgsa), args.items, N).to(dev)
    model.train()
    opt = adamw(model.parameters(), 1e-3, (0.9, 0.98))
    batch, cands, labels = make_batch(N, args)
    cuda = dev.type == "cuda"

    def step() -> None:
        loss, count = ctr_bce(model.score(batch, cands), cands, labels)
        opt.zero_grad(set_to_none=True)
        (loss / count).backward()
        opt.step()
        if cuda:  # the step's kernels run asynchronously: the timer waits for them
            torch.cuda.synchronize(dev)

    if cuda:
        torch.cuda.reset_peak_memory_stats(dev)
    secs = median_step_seconds(step, args.reps)
    return secs, torch.cuda.max_memory_allocated(dev) / 2**30 if cuda else None


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ns", default="200,512,1024,2048", help="history lengths N")
    ap.add_argument("--batch", type=int, default=8, help="impressions per step")
    ap.add_argument("--d", type=int, default=64)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--heads", type=int, default=2)
    ap.add_argument("--k", type=int, default=32, help="PGSA Top-K anchors")
    ap.add_argument("--sigma", type=float, default=2.0)
    ap.add_argument("--items", type=int, default=3706, help="catalogue size (ML-1M's 3,706 movies)")
    ap.add_argument("--reps", type=int, default=3, help="timed steps (median reported)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    ap.add_argument("--quick", action="store_true", help="N=64, batch 2, one rep: a smoke run for tests")
    ap.add_argument("--no-write", action="store_true", help="print only (no results record)")
    args = ap.parse_args(argv)
    if args.quick:
        args.ns, args.batch, args.reps = "64", 2, 1
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit(f"--device {args.device}: this torch sees no CUDA device")
    torch.set_num_threads(args.threads)
    kind = "cuda" if args.device.startswith("cuda") else "cpu"
    gpu = torch.cuda.get_device_name(torch.device(args.device)) if kind == "cuda" else None
    print(f"HPGR training step, B={args.batch} d={args.d} layers={args.layers} K={args.k} sigma={args.sigma} "
          f"threads={args.threads} device={gpu or 'cpu'}")
    print(f"{'N':>6} {'dense s':>9} {'pgsa s':>9} {'speed-up':>9}" + ("  peak GiB dense / pgsa" if gpu else ""))
    rows: dict[str, Any] = {}
    for N in (int(n) for n in args.ns.split(",")):
        dense, mem_d = measure(False, N, args)  # same run, same inputs
        if gpu:
            torch.cuda.empty_cache()  # the dense step's cached blocks do not count against PGSA's peak
        sparse, mem_s = measure(True, N, args)
        rows[str(N)] = {"dense_s": round(dense, 4), "pgsa_s": round(sparse, 4), "speedup": round(dense / sparse, 2)}
        if gpu:
            rows[str(N)].update(dense_peak_gib=round(mem_d, 3), pgsa_peak_gib=round(mem_s, 3))
        print(f"{N:>6} {dense:>9.3f} {sparse:>9.3f} {dense / sparse:>8.2f}x"
              + (f"  {mem_d:.2f} / {mem_s:.2f}" if gpu else ""), flush=True)
    record = {"dataset": "synthetic impressions", "model": "hpgr", "recipe": "hpgr-ml1m.yaml ranker (no stage 1)",
              "protocol": {"timed": "one training step: forward, BCE, backward, AdamW", "batch": args.batch,
                           "d": args.d, "layers": args.layers, "heads": args.heads, "top_k": args.k,
                           "sigma": args.sigma, "rows": "all", "impl": "gather", "reps": args.reps,
                           "threads": args.threads, "device": gpu or "cpu"},
              "metrics": {"by_history_length": rows}, "seeds": [0]}
    if not args.no_write:
        print(f"wrote {write_result(f'pgsa-step__hpgr__{kind}', record)}")
    return record


if __name__ == "__main__":
    main()
