"""Per-behavior evaluation of multi-behavior generators with multi-target metrics (spec §1.4, §3.7).

For behavior ``b`` a query is a user whose evaluated session holds ``b``; its targets are the set ``T`` of
items with ``b`` in that session and its ranked list is the beam list (beam search constrained to the
candidates of ``b``). With ``h_K = |top-K ∩ T|``:

- Hit@K = 1[h_K > 0];  Recall@K = h_K / |T|;
- NDCG@K = DCG@K / IDCG@K, DCG over the hit positions ``1/log2(rank + 1)``, IDCG over ``min(K, |T|)`` slots.

Per-behavior means are merged into one row weighted by each behavior's number of users.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np
import torch

from genrec.data.multibehavior import (
    BehaviorLevels,
    BehaviorQueries,
    SessionSplit,
    behavior_queries,
    candidate_items,
)
from genrec.errors import ConfigError

METRICS = ("hit", "recall", "ndcg")


def multi_target_metrics(ranked: np.ndarray | torch.Tensor, targets: Sequence[np.ndarray], ks: Sequence[int]
                         ) -> dict[str, np.ndarray]:
    """(Q, K) ranked item ids (-1 = empty slot) and Q target sets -> per-query ``hit@k``, ``recall@k``, ``ndcg@k``."""
    r = np.asarray(ranked.cpu() if isinstance(ranked, torch.Tensor) else ranked, dtype=np.int64)
    if r.ndim != 2 or r.shape[0] != len(targets):
        raise ConfigError(f"multi-target metrics: {r.shape} ranked lists for {len(targets)} target sets")
    bad = [k for k in ks if k > r.shape[1]]
    if bad:
        raise ConfigError(f"multi-target metrics: K={bad} exceed the {r.shape[1]} ranked items")
    rel = np.zeros(r.shape, dtype=bool)  # (Q, K) slot holds a target
    sizes = np.zeros(len(targets), dtype=np.int64)
    for q, tg in enumerate(targets):
        tg = np.unique(np.asarray(tg, dtype=np.int64))
        if tg.size == 0:
            raise ConfigError(f"multi-target metrics: query {q} has no target")
        sizes[q] = tg.size
        rel[q] = np.isin(r[q], tg) & (r[q] >= 0)
    gain = 1.0 / np.log2(np.arange(r.shape[1]) + 2.0)  # (K,) discount of rank 1, 2, ...
    out: dict[str, np.ndarray] = {}
    for k in ks:
        hits = rel[:, :k].sum(1)
        dcg = (rel[:, :k] * gain[:k]).sum(1)
        ideal = np.cumsum(gain[:k])[np.minimum(k, sizes) - 1]
        out[f"hit@{k}"] = (hits > 0).astype(np.float64)
        out[f"recall@{k}"] = np.minimum(hits, sizes) / sizes
        out[f"ndcg@{k}"] = dcg / ideal
    return out


def mean_metrics(per_query: dict[str, np.ndarray]) -> dict[str, float]:
    """Means of per-query metrics plus ``num_users``."""
    n = len(next(iter(per_query.values()))) if per_query else 0
    out = {k: float(v.mean()) if n else 0.0 for k, v in per_query.items()}
    out["num_users"] = n
    return out


def merge_behaviors(per_behavior: dict[str, dict[str, float]]) -> dict[str, float]:
    """User-weighted merge of per-behavior means (behaviors without users contribute nothing)."""
    total = sum(int(m.get("num_users", 0)) for m in per_behavior.values())
    keys = sorted({k for m in per_behavior.values() for k in m if k != "num_users"})
    merged: dict[str, float] = {}
    for k in keys:
        merged[k] = (sum(m[k] * m["num_users"] for m in per_behavior.values() if m.get("num_users"))
                     / total) if total else 0.0
    merged["num_users"] = total
    return merged


class MultiBehaviorEval(NamedTuple):
    per_behavior: dict[str, dict[str, float]]  # behavior name -> means + num_users + candidates
    merged: dict[str, float]  # user-weighted over the behaviors
    invalid_rate: float  # fraction of returned beams naming no item


def query_histories(split: SessionSplit, queries: BehaviorQueries, max_len: int) -> tuple[np.ndarray, np.ndarray]:
    """(Q, L) right-padded item and behavior histories: the last ``<= max_len`` events before each session."""
    w = split.seqs.windows(queries.rows, queries.hist_end, max_len)  # (Q, L)
    return w.take(split.seqs.items), w.take(split.behaviors)


@torch.no_grad()
def evaluate_behaviors(model: Any, split: SessionSplit, which: str = "test", behaviors: Sequence[int] | None = None,
                       ks: Sequence[int] = (1, 5, 10), beam_size: int = 20, batch_size: int = 128,
                       candidates: str = "behavior_history", min_history: int = 1, constrained: bool = True,
                       max_users: int = 0, seed: int = 0) -> MultiBehaviorEval:
    """Beam-search every (user, behavior) query of ``which`` and score it against its target set.

    ``model`` needs ``generate(items, behaviors, behavior, beam_size, k, candidates, constrained)`` and a
    ``max_len`` history window. ``max_users > 0`` evaluates a fixed seeded subset of each behavior's users.
    """
    if max(ks) > beam_size:
        raise ConfigError(f"eval ks {list(ks)} exceed the beam size {beam_size}; a generator ranks only its beams")
    names = split.levels.names
    todo = range(len(names)) if behaviors is None else behaviors
    per: dict[str, dict[str, float]] = {}
    invalid, total = 0, 0
    for b in todo:
        q = behavior_queries(split, which, int(b), min_history)
        if max_users and len(q) > max_users:
            keep = np.sort(np.random.default_rng([seed, int(b), 11]).choice(len(q), max_users, replace=False))
            q = q.subset(keep)
        if len(q) == 0:
            per[names[b]] = {"num_users": 0}
            continue
        cand = candidate_items(split, int(b), candidates, which)
        sets = q.target_sets()
        hist_items, hist_beh = query_histories(split, q, model.max_len)
        ranked = []
        for i in range(0, len(q), batch_size):
            res = model.generate(torch.from_numpy(hist_items[i:i + batch_size]),
                                 torch.from_numpy(hist_beh[i:i + batch_size]), int(b), beam_size=beam_size,
                                 k=beam_size, candidates=cand, constrained=constrained)
            ranked.append(res.items.cpu().numpy())
            invalid += int((~res.valid).sum())
            total += res.valid.numel()
        m = mean_metrics(multi_target_metrics(np.concatenate(ranked), sets, ks))
        m["num_candidates"] = int(cand.size)
        m["targets_in_candidates"] = float(np.mean([np.isin(s, cand).mean() for s in sets]))
        per[names[b]] = m
    merged = merge_behaviors({k: {kk: vv for kk, vv in v.items() if kk not in ("num_candidates",
                                                                           "targets_in_candidates")}
                              for k, v in per.items()})
    return MultiBehaviorEval(per, merged, invalid / max(total, 1))


def protocol_record(levels: BehaviorLevels, opts: Any, which: str, ranked_by: str, history_window: int,
                    ks: Sequence[int]) -> dict[str, Any]:
    """The protocol block every multi-behavior results record carries (GAMER, ablations and baselines alike).

    ``opts`` is the run's :class:`~genrec.config.MultiBehaviorConfig`; ``ranked_by`` says how the ranked list
    was made (beam search, retriever scores, recency), the candidate mode is always stamped next to it.
    """
    return {
        "task": "multi-behavior next-item generation",
        "split": f"session (gap {opts.session_gap}s): last session test, previous validation",
        "evaluated_on": which,
        "behavior_levels": levels.as_dict(),
        "headline_behavior": levels.names[levels.top],
        "targets": "distinct items with the behavior in the evaluated session (multi-target)",
        "candidates": f"{opts.candidates} ({ranked_by})",
        "candidate_mode": opts.candidates,
        "history_window": history_window,
        "min_history": opts.min_history,
        "ks": list(ks),
        "early_stopping": opts.early_stop,
    }


def metrics_record(ev: MultiBehaviorEval, levels: BehaviorLevels) -> dict[str, Any]:
    """Per-behavior means, the user-weighted merge, the headline (top-level behavior) and the invalid rate."""
    top = levels.names[levels.top]
    return {"per_behavior": ev.per_behavior, "merged": ev.merged, "headline": ev.per_behavior.get(top, {}),
            "invalid_rate": ev.invalid_rate}


def format_table(rec: dict[str, Any]) -> str:
    """Per-behavior metrics of a results record as a plain-text table (merged row last)."""
    per, ks = rec["metrics"]["per_behavior"], rec["protocol"]["ks"]
    cols = [f"{m}@{k}" for m in METRICS for k in ks]
    lines = ["behavior  users  " + "  ".join(f"{c:>9}" for c in cols)]
    for name, m in [*per.items(), ("merged", rec["metrics"]["merged"])]:
        vals = "  ".join(f"{m.get(c, float('nan')):>9.4f}" for c in cols)
        lines.append(f"{name:<8}  {int(m.get('num_users', 0)):>5}  {vals}")
    return "\n".join(lines)
