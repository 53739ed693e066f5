"""Regenerate (or check) the tables of BENCHMARKS.md and README.md from the JSON records in benchmarks/results/.

    python benchmarks/report.py            # print the tables
    python benchmarks/report.py --write    # rewrite the generated blocks of BENCHMARKS.md
    python benchmarks/report.py --check    # exit 1 if BENCHMARKS.md disagrees with the JSON records

A generated block sits between `<!-- table:NAME -->` and `<!-- /table:NAME -->` markers.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
DOCS = [ROOT / "BENCHMARKS.md", ROOT / "README.md"]


def load() -> list[dict]:
    out = []
    for p in sorted(RESULTS.glob("*.json")):
        rec = json.loads(p.read_text())
        rec["_file"] = p.name
        out.append(rec)
    return out


def fmt(mean: float, std: float | None) -> str:
    return f"{mean:.4f}" if not std else f"{mean:.4f} ± {std:.4f}"


def accuracy_table(recs: list[dict], dataset: str | tuple[str, ...], cols: list[str], tie_order: bool = False) -> str:
    """One row per record of ``dataset`` (or of several preparations of one log, e.g. ML-1M in both tie orders,
    with ``tie_order`` adding the column that tells them apart)."""
    names = (dataset,) if isinstance(dataset, str) else dataset
    rows = [r for r in recs if r.get("dataset") in names and "metrics_mean" in r
            and all(c in r["metrics_mean"] for c in cols)  # retrieval/generation records (not CTR ones)
            and not (r.get("model") == "popularity" and r["protocol"].get("exclude_history") is False)]
    if not rows:
        return "(no results yet)"
    tie = " tie order |" if tie_order else ""
    head = f"| model | recipe |{tie} seeds | " + " | ".join(cols) + " | best epochs | train s/seed | record |"
    sep = "|" + " --- |" * (len(cols) + 6 + tie_order)
    lines = [head, sep]
    for r in sorted(rows, key=lambda r: (r["model"], r["recipe"], r["protocol"].get("tie_order", "stable") != "stable")):
        m, s = r["metrics_mean"], r["metrics_std"]
        eps = ",".join(str(x["best_epoch"]) + ("*" if x.get("finished") is False else "") for x in r["per_seed"])
        secs = r.get("train_seconds_per_seed") or r.get("wall_seconds_per_seed")
        wall = sum(secs) / len(secs)
        recipe = "(most popular, history removed)" if r["model"] == "popularity" else f"`{Path(r['recipe']).name}`"
        order = f" {r['protocol'].get('tie_order', '-')} |" if tie_order else ""
        lines.append(f"| {r['model']} | {recipe} |{order} {len(r['seeds'])} | "
                     + " | ".join(fmt(m[c], s[c]) for c in cols)
                     + f" | {eps} | {wall:.0f} | `{r['_file']}` |")
    return "\n".join(lines)


def other_exclusion_table(recs: list[dict], dataset: str, cols: list[str]) -> str:
    rows = [r for r in recs if r.get("dataset") == dataset and "metrics_other_exclusion_mean" in r]
    lines = ["| model | recipe | exclude_history | " + " | ".join(cols) + " |", "|" + " --- |" * (len(cols) + 3)]
    for r in sorted(rows, key=lambda r: (r["model"], r["recipe"])):
        o = r["metrics_other_exclusion_mean"]
        lines.append(f"| {r['model']} | `{Path(r['recipe']).name}` | {o['exclude_history']} | "
                     + " | ".join(f"{o['metrics'][c]:.4f}" for c in cols) + " |")
    return "\n".join(lines)


def speed_table(recs: list[dict]) -> str:
    rows = [r for r in recs if r["_file"].startswith("speed__")]
    lines = ["| model | dataset | ms/step | steps/epoch | s/epoch | s/full eval (users) | GFLOP/step | "
             "achieved GFLOP/s | matmul GFLOP/s | fraction | record |", "|" + " --- |" * 11]
    for r in rows:
        m = r["metrics"]
        lines.append(f"| {r['model']} | {r['dataset']} | {m['ms_per_step_median']:.1f} | {m['steps_per_epoch']} | "
                     f"{m['seconds_per_epoch']:.1f} | {m['seconds_per_full_eval']:.1f} ({m['eval_users']}) | "
                     f"{m['train_gflop_per_step']:.2f} | {m['train_gflops_achieved']:.1f} | "
                     f"{m['matmul_gflops_measured']:.1f} | {m['fraction_of_matmul_rate']:.1%} | `{r['_file']}` |")
    return "\n".join(lines)


def serve_table(recs: list[dict]) -> str:
    rows = [r for r in recs if r["_file"].startswith("serve__")]
    lines = ["| model | dataset | concurrency | batched req/s | p50 ms | p99 ms | mean batch | unbatched req/s | "
             "p50 ms | p99 ms | ratio | non-2xx (b / u) | record |", "|" + " --- |" * 13]
    for r in rows:
        m = r["metrics"]
        for c in r["protocol"]["concurrency"]:
            b, u = m["batched"][f"c{c}"], m["unbatched"][f"c{c}"]
            ratio = m["throughput_ratio_batched_over_unbatched"][f"c{c}"]
            lines.append(f"| {r['model']['name']} | {r['dataset']['name']} | {c} | {b['throughput_rps']:.1f} | "
                         f"{b['p50_ms']:.1f} | {b['p99_ms']:.1f} | {b['mean_batch_size']} | {u['throughput_rps']:.1f} | "
                         f"{u['p50_ms']:.1f} | {u['p99_ms']:.1f} | {ratio:.2f}x | "
                         f"{sum(b['non_2xx'].values())} / {sum(u['non_2xx'].values())} | `{r['_file']}` |")
    return "\n".join(lines)


def pgsa_table(recs: list[dict]) -> str:
    rows = [r for r in recs if r["_file"].startswith("pgsa__")]
    lines = ["| device | N | dense ms | PGSA ms | speed-up | dense peak MB | PGSA peak MB | kept columns | record |",
             "|" + " --- |" * 9]
    for r in rows:
        dev = r["_file"][len("pgsa__"):-len(".json")]
        for n, m in r["metrics"]["by_history_length"].items():
            lines.append(f"| {dev} | {n} | {m['dense_ms']:.1f} | {m['pgsa_ms']:.1f} | {m['speedup']:.2f}x | "
                         f"{m['dense_peak_mb']:.0f} | {m['pgsa_peak_mb']:.0f} | {m['kept_columns']:.0f} | `{r['_file']}` |")
    return "\n".join(lines)


def pgsa_step_table(recs: list[dict]) -> str:
    rows = [r for r in recs if r["_file"].startswith("pgsa-step__")]
    lines = ["| N | dense step s | PGSA step s | speed-up | record |", "|" + " --- |" * 5]
    for r in rows:
        for n, m in r["metrics"]["by_history_length"].items():
            lines.append(f"| {n} | {m['dense_s']:.3f} | {m['pgsa_s']:.3f} | {m['speedup']:.2f}x | `{r['_file']}` |")
    return "\n".join(lines)


def cost_curve_table(recs: list[dict]) -> str:
    rows = [r for r in recs if r["_file"].startswith("cost-curve__")]
    lines = ["| L | HSTU s/step | SASRec s/step | HSTU / SASRec time | HSTU step MB | SASRec step MB | "
             "HSTU / SASRec step memory | record |", "|" + " --- |" * 8]
    for r in rows:
        for n, m in r["metrics"]["by_history_length"].items():
            lines.append(f"| {n} | {m['hstu_step_s']:.3f} | {m['sasrec_step_s']:.3f} | "
                         f"{m['step_ratio_hstu_over_sasrec']:.2f}x | {m['hstu_step_extra_mb']:.0f} | "
                         f"{m['sasrec_step_extra_mb']:.0f} | {m['step_memory_ratio_hstu_over_sasrec']:.2f}x | "
                         f"`{r['_file']}` |")
    return "\n".join(lines)


def sid_health_table(recs: list[dict]) -> str:
    """One block per distinct SID table: GLASS's variants share one table per dataset, listed once."""
    tables: dict[tuple, list[dict]] = {}
    for r in recs:
        if r.get("sid_health") and ("metrics_mean" in r or r["_file"].startswith("gamer-")):
            key = (r["dataset"], r["model"], json.dumps(r["sid_health"], sort_keys=True))
            tables.setdefault(key, []).append(r)
    lines = ["| dataset | model | SID level | codebook | usage | entropy bits | prefixes | max items/prefix | record |",
             "|" + " --- |" * 9]
    for (ds, model, _), group in tables.items():
        h = group[0]["sid_health"]
        more = f" (+{len(group) - 1} more with this table)" if len(group) > 1 else ""
        ref = f"`{group[0]['_file']}`{more}"
        for lv in h["levels"]:
            lines.append(f"| {ds} | {model} | {lv['level'] + 1} | {lv['codebook_size']} | "
                         f"{lv['usage']:.1%} | {lv['entropy_bits']:.2f} | {lv['num_prefixes']} | "
                         f"{lv['max_items_per_prefix']} | {ref} |")
        lines.append(f"| {ds} | {model} | collisions before the extra level | | "
                     f"{h['collision_rate']:.1%} | | | | {ref} |")
    return "\n".join(lines) if tables else "(no results yet)"


