"""CTR metrics split by history length: where a longer window should help, does it?

A ranker with a history window of 200 and one with 2,048 differ only on impressions with more than 200 earlier
events. This script re-scores finished ranker run folders (``benchmarks/ctr.py``) on their test impressions with
their best weights and reports AUC, GAUC and LogLoss on all of them and on each history-length part (cut points
``--cuts``, counted in earlier events of the user, whatever the run's window). Nothing is retrained; the run
folders are read only. One record with a row per run goes to ``benchmarks/results/history-split__<dataset>.json``.

    python benchmarks/ctr_by_history.py --run runs/bench/ctr-ml-1m-hpgr-ml1m-feat-seed2/finetune \\
        --run runs/bench/ctr-ml-1m-hpgr-ml1m-feat-n2048-seed2 --cuts 200
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402
from repeat_breakdown import shown_command  # noqa: E402

from genrec.errors import GenrecError  # noqa: E402
from genrec.eval.ranking import predict_impressions, ranking_metrics  # noqa: E402
from genrec.models.base import RANKER  # noqa: E402
from genrec.nn.jagged import attention_budget  # noqa: E402
from genrec.nn.precision import torch_threads  # noqa: E402
from genrec.runs.open import open_run  # noqa: E402

METRICS = ("auc", "gauc", "logloss")


def parts(history: np.ndarray, cuts: list[int]) -> list[tuple[str, np.ndarray]]:
    """(label, boolean selector) for all impressions, then each history-length interval ``(lo, hi]``."""
    edges = [0, *cuts, None]
    out = [("all", np.ones_like(history, dtype=bool))]
    for lo, hi in zip(edges[:-1], edges[1:]):
        sel = (history > lo) if hi is None else (history > lo) & (history <= hi)
        out.append((f"> {lo}" if hi is None else f"{lo + 1 if lo else 0}-{hi}", sel))
    return out


def from_run(run_dir: Path, cuts: list[int]) -> dict[str, Any]:
    """The test metrics of one ranker run, on all its test impressions and on each history-length part."""
    run = open_run(run_dir)
    if run.kind != RANKER:
        raise GenrecError(f"{run_dir}: a {run.kind} run; this script reads ranker runs (benchmarks/ctr.py)")
    cfg, model, data = run.cfg, run.model, run.data
    idx = data.part("test")
    # scored as at the end of training
    with torch_threads(cfg.train.num_threads), attention_budget(cfg.train.attention_budget_mb):
        logits = predict_impressions(model, data, idx, cfg.data.max_len, cfg.ranking.eval_batch_size, run.features,
                                     packed=cfg.train.packed and model.packs)
    labels, users = data.imps.label[idx], data.imps.user_id[idx]
    history = data.imps.history_lengths[idx]
    rows = {}
    for label, sel in parts(history, cuts):
        m = ranking_metrics(labels[sel], logits[sel], users[sel], from_logits=True)
        rows[label] = {**{k: m[k] for k in METRICS if k in m}, "impressions": int(sel.sum()),
                       "mean_history": round(float(history[sel].mean()), 1) if sel.any() else None}
    return {"run": run_dir.name if run_dir.name != "finetune" else run_dir.parent.name, "model": cfg.model["name"],
            "seed": cfg.train.seed, "history_window": cfg.data.max_len, "dataset": Path(cfg.data.path).name,
            "data_fingerprint": run.record.get("data_fingerprint"), "parts": rows}


def table(rows: list[dict[str, Any]]) -> str:
    labels = list(rows[0]["parts"])
    head = "| run | window | " + " | ".join(f"{p} AUC / GAUC (impressions)" for p in labels) + " |"
    lines = [head, "| --- | --- | " + " | ".join("---" for _ in labels) + " |"]
    for r in rows:
        cells = [f"{r['parts'][p].get('auc', float('nan')):.4f} / {r['parts'][p].get('gauc', float('nan')):.4f} "
                 f"({r['parts'][p]['impressions']})" for p in labels]
        lines.append(f"| {r['run']} | {r['history_window']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", action="append", default=[], type=Path, required=True,
                    help="a finished ranker run folder (the finetune folder of a two-stage run; repeatable)")
    ap.add_argument("--cuts", default="200", help="history-length cut points, comma-separated (default 200)")
    ap.add_argument("--name", help="record name (default history-split__<dataset>)")
    args = ap.parse_args(argv)
    try:
        cuts = sorted(int(c) for c in args.cuts.split(","))
    except ValueError:
        ap.error(f"--cuts: comma-separated integers, got {args.cuts!r}")
    try:
        rows = []
        for run_dir in args.run:
            rows.append(from_run(run_dir, cuts))
            print(f"{rows[-1]['run']}: " + "  ".join(f"{p} auc {v.get('auc', float('nan')):.4f}"
                                                     for p, v in rows[-1]["parts"].items()), flush=True)
        fps = {r.pop("data_fingerprint") for r in rows}
        if len(fps) > 1:
            raise GenrecError(f"the runs were trained on different data (fingerprints {sorted(map(str, fps))})")
    except GenrecError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(table(rows))
    data_name = rows[0]["dataset"]
    name = args.name or f"history-split__{data_name}"
    rec = {"dataset": data_name, "data_fingerprint": fps.pop(),
           "protocol": {"evaluated_on": "test", "task": "ranking (CTR)",
                        "parts": f"impressions by the user's number of earlier events, cut at {cuts}"},
           "model": ",".join(dict.fromkeys(r["model"] for r in rows)), "metrics": rows}  # one row per run
    print(f"wrote {common.write_result(name, rec, shown_command(args.run))}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
