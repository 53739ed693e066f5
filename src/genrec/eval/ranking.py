"""The ranking (CTR) track's evaluation: AUC, GAUC and LogLoss over impressions (spec §6.1, Track C), a
ranker's logits for them, and its results record.

The metrics are vectorised numpy so a test set of millions of impressions is scored in seconds: AUC (the one
implementation) and GAUC both come from tie-averaged ranks (Mann-Whitney U), GAUC computing the ranks inside
each user's group in one sort.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import numpy as np
import torch
from torch import nn

from genrec.config import RunConfig
from genrec.data.schema import Dataset
from genrec.eval.metrics import CTR, select_metrics
from genrec.eval.record import check_split, results_record
from genrec.runs.ranking_data import RankingData, impression_batch

CTR_TASK = "ranking (CTR)"


def _tied_ranks(keys: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """1-based ranks of ``scores`` inside each group of ``keys``, ties averaged; plus the sort order.

    Returns (ranks in sorted order (S,), order (S,)) where ``order`` sorts by (key, score).
    """
    order = np.lexsort((scores, keys))
    k, s = keys[order], scores[order]
    n = k.shape[0]
    idx = np.arange(n)
    new_key = np.ones(n, dtype=bool)
    new_key[1:] = k[1:] != k[:-1]
    key_start = np.maximum.accumulate(np.where(new_key, idx, 0))
    pos = (idx - key_start + 1).astype(np.float64)  # rank inside the key group
    new_tie = new_key.copy()
    new_tie[1:] |= s[1:] != s[:-1]
    tie_id = np.cumsum(new_tie) - 1
    mean_pos = np.bincount(tie_id, weights=pos) / np.bincount(tie_id)
    return mean_pos[tie_id], order


def auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """ROC AUC with tied scores counted as half; NaN when only one class is present."""
    y = np.asarray(labels).astype(bool).ravel()
    s = np.asarray(scores, dtype=np.float64).ravel()
    npos, nneg = int(y.sum()), int((~y).sum())
    if npos == 0 or nneg == 0:
        return float("nan")
    ranks, order = _tied_ranks(np.zeros(len(s), dtype=np.int64), s)
    return float((ranks[y[order]].sum() - npos * (npos + 1) / 2.0) / (npos * nneg))


def gauc(labels: np.ndarray, scores: np.ndarray, users: np.ndarray) -> tuple[float, int]:
    """Group AUC: per-user AUC weighted by the user's impression count, over users with both classes.

    Users with only positives or only negatives have no AUC and are left out of both the sum and the
    weights (the DIN convention). Returns (gauc, number of users counted); NaN when no user counts.
    """
    y = np.asarray(labels).astype(bool).ravel()
    s = np.asarray(scores, dtype=np.float64).ravel()
    u = np.asarray(users).ravel()
    if not (y.shape == s.shape == u.shape):
        raise ValueError(f"gauc: labels {y.shape}, scores {s.shape}, users {u.shape} differ in length")
    if y.size == 0:
        return float("nan"), 0
    _, uid = np.unique(u, return_inverse=True)
    ranks, order = _tied_ranks(uid, s)
    g, yo = uid[order], y[order]
    n_users = int(g.max()) + 1
    npos = np.bincount(g, weights=yo, minlength=n_users)
    cnt = np.bincount(g, minlength=n_users).astype(np.float64)
    nneg = cnt - npos
    rank_sum = np.bincount(g, weights=np.where(yo, ranks, 0.0), minlength=n_users)
    ok = (npos > 0) & (nneg > 0)
    if not ok.any():
        return float("nan"), 0
    per_user = (rank_sum[ok] - npos[ok] * (npos[ok] + 1) / 2.0) / (npos[ok] * nneg[ok])
    return float((per_user * cnt[ok]).sum() / cnt[ok].sum()), int(ok.sum())


def log_loss(labels: np.ndarray, probs: np.ndarray, eps: float = 1e-7) -> float:
    """Mean binary cross-entropy of probabilities clipped to [eps, 1 - eps] (so one sure miss is finite)."""
    y = np.asarray(labels, dtype=np.float64).ravel()
    p = np.clip(np.asarray(probs, dtype=np.float64).ravel(), eps, 1.0 - eps)
    if y.size == 0:
        return float("nan")
    return float(-(y * np.log(p) + (1.0 - y) * np.log1p(-p)).mean())


def ranking_metrics(
    labels: np.ndarray, scores: np.ndarray, users: np.ndarray | None = None, from_logits: bool = True,
    select: Sequence[str] | None = None,
) -> dict[str, float]:
    """AUC, GAUC (when ``users`` is given) and LogLoss of one evaluation set (those in ``select``; default all),
    with its counts.

    ``scores`` are logits by default (sigmoid is applied for LogLoss); pass probabilities with
    ``from_logits=False``. AUC and GAUC are rank-based, so either form gives the same values.
    """
    fams = select_metrics(select, CTR)
    s = np.asarray(scores, dtype=np.float64).ravel()
    probs = 1.0 / (1.0 + np.exp(-s)) if from_logits else s
    y = np.asarray(labels).ravel()
    out: dict[str, float] = {}
    if "auc" in fams:
        out["auc"] = auc(y, s)
    if "logloss" in fams:
        out["logloss"] = log_loss(y, probs)
    out.update(num_impressions=int(y.size), positive_rate=float(np.mean(y)) if y.size else float("nan"))
    if users is not None and "gauc" in fams:
        out["gauc"], out["gauc_users"] = gauc(y, s, users)
    return out


@torch.no_grad()
def predict_impressions(model: nn.Module, data: RankingData, idx: np.ndarray, max_len: int, batch_size: int,
                        features: dict[str, np.ndarray] | None = None,
                        autocast: Callable[[], AbstractContextManager] | None = None,
                        packed: bool = False) -> np.ndarray:
    """(S,) logits of samples ``idx`` in their given order (batched by history length for speed), on the
    model's device; ``autocast`` is the trainer's mixed-precision context (none: fp32); ``packed``: the model's
    ``packed_score`` (a run trained under ``train.packed``)."""
    idx = np.asarray(idx, dtype=np.int64)
    out = np.empty(len(idx), dtype=np.float64)
    order = np.argsort(data.imps.history_lengths[idx], kind="stable")
    device = next(model.parameters()).device
    was_training = model.training
    score = model.packed_score if packed else model.score
    model.eval()
    try:
        for i in range(0, len(order), batch_size):
            pos = order[i : i + batch_size]
            batch, cands, _, kw = impression_batch(data, idx[pos], max_len, features, device)
            with autocast() if autocast is not None else nullcontext():
                logits = score(batch, cands, **kw)  # (B, 1)
            out[pos] = logits.float().reshape(-1).cpu().numpy()
    finally:
        model.train(was_training)
    return out


def ranker_metrics(model: nn.Module, cfg: RunConfig, data: RankingData, which: str,
                   features: dict[str, np.ndarray] | None = None,
                   autocast: Callable[[], AbstractContextManager] | None = None) -> dict[str, float]:
    """The selected CTR metrics (``eval.metrics``), count and positive rate on one part of the split."""
    idx = data.part(which)
    imps = data.imps
    logits = predict_impressions(model, data, idx, cfg.data.max_len, cfg.ranking.eval_batch_size, features, autocast,
                                 packed=cfg.train.packed and model.packs)
    return ranking_metrics(imps.label[idx], logits, imps.user_id[idx], from_logits=True,
                           select=select_metrics(cfg.eval.metrics, CTR))


def ranker_results(model: nn.Module, cfg: RunConfig, dataset: Dataset, data: RankingData, which: str,
                   features: dict[str, np.ndarray] | None = None, *, stop_metric: str, best_epoch: Any,
                   autocast: Callable[[], AbstractContextManager] | None = None) -> dict[str, Any]:
    """Results record of a ranker on ``which`` (test | valid): the trainer's test record and ``genrec evaluate``."""
    check_split(which)
    man = data.manifest()
    protocol = {
        "task": CTR_TASK,
        "evaluated_on": which,
        "labels": man["labels"],
        "split": man["split"],
        "candidates": "the impressed item (pointwise)",
        "history_window": cfg.data.max_len,
        "early_stopping": f"{stop_metric} on validation",
        "best_epoch": best_epoch,
    }
    metrics = ranker_metrics(model, cfg, data, which, features, autocast)
    return results_record(cfg.model["name"], dataset, protocol, metrics, cfg)