def beam_table(recs: list[dict], trained: bool) -> str:
    rows = [r for r in recs if r["_file"].startswith("beam__") and bool(r["protocol"].get("decoder")) == trained]
    lines = ["| decoder | device | users per call | constrained ms/user | unconstrained ms/user | "
             "invalid SIDs constrained | invalid SIDs unconstrained | record |", "|" + " --- |" * 8]
    for r in rows:
        m = r["metrics"]
        dec = r["model"] if r["protocol"].get("decoder") else "random MLP step decoder"
        for b in r["protocol"]["batches"]:
            lines.append(f"| {dec} | {r['protocol']['device']} | {b} | {m[f'ms_per_user_constrained_batch{b}']:.2f} | "
                         f"{m[f'ms_per_user_unconstrained_batch{b}']:.2f} | "
                         f"{m[f'invalid_rate_constrained_batch{b}']:.1%} | {m[f'invalid_rate_unconstrained_batch{b}']:.1%} "
                         f"| `{r['_file']}` |")
    return "\n".join(lines)


def ctr_table(recs: list[dict]) -> str:
    rows = [r for r in recs if r["_file"].startswith("ctr-")]
    lines = ["| dataset | model | recipe | overrides | seeds | AUC | GAUC | LogLoss | test impressions | record |",
             "|" + " --- |" * 10]
    for r in sorted(rows, key=lambda r: (r["dataset"], r["model"], r["_file"])):
        m, sp = r["metrics"], r.get("spread", {})
        ov = " ".join(o for o in (r.get("overrides") or []) if o.startswith("model.")) or "-"
        lines.append(f"| {r['dataset']} | {r['model']} | `{Path(r['recipe']).name}` | {ov} | {len(r['seeds'])} | "
                     + " | ".join(fmt(m[c], sp.get(c)) for c in ("auc", "gauc", "logloss"))
                     + f" | {r.get('test_impressions', '')} | `{r['_file']}` |")
    return "\n".join(lines) if rows else "(no results yet)"


