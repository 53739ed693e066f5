"""How sparse PGSA really is on a dataset: the share of real history columns its windows keep, per (K, sigma).

PGSA's speed and its effect on accuracy both depend on K' (the kept columns), not on K alone: each anchor
widens into a Gaussian window of about +-3 sigma positions, so on short histories a few anchors already cover
everything. This reads the test impressions of a trained HPGR ranker run and its frozen relevance table, and
prints the mean kept columns for each K and sigma (the run's own weights are not used otherwise).

    python benchmarks/pgsa_coverage.py --run runs/bench/ctr-ml-100k-hpgr-ml100k-seed1/finetune

Impressions are read in chunks of ``--chunk`` (the windows of a whole N = 2,048 test split would not fit in memory).
"""

from __future__ import annotations

import argparse

import torch

from genrec.data.impressions import make_impression_batch
from genrec.runs.open import open_run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", required=True, help="an hpgr ranker run folder (the finetune folder of a stage run)")
    ap.add_argument("--ks", default="8,16,32")
    ap.add_argument("--sigmas", default="0,2,4")
    ap.add_argument("--which", default="test", choices=["train", "valid", "test"])
    ap.add_argument("--chunk", type=int, default=1024, help="impressions per chunk")
    args = ap.parse_args()
    torch.set_num_threads(1)
    tr = open_run(args.run)
    model = tr.model
    if not hasattr(model, "column_weights"):
        raise SystemExit(f"{args.run}: model '{tr.cfg.model['name']}' has no PGSA (needs an hpgr run)")
    idx = tr.data.part(args.which)
    N = tr.cfg.data.max_len
    chunks = [make_impression_batch(tr.data.inter, tr.data.imps, idx[i : i + args.chunk], N)[:2]
              for i in range(0, len(idx), args.chunk)]
    lengths = torch.cat([b.lengths for b, _ in chunks]).clamp(min=1).float()  # (S,)
    print(f"{args.run}: {len(idx)} {args.which} impressions, history window N={N}, "
          f"mean real length {lengths.mean():.1f}")
    print(f"{'K':>4} {'sigma':>6} {'kept columns':>13} {'share kept':>11}")
    with torch.no_grad():
        for k in (int(x) for x in args.ks.split(",")):
            for s in (float(x) for x in args.sigmas.split(",")):
                model.cfg.top_k, model.cfg.sigma = k, s
                kept = torch.cat([(model.column_weights(b, c[:, 0]) > 0).sum(1).float() for b, c in chunks])  # (S,)
                print(f"{k:>4} {s:>6.1f} {kept.mean():>13.1f} {(kept / lengths).mean():>10.0%}")


if __name__ == "__main__":
    main()
