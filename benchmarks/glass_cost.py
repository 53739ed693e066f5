"""Inference cost of GLASS's long-history routes against TIGER: ms per user at long-history lengths 100 .. 10000.

Every model reads the same 50-item short window with the same randomly initialised backbone; GLASS adds the
long window before it through SID-Tier (histogram + MLP token), semantic hard search (search, embedding and a
gated second cross-attention in every decoder layer, inside the trie-constrained beam search), or both. Timed:
``generate`` end to end (inputs, encoder, beam search) for a batch of users, median over repetitions, divided
by the batch size. The SID-Tier histogram alone (what an offline precompute would store) is timed too.
Process CPU time is the headline (single thread; on a shared machine wall time also counts waiting for a
core, it is recorded as well). Prints the per-user times and the ratios to TIGER measured in this run; writes
benchmarks/results/glass_cost__cpu.json.

    python benchmarks/glass_cost.py --threads 1
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import write_result  # noqa: E402

from genrec.models.glass import GLASS  # noqa: E402
from genrec.models.tiger import TIGER  # noqa: E402
from genrec.sid import SIDTable  # noqa: E402

VARIANTS = {  # name -> GLASS switches (None = the TIGER class itself)
    "tiger": None,
    "glass_tier": {"sid_tier": True, "hard_search": False},
    "glass_search": {"sid_tier": False, "hard_search": True},
    "glass": {"sid_tier": True, "hard_search": True},
}


def catalogue(args: argparse.Namespace) -> tuple[SIDTable, torch.Tensor]:
    """Random 3-level SIDs (+ collision level) and content vectors for ``args.items`` items."""
    rng = np.random.default_rng(0)
    ids = np.arange(1, args.items + 1)
    codes = rng.integers(0, args.codebook, size=(args.items, 3))
    table = SIDTable.build(ids, codes, [args.codebook] * 3, quantizer="random")
    vec = torch.from_numpy(rng.normal(size=(args.items, args.dim)).astype(np.float32))
    return table, vec


def build(variant: str, long_len: int, table: SIDTable, vec: torch.Tensor, args: argparse.Namespace) -> TIGER:
    base = {"d_model": args.d, "num_encoder_layers": args.layers, "num_decoder_layers": args.layers,
            "num_heads": args.heads, "head_dim": args.d // args.heads, "d_ff": 4 * args.d, "dropout": 0.0,
            "codebook_size": max(table.codebook_sizes), "sid_length": table.length, "num_user_buckets": 2000}
    torch.manual_seed(0)
    switches = VARIANTS[variant]
    if switches is None:
        model: TIGER = TIGER(TIGER.Config(**base), num_items=args.items, max_len=args.short)
    else:
        model = GLASS(GLASS.Config(**base, long_len=long_len, **switches), num_items=args.items, max_len=args.short)
    model.set_sid_table(table)
    if isinstance(model, GLASS) and model.needs_item_vectors:
        model.set_item_vectors(np.arange(1, args.items + 1), vec)
    return model.eval()


def timed(fn: Any, reps: int) -> tuple[float, float]:
    """Median wall and process-CPU time (ms) of ``fn()`` after one warm-up call.

    On a shared machine the wall time includes waiting for a core; the CPU time of this (single-threaded)
    process does not, so the ratios are taken from it.
    """
    fn()
    wall, cpu = [], []
    for _ in range(reps):
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return 1000 * statistics.median(wall), 1000 * statistics.median(cpu)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--long", default="100,1000,10000", help="long-history lengths")
    ap.add_argument("--short", type=int, default=50, help="short window (encoder input)")
    ap.add_argument("--users", type=int, default=4, help="users per generate call")
    ap.add_argument("--beam", type=int, default=20)
    ap.add_argument("--items", type=int, default=20_000)
    ap.add_argument("--codebook", type=int, default=64, help="codes per SID level (K_0 included)")
    ap.add_argument("--dim", type=int, default=64, help="content-vector width (SID-Tier prototypes)")
    ap.add_argument("--d", type=int, default=64, help="model width")
    ap.add_argument("--layers", type=int, default=2, help="encoder and decoder layers each")
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    table, vec = catalogue(args)
    rng = np.random.default_rng(1)
    rows: dict[str, Any] = {}
    print(f"B={args.users} users/call, beam {args.beam}, short window {args.short}, {args.items} items, "
          f"d={args.d}, {args.layers}+{args.layers} layers, threads={args.threads}")
    print("CPU ms per user (ratios to TIGER from CPU time):")
    print(f"{'long':>6} " + " ".join(f"{v + ' ms':>17}" for v in VARIANTS) + f" {'tier-only ms':>13} "
          + " ".join(f"{v + ' x':>15}" for v in list(VARIANTS)[1:]))
    with torch.no_grad():
        for n_long in [int(x) for x in args.long.split(",")]:
            hist = torch.from_numpy(rng.integers(1, args.items + 1, size=(args.users, args.short + n_long)))
            users = np.arange(args.users)
            ms, wall = {}, {}
            for v in VARIANTS:
                model = build(v, n_long, table, vec, args)
                h_in = hist[:, -args.short:] if VARIANTS[v] is None else hist  # a tensor is read as given
                w, c = timed(lambda m=model, h=h_in, u=users: m.generate(h, u, beam_size=args.beam), args.reps)
                wall[v], ms[v] = w / args.users, c / args.users
            tier_model = build("glass_tier", n_long, table, vec, args)
            long = hist[:, :n_long]
            tier_ms = timed(lambda m=tier_model, x=long: m.tier_table(x), args.reps)[1] / args.users
            ratio = {v: ms[v] / ms["tiger"] for v in list(VARIANTS)[1:]}
            rows[str(n_long)] = {**{f"{v}_cpu_ms_per_user": round(ms[v], 3) for v in VARIANTS},
                                 **{f"{v}_wall_ms_per_user": round(wall[v], 3) for v in VARIANTS},
                                 "sid_tier_histogram_cpu_ms_per_user": round(tier_ms, 3),
                                 **{f"{v}_over_tiger": round(r, 3) for v, r in ratio.items()}}
            print(f"{n_long:>6} " + " ".join(f"{ms[v]:>17.2f}" for v in VARIANTS) + f" {tier_ms:>13.3f} "
                  + " ".join(f"{ratio[v]:>14.2f}x" for v in ratio), flush=True)
    path = write_result("glass_cost__cpu", {
        "dataset": "synthetic catalogue (random SIDs and content vectors)", "model": "glass vs tiger",
        "protocol": {"users_per_call": args.users, "beam_size": args.beam, "short_window": args.short,
                     "items": args.items, "codebook": args.codebook, "content_dim": args.dim, "d_model": args.d,
                     "layers": args.layers, "heads": args.heads, "reps": args.reps, "threads": args.threads,
                     "timed": "generate() end to end (SID-Tier histogram + MLP, encoder, trie-constrained beam "
                              "search with hard search), median of reps, per user; weights randomly initialised",
                     "clock": "process CPU time (headline, ratios) and wall time",
                     "device": "cpu"},
        "metrics": {"by_long_history_length": rows},
    })
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