GAMER_MODES = ("behavior_history", "history", "all", "behavior")  # leak-free default first, the leaking mode last
GAMER_MODELS = ("gamer", "tiger", "sasrec", "recency")  # GAMER and its ablations, then the baselines


def _gamer_order(r: dict) -> tuple:
    """Rows grouped by dataset and candidate mode; within a mode GAMER first (its plain recipe before the
    ablations and overridden runs), then TIGER, SASRec, recency."""
    mode, model = r["protocol"].get("candidate_mode", ""), r.get("model", "")
    return (r["dataset"], GAMER_MODES.index(mode) if mode in GAMER_MODES else len(GAMER_MODES), mode,
            GAMER_MODELS.index(model) if model in GAMER_MODELS else len(GAMER_MODELS),
            bool(r.get("ablation") or r.get("overrides")), r["_file"])


def gamer_table(recs: list[dict]) -> str:
    """Multi-behavior track (benchmarks/gamer.py): one row per variant, the headline behavior (purchase) first."""
    rows = [r for r in recs if r["_file"].startswith("gamer-")]
    if not rows:
        return "(no results yet)"
    behaviors = rows[0].get("behaviors") or list(rows[0]["metrics"])
    head, others = behaviors[0], [b for b in behaviors[1:] if b != "merged"]
    cols = [(head, c) for c in ("hit@5", "hit@10", "recall@10", "ndcg@10")]
    cols += [(b, "hit@10") for b in others] + [("merged", "ndcg@10")]
    lines = ["| dataset | variant | model | candidates | seeds | " + " | ".join(f"{b} {c}" for b, c in cols)
             + f" | {head} users | {head} targets in candidates | train s/seed | record |",
             "|" + " --- |" * (len(cols) + 9)]
    for r in sorted(rows, key=_gamer_order):
        m, sp = r["metrics"], r.get("spread", {})
        secs = [s for s in r.get("train_seconds_per_seed") or [] if s is not None]
        seeds = "1 (deterministic)" if r.get("deterministic") else str(len(r["seeds"]))
        vals = [fmt(m[b][c], sp.get(b, {}).get(c)) if c in m.get(b, {}) else "-" for b, c in cols]
        share = r.get("counts", {}).get(head, {}).get("targets_in_candidates", float("nan"))
        lines.append(f"| {r['dataset']} | {r['variant']} | {r['model']} | {r['protocol'].get('candidate_mode', '')} | "
                     f"{seeds} | " + " | ".join(vals)
                     + f" | {r.get('num_users', {}).get(head, '')} | {share:.1%} | {sum(secs) / len(secs) if secs else 0:.0f} | "
                     f"`{r['_file']}` |")
    return "\n".join(lines)


