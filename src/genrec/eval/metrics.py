"""Ranking metrics from the 0-based rank of the single held-out target.

With one relevant item per query, HR@K equals Recall@K, NDCG@K = 1/log2(rank + 2) when
rank < K, and MRR = 1/(rank + 1) over the full ranking.
"""

from __future__ import annotations

import numpy as np


def metrics_from_ranks(ranks: np.ndarray, ks: list[int]) -> dict[str, float]:
    ranks = np.asarray(ranks, dtype=np.float64)
    if ranks.size == 0:
        raise ValueError("no evaluation queries")
    out: dict[str, float] = {}
    gain = 1.0 / np.log2(ranks + 2.0)
    for k in sorted(ks):
        hit = ranks < k
        out[f"hr@{k}"] = float(hit.mean())
        out[f"recall@{k}"] = out[f"hr@{k}"]
        out[f"ndcg@{k}"] = float(np.where(hit, gain, 0.0).mean())
    out["mrr"] = float((1.0 / (ranks + 1.0)).mean())
    out["num_queries"] = int(ranks.size)
    return out


def auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve with tied scores counted as half (Mann-Whitney U)."""
    labels = np.asarray(labels).astype(bool)
    scores = np.asarray(scores, dtype=np.float64)
    npos, nneg = int(labels.sum()), int((~labels).sum())
    if npos == 0 or nneg == 0:
        return float("nan")
    order = np.argsort(scores, kind="mergesort")
    s = scores[order]
    ranks = np.empty(len(s), dtype=np.float64)
    i = 0
    while i < len(s):
        j = i
        while j + 1 < len(s) and s[j + 1] == s[i]:
            j += 1
        ranks[i : j + 1] = (i + j) / 2.0 + 1.0
        i = j + 1
    r = np.empty_like(ranks)
    r[order] = ranks
    return float((r[labels].sum() - npos * (npos + 1) / 2.0) / (npos * nneg))
