"""Where GLASS's learned fusion gate sits after training: does it mix the two cross-attentions or switch?

The gate g in (0, 1) is per decoder layer, position and model dimension (spec §4.5): Z = (1 - g) Z_short +
g Z_retrieved. This decodes a split of a finished run (trie-constrained beam, as evaluation does), records every
gate value, and prints their mean and quantiles; values piled at 0 and 1 mean a saturated sigmoid, which passes
little gradient. Compare with the fixed-gate ablation (glass-ml100k-gate05.yaml, g = 0.5 everywhere).

    python benchmarks/glass_gate.py --run runs/bench/glass-ml100k-cpu__ml-100k-seed1 --split valid
"""

from __future__ import annotations

import argparse
import sys

import torch

from genrec.errors import GenrecError
from genrec.eval.evaluate import evaluate_run
from genrec.runs.open import open_run

QUANTILES = (0.1, 0.25, 0.5, 0.75, 0.9)


def gate_summary(values: torch.Tensor) -> dict[str, float]:
    """Mean, share within 0.01 of either end, and quantiles of a flat tensor of gate values."""
    v = values.float().flatten()
    if v.numel() == 0:
        raise GenrecError("no gate values were recorded: the run has no learned gate or hard search is off")
    sample = v[torch.randperm(v.numel(), generator=torch.Generator().manual_seed(0))[:1_000_000]]  # quantile limit
    out = {"mean": float(v.mean()), "saturated": float(((v < 0.01) | (v > 0.99)).float().mean())}
    out.update({f"p{int(q * 100)}": float(x) for q, x in zip(QUANTILES, torch.quantile(sample, torch.tensor(QUANTILES)))})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", nargs="+", required=True, help="finished GLASS run folder(s)")
    ap.add_argument("--split", default="valid", choices=["valid", "test"])
    args = ap.parse_args()
    for run in args.run:
        loaded = open_run(run)
        model = loaded.model
        if getattr(model, "gates", None) is None:
            raise GenrecError(f"{run}: not a GLASS run with a learned gate")
        model.gate_log = []
        res = evaluate_run(loaded, args.split)
        s = gate_summary(torch.cat([g.flatten() for g in model.gate_log]))
        print(f"{run}: gate mean {s['mean']:.3f}, within 0.01 of 0 or 1: {s['saturated']:.1%}, "
              + ", ".join(f"p{int(q * 100)} {s[f'p{int(q * 100)}']:.3f}" for q in QUANTILES)
              + f" | {args.split} hr@10 {res['metrics']['hr@10']:.4f}")


if __name__ == "__main__":
    try:
        main()
    except GenrecError as exc:
        sys.exit(f"error: {exc}")