def repeat_table(recs: list[dict]) -> str:
    """benchmarks/repeat_breakdown.py: each variant's metrics on all targets, on those the user met before the
    session (repeat) and on the rest (new); users = queries with a target in that part."""
    lines = ["| dataset | variant | model | recall@10 | NDCG@10 | repeat recall@10 | repeat NDCG@10 | repeat users | "
             "new recall@10 | new NDCG@10 | new users | record |", "|" + " --- |" * 12]
    for r in (r for r in recs if r["_file"].startswith("repeat-breakdown__")):
        for v in r["metrics"]:  # one row per variant
            cells = []
            for part in ("all", "repeat", "new"):
                p = v[part]
                cells += [f"{p.get(c, float('nan')):.4f}" for c in ("recall@10", "ndcg@10")]
                cells += [] if part == "all" else [str(p["num_users"])]
            lines.append(f"| {r['dataset']} | {v['variant']} | {v['model']} | " + " | ".join(cells)
                         + f" | `{r['_file']}` |")
    return "\n".join(lines) if len(lines) > 2 else "(no results yet)"


def rerank_table(recs: list[dict]) -> str:
    """Retrieval track, two stages: HSTU's top-200 re-scored by HPGR; both stages on the same test users."""
    rows = [r for r in recs if r["_file"].startswith("rerank-")]
    cols = ["recall@5", "ndcg@5", "recall@10", "ndcg@10", "recall@20", "ndcg@20"]
    lines = ["| dataset | variant | stage | seeds | " + " | ".join(cols) + " | target in top-200 | record |",
             "|" + " --- |" * (len(cols) + 6)]
    for r in sorted(rows, key=lambda r: (r["dataset"], r["_file"])):
        for stage, key in (("HSTU alone", "retriever"), ("HSTU + HPGR re-rank", "rerank")):
            m, sd = r[f"{key}_mean"], r[f"{key}_std"]
            lines.append(f"| {r['dataset']} | {r['variant']} | {stage} | {len(r['seeds'])} | "
                         + " | ".join(fmt(m[c], sd.get(c)) for c in cols)
                         + f" | {r['target_in_top_k_mean']:.4f} | `{r['_file']}` |")
    return "\n".join(lines) if rows else "(no results yet)"


def glass_cost_table(recs: list[dict]) -> str:
    """GLASS inference cost against TIGER per long-history length (benchmarks/glass_cost.py)."""
    rows = [r for r in recs if r["_file"].startswith("glass_cost__")]
    lines = ["| device | long history | TIGER ms/user | + SID-Tier ms (x) | + hard search ms (x) | GLASS ms (x) "
             "| SID-Tier histogram ms | record |", "|" + " --- |" * 8]
    for r in rows:
        for n, m in sorted(r["metrics"]["by_long_history_length"].items(), key=lambda kv: int(kv[0])):
            lines.append(
                f"| {r['protocol'].get('device', 'cpu')} | {int(n)} | {m['tiger_cpu_ms_per_user']:.1f} | "
                f"{m['glass_tier_cpu_ms_per_user']:.1f} ({m['glass_tier_over_tiger']:.2f}) | "
                f"{m['glass_search_cpu_ms_per_user']:.1f} ({m['glass_search_over_tiger']:.2f}) | "
                f"{m['glass_cpu_ms_per_user']:.1f} ({m['glass_over_tiger']:.2f}) | "
                f"{m['sid_tier_histogram_cpu_ms_per_user']:.2f} | `{r['_file']}` |")
    return "\n".join(lines) if rows else "(no results yet)"


