"""The metric registry: every metric family once, with its name, the protocols that compute it and its record key;
and the rank-based metrics of the single-target protocols.

Protocols (``task``):

- ``retrieval``: one held-out target per query and its 0-based rank among all items (retrievers, the
  re-ranker, the popularity floor);
- ``generation``: one target and its rank among the beams, ``inf`` beyond them (generators);
- ``ctr``: labelled impressions scored one by one (rankers);
- ``multi_target``: a set of targets per query, ranked lists per behavior (multi-behavior generators and their
  baselines).

With one relevant item per query, HR@K equals Recall@K, NDCG@K = 1/log2(rank + 2) when rank < K, and
MRR = 1/(rank + 1) over the full ranking.

**HR and Hit are one metric** (``hr``, alias ``hit``): 1[a target is in the top K]. Retrieval and generation
records call it ``hr@K``, multi-target records ``hit@K`` (the name of the GAMER paper); both record formats stay
as they are, and either name selects it in ``eval.metrics``.

``eval.metrics`` lists the families a run computes and records (an empty list: all of its protocol's, which is
the default); the early-stopping metric must be one of the selected keys, checked when a trainer starts.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from genrec.errors import ConfigError

RETRIEVAL, GENERATION, CTR, MULTI_TARGET = "retrieval", "generation", "ctr", "multi_target"
TASKS = (RETRIEVAL, GENERATION, CTR, MULTI_TARGET)


@dataclass(frozen=True)
class Metric:
    """One metric family: ``name`` (``@K`` appended per cut-off when ``at_k``), where it is computed, how it is
    recorded, and whether it can drive early stopping."""

    name: str
    tasks: tuple[str, ...]
    doc: str
    at_k: bool = False
    aliases: tuple[str, ...] = ()
    record_names: tuple[tuple[str, str], ...] = ()  # (task, name) where a record writes another name
    minimize: bool = False
    stop: bool = True  # a quality measure early stopping may use (not a diagnostic)

    def key(self, task: str) -> str:
        """The name this family has in ``task``'s records (``hr`` or ``hit``)."""
        return dict(self.record_names).get(task, self.name)

    def keys(self, task: str, ks: Sequence[int]) -> list[str]:
        """The record keys of this family: ``name@K`` for each K, or just ``name``."""
        return [f"{self.key(task)}@{k}" for k in ks] if self.at_k else [self.key(task)]


METRICS: dict[str, Metric] = {}
_BY_NAME: dict[str, str] = {}  # name or alias -> family name


def register(metric: Metric) -> Metric:
    """Add a family; a name or alias may belong to one family only."""
    names = (metric.name, *metric.aliases)
    taken = [n for n in names if n in _BY_NAME]
    if taken:
        raise ValueError(f"metric name(s) {taken} already registered")
    METRICS[metric.name] = metric
    _BY_NAME.update({n: metric.name for n in names})
    return metric


_RANKED = (RETRIEVAL, GENERATION, MULTI_TARGET)
register(Metric("hr", _RANKED, "hit rate: 1[a target is in the top K] (recorded as hit@K in multi-target records)",
                at_k=True, aliases=("hit",), record_names=((MULTI_TARGET, "hit"),)))
register(Metric("recall", _RANKED, "share of the targets in the top K (= HR@K with one target)", at_k=True))
register(Metric("ndcg", _RANKED, "DCG@K over the ideal DCG@K (1/log2(rank + 2) with one target)", at_k=True))
register(Metric("mrr", (RETRIEVAL, GENERATION), "1/(rank + 1); truncated at the beam size for generators"))
register(Metric("invalid_rate", (GENERATION, MULTI_TARGET), "share of returned beams whose SID names no item",
                minimize=True, stop=False))
register(Metric("auc", (CTR,), "ROC AUC over the impressions, ties counted half"))
register(Metric("gauc", (CTR,), "per-user AUC weighted by the user's impressions (users with both classes)"))
register(Metric("logloss", (CTR,), "mean binary cross-entropy of the predicted probabilities", minimize=True))


def task_metrics(task: str) -> tuple[str, ...]:
    """Every family ``task`` computes, in registry order: the default selection."""
    return tuple(name for name, m in METRICS.items() if task in m.tasks)


def select_metrics(names: Sequence[str] | None, task: str, key: str = "eval.metrics") -> tuple[str, ...]:
    """``eval.metrics`` -> the family names ``task`` computes and records, in registry order (empty: all)."""
    if not names:
        return task_metrics(task)
    chosen = set()
    for n in names:
        family = _BY_NAME.get(n)
        if family is None:
            raise ConfigError(f"{key}: unknown metric '{n}' (known: {', '.join(sorted(_BY_NAME))})")
        if task not in METRICS[family].tasks:
            raise ConfigError(f"{key}: '{n}' is not computed by a {task} evaluation "
                              f"(choose from {', '.join(task_metrics(task))})")
        chosen.add(family)
    return tuple(f for f in task_metrics(task) if f in chosen)


def metric_keys(select: Sequence[str], task: str, ks: Sequence[int], stop_only: bool = False) -> list[str]:
    """The record keys of the selected families (only those early stopping may use with ``stop_only``)."""
    return [key for f in select if not stop_only or METRICS[f].stop for key in METRICS[f].keys(task, ks)]


def check_stop_metric(stop: str, names: Sequence[str] | None, task: str, ks: Sequence[int],
                      key: str = "train.early_stop_metric") -> None:
    """Refuse an early-stopping metric the run would not compute, naming both settings."""
    allowed = metric_keys(select_metrics(names, task), task, ks, stop_only=True)
    if stop not in allowed:
        raise ConfigError(f"{key} '{stop}' is not computed: eval.metrics (with eval.ks {list(ks)}) selects "
                          f"{', '.join(allowed)}")


def default_stop_metric(task: str, ks: Sequence[int]) -> str:
    """``train.early_stop_metric: auto``: AUC for rankers, NDCG@10 for retrievers, and for generators NDCG at
    10 or, when 10 is not a cut-off within the beam, at the largest one."""
    if task == CTR:
        return "auc"
    if task == GENERATION:
        return f"ndcg@{10 if 10 in ks else max(ks)}"
    return "ndcg@10"


def metrics_from_ranks(ranks: np.ndarray, ks: list[int], select: Sequence[str] | None = None) -> dict[str, float]:
    """HR / Recall / NDCG at each K and MRR (those in ``select``; default all) from (Q,) 0-based target ranks."""
    fams = task_metrics(RETRIEVAL) if select is None else select
    ranks = np.asarray(ranks, dtype=np.float64)
    if ranks.size == 0:
        raise ValueError("no evaluation queries")
    out: dict[str, float] = {}
    gain = 1.0 / np.log2(ranks + 2.0)
    for k in sorted(ks):
        hit = ranks < k
        rate = float(hit.mean())
        if "hr" in fams:
            out[f"hr@{k}"] = rate
        if "recall" in fams:
            out[f"recall@{k}"] = rate
        if "ndcg" in fams:
            out[f"ndcg@{k}"] = float(np.where(hit, gain, 0.0).mean())
    if "mrr" in fams:
        out["mrr"] = float((1.0 / (ranks + 1.0)).mean())
    out["num_queries"] = int(ranks.size)
    return out
