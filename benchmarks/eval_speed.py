"""Full-catalogue evaluation: the fast path against the evaluation it replaced, in one run.

The reference is genrec's evaluation before the speed work, kept here verbatim in spirit: queries in their own
order (so a batch pads every history to its longest), every position encoded, one dense (B, N+1) score matrix.
The fast path (``genrec.eval.retrieval.rank_targets``) batches queries of similar length, encodes the last
position where the model allows it, and scores the catalogue in bounded blocks. Both run on the same model,
interleaved, on every thread; the script prints seconds per full validation, the ratio, the padding share of
the encoded tokens, and how many ranks differ. ``--million`` also scores a synthetic 1,000,000-item catalogue in
a child process and reports its peak memory.

    python benchmarks/eval_speed.py --run runs/sasrec-beauty-seed1            # a trained run folder
    python benchmarks/eval_speed.py --recipe configs/sasrec-beauty.yaml --data data_cache/beauty  # untrained
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import write_result  # noqa: E402

from genrec.data.sequences import make_history_batch  # noqa: E402
from genrec.eval.metrics import metrics_from_ranks  # noqa: E402
from genrec.eval.retrieval import history_of, query_batches, rank_targets  # noqa: E402
from genrec.models.base import Retriever  # noqa: E402


@torch.no_grad()
def reference_ranks(model, seqs, samples, exclude: bool, bs: int) -> tuple[np.ndarray, int]:
    """The evaluation before the fast path, and the number of tokens it encodes."""
    model.eval()
    table = model.item_table()
    ranks, tokens = [], 0
    for a in range(0, len(samples), bs):
        rows, ends = samples.rows[a : a + bs], samples.hist_end[a : a + bs]
        hist, times = zip(*(history_of(seqs, int(r), int(e)) for r, e in zip(rows, ends)))
        pos = seqs.offsets[rows] + ends
        batch = make_history_batch(list(hist), list(times), seqs.timestamps[pos], model.max_len)
        tokens += batch.items.numel()
        s = Retriever.encode(model, batch) @ table.T  # (B, N+1)
        s[:, 0] = -torch.inf
        if exclude:
            r = np.repeat(np.arange(len(hist)), [len(h) for h in hist])
            s[torch.as_tensor(r), torch.as_tensor(np.concatenate(hist))] = -torch.inf
        ts = s.gather(1, torch.as_tensor(seqs.items[pos].astype(np.int64))[:, None])
        ranks.append((s > ts).sum(1).numpy())
    return np.concatenate(ranks), tokens


def load(args):
    """(model, seqs, split, cfg, dataset name) from a run folder, or an untrained model from a recipe."""
    if args.run:
        from genrec.runs.open import open_run

        lr = open_run(args.run)
        return lr.model, lr.seqs, lr.data, lr.cfg, lr.dataset.manifest.get("name")
    from genrec.config import load_config
    from genrec.data.loading import load_data
    from genrec.train.trainer import Trainer

    cfg = load_config(args.recipe, [*args.set, f"data.path={args.data}", "train.progress=false",
                                    "train.tensorboard=false"])
    ds = load_data(cfg.data)
    tr = Trainer(cfg, tempfile.mkdtemp(prefix="genrec-eval-speed-"), ds, resume=False)
    return tr.model, tr.seqs, tr.split, cfg, ds.manifest.get("name")


def million_child(n_items: int, n_queries: int, d: int) -> None:
    """Score ``n_queries`` random states against an ``n_items`` catalogue; print peak RSS (MiB) as JSON."""
    from genrec.eval.retrieval import catalogue_ranks

    torch.manual_seed(0)
    table = torch.nn.functional.normalize(torch.randn(n_items + 1, d), dim=-1)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    rng = np.random.default_rng(0)
    t0 = time.perf_counter()
    for _ in range(0, n_queries, 256):
        states = torch.nn.functional.normalize(torch.randn(256, d), dim=-1)
        seen = (np.repeat(np.arange(256), 20), rng.integers(1, n_items + 1, 256 * 20))
        catalogue_ranks(states, table, rng.integers(1, n_items + 1, 256), seen, k=10)
    secs = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"items": n_items, "queries": n_queries, "d": d, "seconds": secs, "peak_rss_mib": peak,
                      "rss_before_scoring_mib": base, "dense_score_matrix_mib": 256 * (n_items + 1) * 4 / 2**20}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", help="a trained run folder (its model, data and split)")
    ap.add_argument("--recipe", default="configs/sasrec-beauty.yaml")
    ap.add_argument("--data", help="prepared dataset for --recipe (untrained model)")
    ap.add_argument("--set", nargs="*", default=[])
    ap.add_argument("--which", default="valid", choices=["valid", "test"])
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default: every core)")
    ap.add_argument("--million", action="store_true", help="also time a 1M-item synthetic catalogue (peak RSS)")
    ap.add_argument("--million-child", nargs=3, type=int, help=argparse.SUPPRESS)
    ap.add_argument("--name", default=None)
    args = ap.parse_args()
    if args.million_child:
        return million_child(*args.million_child)
    if not args.run and not args.data:
        ap.error("give --run RUN_DIR or --data DATASET (with --recipe)")
    if args.threads:
        torch.set_num_threads(args.threads)
    model, seqs, split, cfg, dname = load(args)
    samples, bs, excl = getattr(split, args.which), cfg.eval.batch_size, cfg.eval.exclude_history
    rank_targets(model, seqs, samples, excl, bs)  # warm-up
    ref_t, fast_t = [], []
    for _ in range(args.reps):  # interleaved, so both see the same machine
        t0 = time.perf_counter()
        ref, ref_tokens = reference_ranks(model, seqs, samples, excl, bs)
        ref_t.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        fast = rank_targets(model, seqs, samples, excl, bs)
        fast_t.append(time.perf_counter() - t0)
    real = int(np.minimum(samples.hist_end, model.max_len).sum())
    fast_tokens = sum(qb.batch.items.numel() for qb in query_batches(seqs, samples, model.max_len, bs))
    ks = cfg.eval.ks
    m_ref, m_fast = metrics_from_ranks(ref, ks), metrics_from_ranks(fast, ks)
    r, f = statistics.median(ref_t), statistics.median(fast_t)
    diff = int((ref != fast).sum())
    print(f"{cfg.model['name']} on {dname}, {len(samples)} {args.which} queries x {model.num_items} items, "
          f"exclude_history={excl}, {torch.get_num_threads()} threads")
    print(f"  reference evaluation: {r:.2f} s (median of {args.reps}); padding {1 - real / ref_tokens:.1%} of "
          f"{ref_tokens} encoded tokens")
    print(f"  fast evaluation:      {f:.2f} s; padding {1 - real / fast_tokens:.1%} of {fast_tokens} tokens")
    print(f"  speed-up {r / f:.1f}x; ranks differing: {diff} of {len(ref)} "
          f"(largest difference {int(np.abs(ref - fast).max()) if len(ref) else 0})")
    print("  metrics reference / fast: " + ", ".join(f"{k} {m_ref[k]:.4f}/{m_fast[k]:.4f}" for k in m_ref))
    rec = {"dataset": dname, "model": cfg.model["name"], "recipe": args.run or args.recipe,
           "protocol": {"evaluated_on": args.which, "candidates": "full catalogue", "exclude_history": excl,
                        "batch_size": bs, "history_window": model.max_len, "threads": torch.get_num_threads()},
           "seeds": None, "metrics": {
               "seconds_reference": r, "seconds_fast": f, "speedup": r / f, "seconds_reference_all": ref_t,
               "seconds_fast_all": fast_t, "padding_share_reference": 1 - real / ref_tokens,
               "padding_share_fast": 1 - real / fast_tokens, "ranks_differing": diff, "queries": len(ref),
               "metrics_reference": m_ref, "metrics_fast": m_fast}}
    if args.million:
        out = subprocess.run([sys.executable, __file__, "--million-child", "1000000", "2048", "64"],
                             capture_output=True, text=True, check=True).stdout
        rec["metrics"]["million_items"] = mil = json.loads(out.strip().splitlines()[-1])
        print(f"  1,000,000-item catalogue, {mil['queries']} queries: {mil['seconds']:.1f} s, peak RSS "
              f"{mil['peak_rss_mib']:.0f} MiB ({mil['rss_before_scoring_mib']:.0f} before scoring; one dense "
              f"256-query score matrix alone would be {mil['dense_score_matrix_mib']:.0f} MiB)")
    name = args.name or f"eval-speed__{cfg.model['name']}__{dname}"
    print(f"wrote {write_result(name, rec)}")


if __name__ == "__main__":
    main()