def glass_table(recs: list[dict]) -> str:
    """GLASS and its baselines / ablations (one generator class with switches), Hit and NDCG at 1, 5, 10, 20."""
    cols = ["hr@1", "hr@5", "hr@10", "hr@20", "ndcg@1", "ndcg@5", "ndcg@10", "ndcg@20"]
    rows = [r for r in recs if r.get("model") == "glass" and "metrics_mean" in r
            and all(c in r["metrics_mean"] for c in cols)]
    if not rows:
        return "(no results yet)"
    datasets = {r["dataset"] for r in rows}  # + the popularity floor on the generators' protocol (history kept)
    rows += [r for r in recs if r.get("model") == "popularity" and r["dataset"] in datasets
             and r["protocol"].get("exclude_history") is False]
    lines = ["| dataset | recipe | ablation | overrides | seeds | " + " | ".join(cols)
             + " | train s/seed | trained on | record |", "|" + " --- |" * (len(cols) + 8)]
    for r in sorted(rows, key=lambda r: (r["dataset"], r["model"] == "glass", r["recipe"], r.get("ablation") or "")):
        m, s = r["metrics_mean"], r["metrics_std"]
        secs = r.get("train_seconds_per_seed") or [0.0]
        abl = " + ".join(f"`{Path(a).name}`" for a in r["ablation"].split(" + ")) if r.get("ablation") else "-"
        recipe = "most popular" if r["model"] == "popularity" else f"`{Path(r['recipe']).name}`"
        sets = ", ".join(f"`{o}`" for o in r.get("overrides") or []) or "-"
        lines.append(f"| {r['dataset']} | {recipe} | {abl} | {sets} | {len(r['seeds'])} | "
                     + " | ".join(fmt(m[c], s[c]) for c in cols)
                     + f" | {sum(secs) / len(secs):.0f} | {trained_on(r)} | `{r['_file']}` |")
    return "\n".join(lines)


def trained_on(rec: dict) -> str:
    """Where a record's seeds trained: seconds from a GPU and from the CPU are not comparable.

    Seeds without a ``device`` predate that field and ran on the machine that wrote the record.
    """
    here = rec.get("machine", {}).get("gpu") or "cpu"
    devs = [s.get("device") or here for s in rec.get("per_seed") or [{}]]
    short = [d.replace("NVIDIA ", "").split(" ")[0] if d != "cpu" else d for d in devs]
    return ", ".join(f"{d} x{short.count(d)}" if len(set(short)) > 1 else d for d in dict.fromkeys(short))


def tables() -> dict[str, str]:
    recs = load()
    beauty_cols = ["recall@5", "ndcg@5", "recall@10", "ndcg@10"]
    ml_cols = ["hr@10", "ndcg@10", "hr@50", "ndcg@50", "hr@200", "ndcg@200", "mrr"]
    return {
        "beauty": accuracy_table(recs, "beauty", beauty_cols),
        "glass-cost": glass_cost_table(recs),
        "glass": glass_table(recs),
        "beauty-other": other_exclusion_table(recs, "beauty", beauty_cols),
        "ml-100k": accuracy_table(recs, "ml-100k", ml_cols),
        "ml-1m": accuracy_table(recs, ("ml-1m", "ml-1m-hstu"), ml_cols, tie_order=True),
        "books": accuracy_table(recs, "books", ml_cols),
        "speed": speed_table(recs),
        "serve": serve_table(recs),
        "pgsa": pgsa_table(recs),
        "pgsa-step": pgsa_step_table(recs),
        "cost-curve": cost_curve_table(recs),
        "beam": beam_table(recs, trained=False),
        "beam-trained": beam_table(recs, trained=True),
        "sid-health": sid_health_table(recs),
        "ctr": ctr_table(recs),
        "gamer": gamer_table(recs),
        "repeat-breakdown": repeat_table(recs),
        "rerank": rerank_table(recs),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--write", action="store_true")
    ap.add_argument("--check", action="store_true")
    args = ap.parse_args()
    tabs = tables()
    if not (args.write or args.check):
        for k, v in tabs.items():
            print(f"## {k}\n{v}\n")
        return
    bad = []
    for doc in DOCS:
        bad += [f"{doc.name}:{n}" for n in sync(doc, tabs, args.write)]
    if args.check:
        if bad:
            print(f"docs disagree with benchmarks/results/ in: {', '.join(bad)}")
            sys.exit(1)
        print("BENCHMARKS.md and README.md match benchmarks/results/")


def sync(doc: Path, tabs: dict[str, str], write: bool) -> list[str]:
    """Compare (and with ``write`` replace) the generated blocks of one document; returns the stale ones."""
    text = doc.read_text()
    bad = []
    for name, table in tabs.items():
        pat = re.compile(rf"(<!-- table:{re.escape(name)} -->\n)(.*?)(<!-- /table:{re.escape(name)} -->)", re.S)
        m = pat.search(text)
        if not m:
            continue
        if m.group(2).strip() != table.strip():
            bad.append(name)
        text = text[: m.start(2)] + table.strip() + "\n" + text[m.end(2):]
    if write:
        doc.write_text(text)
        print(f"rewrote {doc.name}")
    return bad


if __name__ == "__main__":
    main()
