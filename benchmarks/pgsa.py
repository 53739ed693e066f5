"""PGSA (gathered sparse attention) against dense HSTU attention: forward + backward time and peak memory.

One candidate per sample, history length N, HSTU pointwise attention with the rab^{p,t} bias. Dense =
full (N+1)x(N+1) attention with the target-aware mask (the HSTU ranker's cost); PGSA = relevance from
a frozen table + Top-K + Gaussian windows + attention on the gathered K' columns (all of it timed).
Prints the speed-up and memory ratio per N and writes benchmarks/results/pgsa__<device>.json.

CPU memory is the peak resident-set growth of a forked child that runs only that configuration
(the CPU allocator has no peak counter); CUDA memory is torch.cuda.max_memory_allocated.

    python benchmarks/pgsa.py --threads 1
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import resource
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import write_result  # noqa: E402

from genrec.models.hstu_ranker import target_aware_mask  # noqa: E402
from genrec.nn.attention import hstu_pointwise_attention  # noqa: E402
from genrec.nn.position import RelativeBucketedTimeAndPositionBias  # noqa: E402
from genrec.nn.sparse import PGSAConfig, pgsa, rab_bias_fn  # noqa: E402


def make_inputs(N: int, args: argparse.Namespace, device: str) -> dict[str, Any]:
    g = torch.Generator().manual_seed(N)
    B, h, dqk = args.batch, args.heads, args.d // args.heads
    L = N + 1
    qkv = [torch.randn(B, h, L, dqk, generator=g).to(device).requires_grad_() for _ in range(3)]
    ts = torch.cumsum(torch.randint(1, 3600, (B, L), generator=g), 1).to(device)
    return {
        "q": qkv[0], "k": qkv[1], "v": qkv[2], "ts": ts, "qt": ts + 60,
        "lengths": torch.full((B,), N, dtype=torch.int64, device=device),
        "hist": torch.randint(1, args.items, (B, N), generator=g).to(device),
        "cand": torch.randint(1, args.items, (B,), generator=g).to(device),
        "table": torch.randn(args.items + 1, args.d, generator=g).to(device),
        "rab": RelativeBucketedTimeAndPositionBias(L).to(device),
    }


def step(impl: str, x: dict[str, Any], args: argparse.Namespace) -> int:
    """One forward + backward; returns the number of attended history columns (N or K')."""
    N = x["hist"].shape[1]
    if impl == "dense":
        bias = x["rab"](x["ts"], x["qt"])  # (B, L, L)
        mask = target_aware_mask(x["lengths"], N, 1)  # (B, L, L)
        out = hstu_pointwise_attention(x["q"], x["k"], x["v"], bias, mask, N + 1)
        kept = N
    else:
        cfg = PGSAConfig(top_k=args.k, sigma=args.sigma, rows=args.rows, impl="gather")
        out = pgsa(x["q"], x["k"], x["v"], x["table"], x["cand"], x["hist"], x["lengths"], N + 1, cfg,
                   bias=rab_bias_fn(x["rab"], x["ts"], x["qt"]))
        kept = -1
    out.square().sum().backward()
    for t in (x["q"], x["k"], x["v"]):
        t.grad = None
    return kept


def kept_columns(x: dict[str, Any], args: argparse.Namespace) -> float:
    from genrec.nn.sparse import pgsa_relevance, pgsa_weights

    r = pgsa_relevance(x["table"], x["cand"], x["hist"], x["lengths"])
    w = pgsa_weights(r, x["lengths"], args.k, args.sigma)
    return float((w > 0).sum(1).float().mean())


def measure(impl: str, N: int, args: argparse.Namespace, device: str) -> dict[str, float]:
    torch.set_num_threads(args.threads)
    x = make_inputs(N, args, device)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        base = _rss_bytes()
    step(impl, x, args)  # warm-up (and the memory high-water mark)
    sync()
    peak = (torch.cuda.max_memory_allocated() if device == "cuda" else _maxrss_bytes()) - base
    times = []
    for _ in range(args.reps):
        sync()
        t0 = time.perf_counter()
        step(impl, x, args)
        sync()
        times.append(time.perf_counter() - t0)
    out = {"ms": 1000 * statistics.median(times), "peak_mb": max(peak, 0) / 2**20}
    if impl == "pgsa":
        out["kept_columns"] = kept_columns(x, args)
    return out


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def _maxrss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def _child(conn, impl: str, N: int, args: argparse.Namespace) -> None:
    try:
        conn.send(measure(impl, N, args, "cpu"))
    except Exception as exc:  # report instead of hanging the parent
        conn.send({"error": repr(exc)})
    conn.close()


def measure_cpu(impl: str, N: int, args: argparse.Namespace) -> dict[str, float]:
    """Run in a fresh forked process so the resident-set high-water mark belongs to this configuration."""
    ctx = mp.get_context("fork")
    parent, child = ctx.Pipe(duplex=False)
    p = ctx.Process(target=_child, args=(child, impl, N, args))
    p.start()
    res = parent.recv()
    p.join()
    if "error" in res:
        raise RuntimeError(f"{impl} N={N}: {res['error']}")
    return res


def check_equal(args: argparse.Namespace) -> float:
    """Max |gathered - dense| on a small case, so the timed fast path is known to compute the same thing."""
    x = make_inputs(64, args, "cpu")
    cfg = dict(top_k=2, sigma=args.sigma, rows=args.rows)  # 2 anchors: a real subset of the 64 columns
    outs = [pgsa(x["q"], x["k"], x["v"], x["table"], x["cand"], x["hist"], x["lengths"], 65,
                 PGSAConfig(**cfg, impl=impl), bias=rab_bias_fn(x["rab"], x["ts"], x["qt"])) for impl in ("dense",
                                                                                                          "gather")]
    return float((outs[0] - outs[1]).abs().max().detach())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ns", default="256,512,1024,2048,4096", help="history lengths N")
    ap.add_argument("--k", type=int, default=64, help="PGSA Top-K anchors")
    ap.add_argument("--sigma", type=float, default=2.0)
    ap.add_argument("--rows", default="all", choices=["all", "candidate"])
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--d", type=int, default=64, help="model width (heads * d_qk)")
    ap.add_argument("--heads", type=int, default=2)
    ap.add_argument("--items", type=int, default=10_000, help="size of the frozen relevance table")
    ap.add_argument("--reps", type=int, default=3, help="timed repetitions (median reported)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="auto = cpu and cuda if present")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    ns = [int(n) for n in args.ns.split(",")]
    devices = ["cpu", "cuda"] if args.device == "auto" and torch.cuda.is_available() else (
        ["cpu"] if args.device == "auto" else [args.device])
    err = check_equal(args)
    print(f"gathered vs dense max abs diff (N=64): {err:.2e}")
    protocol = {"batch": args.batch, "d": args.d, "heads": args.heads, "top_k": args.k, "sigma": args.sigma,
                "eps": 0.01, "rows": args.rows, "reps": args.reps, "threads": args.threads,
                "timed": "forward + backward of attention incl. rab bias; PGSA also relevance, Top-K, windows",
                "memory": "CPU: peak RSS growth of a forked child per config; CUDA: max_memory_allocated",
                "candidates_per_sample": 1}
    for device in devices:
        rows: dict[str, Any] = {}
        print(f"\n[{device}] B={args.batch} d={args.d} heads={args.heads} K={args.k} sigma={args.sigma} "
              f"rows={args.rows} threads={args.threads}")
        print(f"{'N':>6} {'dense ms':>10} {'pgsa ms':>10} {'speed-up':>9} {'dense MB':>10} {'pgsa MB':>9} "
              f"{'mem ratio':>9} {'kept':>7}")
        for N in ns:
            if device == "cpu":
                dense, sparse = measure_cpu("dense", N, args), measure_cpu("pgsa", N, args)
            else:
                dense, sparse = measure("dense", N, args, device), measure("pgsa", N, args, device)
            speed = dense["ms"] / sparse["ms"]
            mem = dense["peak_mb"] / max(sparse["peak_mb"], 1e-3)
            rows[str(N)] = {"dense_ms": round(dense["ms"], 2), "pgsa_ms": round(sparse["ms"], 2),
                            "speedup": round(speed, 2), "dense_peak_mb": round(dense["peak_mb"], 1),
                            "pgsa_peak_mb": round(sparse["peak_mb"], 1), "memory_ratio": round(mem, 2),
                            "kept_columns": round(sparse["kept_columns"], 1)}
            print(f"{N:>6} {dense['ms']:>10.1f} {sparse['ms']:>10.1f} {speed:>8.2f}x {dense['peak_mb']:>10.1f} "
                  f"{sparse['peak_mb']:>9.1f} {mem:>8.2f}x {sparse['kept_columns']:>7.1f}", flush=True)
        path = write_result(f"pgsa__{device}", {
            "dataset": "synthetic tensors", "model": "pgsa", "protocol": {**protocol, "device": device},
            "metrics": {"by_history_length": rows, "max_abs_diff_gather_vs_dense": err},
        })
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
