"""The most-popular list on the retrieval protocol: the floor every model's row should clear.

Ranks the whole catalogue by training-event counts (genrec.eval.popularity) on the same split and metrics as
benchmarks/accuracy.py. Deterministic, so one "seed". Generators (TIGER, GLASS) are evaluated without removing
history items, retrievers (SASRec, HSTU) with it: compare each with the matching row.

    python benchmarks/popularity.py --data data_cache/ml-100k                       # history removed
    python benchmarks/popularity.py --data data_cache/ml-100k --keep-history        # as the generators
    python benchmarks/popularity.py --data data_cache/beauty
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import write_result  # noqa: E402

from genrec.data.schema import load_dataset  # noqa: E402
from genrec.data.sequences import UserSequences  # noqa: E402
from genrec.data.splits import make_split  # noqa: E402
from genrec.errors import GenrecError  # noqa: E402
from genrec.eval.popularity import evaluate_popularity  # noqa: E402
from genrec.eval.record import tie_order  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, help="prepared dataset folder")
    ap.add_argument("--split", default="leave_one_out", choices=["leave_one_out"])
    ap.add_argument("--ks", type=int, nargs="+", default=[1, 5, 10, 20, 50, 200])
    ap.add_argument("--keep-history", action="store_true",
                    help="do not remove the user's earlier items from the list (the generators' protocol)")
    ap.add_argument("--name", help="results name (default popularity[-keephist]__<data folder>)")
    args = ap.parse_args()
    t0 = time.time()
    ds = load_dataset(args.data)
    seqs = UserSequences.from_interactions(ds.interactions)
    split = make_split(seqs, args.split)
    excl = not args.keep_history
    m = evaluate_popularity(seqs, split, ds.num_items, args.ks, excl)
    name = args.name or f"popularity{'' if excl else '-keephist'}__{Path(args.data).name}"
    metrics = {k: v for k, v in m.items() if k != "num_queries"}
    rec = {"dataset": ds.manifest.get("name", Path(args.data).name), "data_fingerprint": ds.fingerprint,
           "model": "popularity", "recipe": "-", "seeds": [0],
           "protocol": {"task": "next-item retrieval", "split": split.name, "evaluated_on": "test",
                        "candidates": "full catalogue", "exclude_history": excl, "ks": args.ks,
                        "num_queries": m["num_queries"],
                        "popularity_from": "training events of the split (before each row's train_end)",
                        "tie_order": tie_order(ds)},
           "metrics": metrics, "metrics_mean": metrics, "metrics_std": {k: 0.0 for k in metrics},
           "per_seed": [{"seed": 0, "metrics": m, "best_epoch": "-", "finished": True}],
           "train_seconds_per_seed": [0.0], "eval_seconds": round(time.time() - t0, 2)}
    path = write_result(name, rec)
    print(" ".join(f"{k}={metrics[k]:.4f}" for k in metrics if k.startswith(("hr@", "ndcg@"))))
    print(f"wrote {path}")


if __name__ == "__main__":
    try:
        main()
    except GenrecError as exc:  # bad recipe, data folder or override: one line, not a traceback
        sys.exit(f"error: {exc}")
