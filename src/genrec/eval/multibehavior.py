"""Per-behavior evaluation of multi-behavior generators with multi-target metrics (spec §1.4, §3.7).

For behavior ``b`` a query is a user whose evaluated session holds ``b``; its targets are the set ``T`` of
items with ``b`` in that session and its ranked list is the beam list (beam search constrained to the
candidates of ``b``). With ``h_K = |top-K ∩ T|``:

- Hit@K = 1[h_K > 0];  Recall@K = h_K / |T|;
- NDCG@K = DCG@K / IDCG@K, DCG over the hit positions ``1/log2(rank + 1)``, IDCG over ``min(K, |T|)`` slots.

Per-behavior means are merged into one row weighted by each behavior's number of users. Hit@K is the registry's
``hr`` family under its multi-target record name (:mod:`genrec.eval.metrics`).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict
from typing import Any, NamedTuple

import numpy as np
import torch

from genrec.config import RunConfig
from genrec.data.multibehavior import (
    BehaviorLevels,
    BehaviorQueries,
    MultiBehaviorConfig,
    SessionSplit,
    behavior_queries,
    candidate_items,
)
from genrec.data.schema import Dataset
from genrec.errors import ConfigError
from genrec.eval.metrics import METRICS as REGISTRY
from genrec.eval.metrics import MULTI_TARGET, select_metrics
from genrec.eval.record import check_split, results_record

RANKED_FAMILIES = ("hr", "recall", "ndcg")  # the per-query means; invalid_rate is one rate per evaluation
METRICS = tuple(REGISTRY[f].key(MULTI_TARGET) for f in RANKED_FAMILIES)  # hit, recall, ndcg


def multi_target_metrics(ranked: np.ndarray | torch.Tensor, targets: Sequence[np.ndarray], ks: Sequence[int],
                         select: Sequence[str] | None = None) -> dict[str, np.ndarray]:
    """(Q, K) ranked item ids (-1 = empty slot) and Q target sets -> per-query ``hit@k``, ``recall@k``, ``ndcg@k``
    (the families in ``select``, default all)."""
    fams = select_metrics(select, MULTI_TARGET)
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
        if "hr" in fams:
            out[f"{REGISTRY['hr'].key(MULTI_TARGET)}@{k}"] = (hits > 0).astype(np.float64)
        if "recall" in fams:
            out[f"recall@{k}"] = np.minimum(hits, sizes) / sizes
        if "ndcg" in fams:
            out[f"ndcg@{k}"] = dcg / ideal
    return out


def repeat_new_metrics(ranked: np.ndarray, targets: Sequence[np.ndarray], histories: Sequence[np.ndarray],
                       ks: Sequence[int], select: Sequence[str] | None = None) -> dict[str, dict[str, float]]:
    """The same metrics on two parts of each target set: ``repeat`` (items the user met before the session, in any
    behavior) and ``new`` (the rest); each part is averaged over the queries that have one.

    Why: where many purchases are of items the buyer carted before, a model can score well by repeating the
    history; the split says whether it also finds the items the user has not met, where history cannot help.
    """
    r = np.asarray(ranked, dtype=np.int64)  # (Q, K)
    out: dict[str, dict[str, float]] = {}
    seen = [np.isin(np.asarray(t, np.int64), np.asarray(h, np.int64)) for t, h in zip(targets, histories)]
    for part, want in (("repeat", True), ("new", False)):
        rows = [q for q, s in enumerate(seen) if (s == want).any()]
        sets = [np.asarray(targets[q], np.int64)[seen[q] == want] for q in rows]
        per = multi_target_metrics(r[rows], sets, ks, select) if rows else {}
        out[part] = mean_metrics(per) if rows else {"num_users": 0}
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


NOT_MERGED = ("num_candidates", "targets_in_candidates", "repeat", "new")  # per-behavior facts, not means


class MultiBehaviorEval(NamedTuple):
    per_behavior: dict[str, dict[str, float]]  # behavior name -> means + num_users + candidates
    merged: dict[str, float]  # user-weighted over the behaviors
    invalid_rate: float  # fraction of returned beams naming no item


def query_histories(split: SessionSplit, queries: BehaviorQueries, max_len: int) -> tuple[np.ndarray, np.ndarray]:
    """(Q, L) right-padded item and behavior histories: the last ``<= max_len`` events before each session."""
    w = split.seqs.windows(queries.rows, queries.hist_end, max_len)  # (Q, L)
    return w.take(split.seqs.items), w.take(split.behaviors)


def recent_distinct(hist: np.ndarray, n: int) -> np.ndarray:
    """(B, L) right-padded histories -> (B, n) their ``n`` most recent distinct items, newest first, 0-padded."""
    out = np.zeros((len(hist), n), dtype=np.int64)
    rev = np.asarray(hist)[:, ::-1]  # (B, L) newest first after the padding
    r, c = np.nonzero(rev > 0)  # row-major: within a row, newest first
    items = rev[r, c]
    order = np.lexsort((c, items, r))  # by row, then item, then recency: each (row, item)'s newest comes first
    ro, io = r[order], items[order]
    first = np.ones(len(order), dtype=bool)
    first[1:] = (ro[1:] != ro[:-1]) | (io[1:] != io[:-1])
    keep = np.sort(order[first])  # the newest occurrence of each item, back in (row, recency) order
    kr, ki = r[keep], items[keep]
    rank = np.arange(len(kr)) - np.searchsorted(kr, kr)  # place among the row's distinct items
    sel = rank < n
    out[kr[sel], rank[sel]] = ki[sel]
    return out


@torch.no_grad()
def evaluate_behaviors(model: Any, split: SessionSplit, which: str = "test", behaviors: Sequence[int] | None = None,
                       ks: Sequence[int] = (1, 5, 10), beam_size: int = 20, batch_size: int = 128,
                       candidates: str = "behavior_history", min_history: int = 1, constrained: bool = True,
                       max_users: int = 0, seed: int = 0, select: Sequence[str] | None = None,
                       by_length: bool = False, rescore_history: int = 0,
                       repeat_breakdown: bool = False) -> MultiBehaviorEval:
    """Beam-search every (user, behavior) query of ``which`` and score it against its target set (the metric
    families in ``select``, default all).

    ``model`` needs ``generate(items, behaviors, behavior, beam_size, k, candidates, constrained)`` and a
    ``max_len`` history window. ``max_users > 0`` evaluates a fixed seeded subset of each behavior's users.
    ``by_length`` searches queries in order of history length, each batch cut to its longest history, so a
    prompt carries little padding (the lists are the model's same lists; scores move by float rounding).
    ``rescore_history > 0`` also hands the model each query's most recent distinct history items (``known=``)
    to score exactly and merge into its list. ``repeat_breakdown`` adds each behavior's ``repeat`` and ``new``
    parts (:func:`repeat_new_metrics`; the whole history before the session decides which part a target is in).
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
        hist_items, hist_beh = query_histories(split, q, model.max_len)  # (Q, L) right-padded
        lengths = (hist_items > 0).sum(1)  # (Q,)
        order = np.argsort(lengths, kind="stable") if by_length else np.arange(len(q))
        ranked = np.zeros((len(q), beam_size), dtype=np.int64)  # (Q, beam) in query order
        for i in range(0, len(q), batch_size):
            rows = order[i:i + batch_size]
            width = max(int(lengths[rows].max()), 1) if by_length else hist_items.shape[1]
            extra = {"known": torch.from_numpy(recent_distinct(hist_items[rows], rescore_history))} \
                if rescore_history else {}
            res = model.generate(torch.from_numpy(hist_items[rows, :width]),
                                 torch.from_numpy(hist_beh[rows, :width]), int(b), beam_size=beam_size,
                                 k=beam_size, candidates=cand, constrained=constrained, **extra)
            ranked[rows] = res.items.cpu().numpy()
            invalid += int((~res.valid).sum())
            total += res.valid.numel()
        m = mean_metrics(multi_target_metrics(ranked, sets, ks, select))
        m["num_candidates"] = int(cand.size)
        m["targets_in_candidates"] = float(np.mean([np.isin(s, cand).mean() for s in sets]))
        if repeat_breakdown:
            w = split.seqs.windows(q.rows, q.hist_end, None)  # every event before the session
            seen = w.take(split.seqs.items)  # (Q, L) 0-padded; item ids start at 1
            m.update(repeat_new_metrics(ranked, sets, list(seen), ks, select))
        per[names[b]] = m
    merged = merge_behaviors({k: {kk: vv for kk, vv in v.items() if kk not in NOT_MERGED}
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


def metrics_record(ev: MultiBehaviorEval, levels: BehaviorLevels, select: Sequence[str] | None = None
                   ) -> dict[str, Any]:
    """Per-behavior means, the user-weighted merge, the headline (top-level behavior) and the invalid rate
    (when selected, as by default)."""
    top = levels.names[levels.top]
    rec = {"per_behavior": ev.per_behavior, "merged": ev.merged, "headline": ev.per_behavior.get(top, {})}
    if "invalid_rate" in select_metrics(select, MULTI_TARGET):
        rec["invalid_rate"] = ev.invalid_rate
    return rec


def multi_behavior_ks(cfg: RunConfig) -> list[int]:
    """The cut-offs of ``eval.ks`` within the beam (``[1, 5, 10]`` when none is)."""
    return [k for k in cfg.eval.ks if k <= cfg.generator.beam_size] or [1, 5, 10]


def behavior_eval(model: Any, cfg: RunConfig, opts: MultiBehaviorConfig, split: SessionSplit, which: str,
                  behaviors: Sequence[int] | None = None, max_users: int = 0, constrained: bool | None = None,
                  repeat_breakdown: bool = False) -> MultiBehaviorEval:
    """``evaluate_behaviors`` with the recipe's settings (validation and test alike); ``constrained`` None is
    ``generator.constrained``."""
    g = cfg.generator
    con = g.constrained if constrained is None else constrained
    return evaluate_behaviors(model, split, which, behaviors, multi_behavior_ks(cfg), g.beam_size,
                              cfg.eval.batch_size, opts.candidates, opts.min_history, con, max_users, cfg.train.seed,
                              select_metrics(cfg.eval.metrics, MULTI_TARGET), by_length=opts.length_bucketing,
                              rescore_history=g.rescore_history, repeat_breakdown=repeat_breakdown)


def behavior_results(model: Any, cfg: RunConfig, opts: MultiBehaviorConfig, dataset: Dataset, split: SessionSplit,
                     which: str = "test", constrained: bool | None = None, *, sid_fingerprint: str | None,
                     best_epoch: Any, train_seconds: Any, repeat_breakdown: bool = False) -> dict[str, Any]:
    """Results record of a multi-behavior generator on ``which`` (test | valid): per-behavior metrics of the
    ``multibehavior.eval_behaviors`` (default all), merged row, protocol. The trainer's test record and
    ``genrec evaluate`` both come from here; ``repeat_breakdown`` adds each behavior's repeat and new parts."""
    check_split(which)
    t0 = time.time()
    levels, g = split.levels, cfg.generator
    con = g.constrained if constrained is None else constrained
    ev = behavior_eval(model, cfg, opts, split, which, [levels.id_of(n) for n in opts.eval_behaviors] or None,
                       constrained=con, repeat_breakdown=repeat_breakdown)
    ranked_by = f"beam {g.beam_size}, {'trie-constrained' if con else 'unconstrained'}" + (
        f", {g.rescore_history} recent history items scored exactly and merged" if g.rescore_history else "")
    protocol = {**protocol_record(levels, opts, which, ranked_by, cfg.data.max_len, multi_behavior_ks(cfg)),
                "best_epoch": best_epoch}
    return results_record(cfg.model["name"], dataset, protocol,
                          metrics_record(ev, levels, select_metrics(cfg.eval.metrics, MULTI_TARGET)), cfg,
                          ids={"sid_fingerprint": sid_fingerprint}, sections={"multibehavior": asdict(opts)},
                          eval_seconds=round(time.time() - t0, 2), train_seconds=train_seconds,
                          num_parameters=sum(p.numel() for p in model.parameters()))


def format_table(rec: dict[str, Any]) -> str:
    """Per-behavior metrics of a results record as a plain-text table (merged row last)."""
    per, ks = rec["metrics"]["per_behavior"], rec["protocol"]["ks"]
    cols = [f"{m}@{k}" for m in METRICS for k in ks]
    lines = ["behavior    users  " + "  ".join(f"{c:>9}" for c in cols)]
    rows = []
    for name, m in per.items():  # a behavior, then its repeat and new parts when the record has them
        rows += [(name, m)] + [(f"{name}:{part}", m[part]) for part in ("repeat", "new") if part in m]
    for name, m in [*rows, ("merged", rec["metrics"]["merged"])]:
        vals = "  ".join(f"{m.get(c, float('nan')):>9.4f}" for c in cols)
        lines.append(f"{name:<10}  {int(m.get('num_users', 0)):>5}  {vals}")
    return "\n".join(lines)
