"""Full-catalogue retrieval evaluation: one matrix product per batch of users.

Every item in the catalogue is a candidate (never a sampled subset). With ``exclude_history``
the user's earlier items are removed from the ranking, as HSTU's evaluation does; the choice is
stamped into every result.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from genrec.config import RunConfig
from genrec.data.schema import Dataset
from genrec.data.sequences import UserSequences, make_history_batch
from genrec.data.splits import EvalSamples, Split
from genrec.eval.metrics import RETRIEVAL, metrics_from_ranks, select_metrics
from genrec.eval.record import check_split, results_record
from genrec.models.base import Retriever

RETRIEVAL_TASK = "next-item retrieval"


def history_of(seqs: UserSequences, row: int, hist_end: int) -> tuple[np.ndarray, np.ndarray]:
    s = int(seqs.offsets[row])
    return seqs.items[s : s + hist_end], seqs.timestamps[s : s + hist_end]


@torch.no_grad()
def score_histories(model: Retriever, histories: list[np.ndarray], times: list[np.ndarray],
                    query_time: np.ndarray, exclude_history: bool, table: torch.Tensor | None = None
                    ) -> torch.Tensor:
    """(B, N+1) scores of every item for each history; padding and (optionally) history items are -inf."""
    batch = make_history_batch(histories, times, query_time, model.max_len).to(model.device)
    states = model.encode(batch)  # (B, D)
    if table is None:
        table = model.item_table()
    scores = states.float() @ table.float().T  # (B, N+1)
    scores[:, 0] = -torch.inf
    if exclude_history:
        rows = np.concatenate([np.full(len(h), b) for b, h in enumerate(histories)]) if histories else []
        cols = np.concatenate(histories) if histories else []
        if len(cols):
            scores[torch.as_tensor(rows, device=scores.device), torch.as_tensor(cols, device=scores.device)] = -torch.inf
    return scores


@torch.no_grad()
def rank_targets(model: Retriever, seqs: UserSequences, samples: EvalSamples, exclude_history: bool = True,
                 batch_size: int = 256) -> np.ndarray:
    """0-based rank of each sample's target among all items (strictly higher scores counted)."""
    was_training = model.training
    model.eval()
    table = model.item_table()
    ranks = np.empty(len(samples), dtype=np.int64)
    for start in range(0, len(samples), batch_size):
        rows = samples.rows[start : start + batch_size]
        ends = samples.hist_end[start : start + batch_size]
        hist, times, tgt, qt = [], [], [], []
        for r, e in zip(rows, ends):
            h, t = history_of(seqs, int(r), int(e))
            hist.append(h)
            times.append(t)
            s = int(seqs.offsets[r]) + int(e)
            tgt.append(seqs.items[s])
            qt.append(seqs.timestamps[s])
        scores = score_histories(model, hist, times, np.array(qt), exclude_history, table)
        target = torch.as_tensor(np.array(tgt), device=scores.device)
        ts = scores.gather(1, target[:, None])  # (B, 1)
        ranks[start : start + len(rows)] = (scores > ts).sum(1).cpu().numpy()
    model.train(was_training)
    return ranks


def evaluate_retrieval(model: Retriever, seqs: UserSequences, samples: EvalSamples, ks: list[int],
                       exclude_history: bool = True, batch_size: int = 256, select: Sequence[str] | None = None
                       ) -> dict[str, float]:
    """The selected rank metrics (default all) of the targets of ``samples`` among every item."""
    return metrics_from_ranks(rank_targets(model, seqs, samples, exclude_history, batch_size), ks, select)


def retrieval_metrics(model: Retriever, cfg: RunConfig, seqs: UserSequences, samples: EvalSamples,
                      exclude_history: bool | None = None) -> dict[str, float]:
    """``evaluate_retrieval`` with the recipe's ``eval:`` settings (validation and test alike)."""
    excl = cfg.eval.exclude_history if exclude_history is None else exclude_history
    return evaluate_retrieval(model, seqs, samples, cfg.eval.ks, excl, cfg.eval.batch_size,
                              select_metrics(cfg.eval.metrics, RETRIEVAL))


def retrieval_results(model: Retriever, cfg: RunConfig, dataset: Dataset, seqs: UserSequences, split: Split,
                      which: str = "test", exclude_history: bool | None = None, *, stop_metric: str,
                      best_epoch: Any) -> dict[str, Any]:
    """Results record of a retriever on ``which`` (test | valid), full catalogue; ``exclude_history`` None is the
    recipe's ``eval.exclude_history``. The trainer's test record and ``genrec evaluate`` both come from here."""
    check_split(which)
    excl = cfg.eval.exclude_history if exclude_history is None else exclude_history
    protocol = {
        "task": RETRIEVAL_TASK,
        "split": split.name,
        "evaluated_on": which,
        "candidates": "full catalogue",
        "exclude_history": excl,
        "history_window": cfg.data.max_len,
        "ks": cfg.eval.ks,
        "early_stopping": f"{stop_metric} on validation",
        "best_epoch": best_epoch,
    }
    metrics = retrieval_metrics(model, cfg, seqs, getattr(split, which), excl)
    return results_record(cfg.model["name"], dataset, protocol, metrics, cfg)
