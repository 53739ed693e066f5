"""Full-catalogue retrieval evaluation: one matrix product per batch of users.

Every item in the catalogue is a candidate (never a sampled subset). With ``exclude_history``
the user's earlier items are removed from the ranking, as HSTU's evaluation does; the choice is
stamped into every result.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import torch

from genrec.config import RunConfig
from genrec.data.schema import Dataset
from genrec.data.sequences import SeqBatch, UserSequences, make_history_batch
from genrec.data.splits import EvalSamples, Split
from genrec.eval.metrics import RETRIEVAL, metrics_from_ranks, select_metrics
from genrec.eval.record import check_split, results_record
from genrec.models.base import Retriever

RETRIEVAL_TASK = "next-item retrieval"


# catalogue columns scored at once: a (B, 65,536) block bounds memory for any catalogue (< 2^24: count_above)
CHUNK_ITEMS = 1 << 16
MAX_PADDING = 0.05  # share of padding an evaluation batch may encode before it is cut short


def history_of(seqs: UserSequences, row: int, hist_end: int) -> tuple[np.ndarray, np.ndarray]:
    s = int(seqs.offsets[row])
    return seqs.items[s : s + hist_end], seqs.timestamps[s : s + hist_end]


@dataclass
class QueryBatch:
    """One batch of evaluation queries: the encoder input and what ranking them needs."""

    index: np.ndarray  # (B,) positions of these queries in the EvalSamples
    batch: SeqBatch  # the last ``max_len`` events of each history, left-aligned
    targets: np.ndarray  # (B,) int64 the item to rank
    query_time: np.ndarray  # (B,) int64 its timestamp (the request time)
    seen: tuple[np.ndarray, np.ndarray]  # ((P,) batch row, (P,) item) of every earlier event, the whole history


def history_pairs(seqs: UserSequences, rows: np.ndarray, ends: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """((P,) query index, (P,) item) of every event before ``ends[i]`` in row ``rows[i]``: the items that history
    exclusion removes (the whole history, not only the encoder's window)."""
    n = np.asarray(ends, dtype=np.int64)
    r = np.repeat(np.arange(len(n)), n)
    within = np.arange(int(n.sum())) - np.repeat(np.cumsum(n) - n, n)
    return r, seqs.items[np.repeat(seqs.offsets[rows], n) + within].astype(np.int64)


def length_batches(lengths: np.ndarray, batch_size: int, max_padding: float = MAX_PADDING) -> list[np.ndarray]:
    """Indices of ``lengths`` shortest first, cut into batches of at most ``batch_size`` whose padding (to their
    longest member) stays within ``max_padding`` of their tokens; a batch grows while both hold."""
    order = np.argsort(lengths, kind="stable")
    n = np.maximum(lengths[order], 1)  # a query with no history still encodes one (padding) token
    out, start, total = [], 0, 0
    for i, m in enumerate(n.tolist()):  # m is the longest so far: the order is ascending
        count = i - start + 1
        if count > batch_size or (count > 1 and 1 - (total + m) / (count * m) > max_padding):
            out.append(order[start:i])
            start, total = i, 0
        total += m
    if start < len(order):
        out.append(order[start:])
    return out


def query_batches(seqs: UserSequences, samples: EvalSamples, max_len: int, batch_size: int) -> Iterator[QueryBatch]:
    """The queries of ``samples`` in batches of similar history length (:func:`length_batches`), so a batch
    encodes little padding: scores of a query do not depend on its batch, only the order of work changes."""
    win = np.minimum(samples.hist_end, max_len)  # (S,) encoder tokens of each query
    for idx in length_batches(win, batch_size):
        rows, ends = samples.rows[idx], samples.hist_end[idx]
        pos = seqs.offsets[rows] + ends  # (B,) flat index of each target
        w = seqs.windows(rows, ends, max_len)
        qt = seqs.timestamps[pos].astype(np.int64)
        batch = SeqBatch(items=torch.from_numpy(w.take(seqs.items).astype(np.int64)),
                         timestamps=torch.from_numpy(w.take(seqs.timestamps).astype(np.int64)),
                         lengths=torch.from_numpy(w.lengths), query_time=torch.from_numpy(qt))
        yield QueryBatch(idx, batch, seqs.items[pos].astype(np.int64), qt, history_pairs(seqs, rows, ends))


def exclude(scores: torch.Tensor, seen: tuple[np.ndarray, np.ndarray], first: int = 0) -> None:
    """Set ``scores[b, item - first]`` to -inf in place for every (b, item) of ``seen`` inside the block of
    columns ``[first, first + C)``: sparse indices, never a dense (B, N) mask."""
    r, c = seen
    keep = (c >= first) & (c < first + scores.shape[1])
    if keep.any():
        dev = scores.device
        scores[torch.as_tensor(r[keep], device=dev), torch.as_tensor(c[keep] - first, device=dev)] = -torch.inf


def count_above(s: torch.Tensor, ts: torch.Tensor) -> torch.Tensor:
    """(B,) int64 count of entries of each row of ``s`` (B, C) strictly above ``ts`` (B, 1), overwriting ``s``.

    In place, the comparison writes 1.0 / 0.0 into the score block and a float sum counts them (exact below 2^24
    columns): an order of magnitude less memory traffic than a boolean mask widened to int64 for the sum."""
    return s.gt_(ts).sum(1).long()


class Ranked(NamedTuple):
    """What one pass over the catalogue gives for a batch of queries."""

    rank: torch.Tensor  # (B,) int64 0-based rank of the target, strictly higher scores counted
    target_score: torch.Tensor  # (B,) raw score of the target, before any exclusion
    top_scores: torch.Tensor | None  # (B, k) best first, when k > 0
    top_items: torch.Tensor | None  # (B, k)


@torch.no_grad()
def catalogue_ranks(states: torch.Tensor, table: torch.Tensor, targets: np.ndarray,
                    seen: tuple[np.ndarray, np.ndarray] | None, k: int = 0, chunk: int = CHUNK_ITEMS) -> Ranked:
    """Rank of each target among every item after removing the padding item 0 and, when ``seen`` is given, the
    history items; with ``k`` > 0 also the running top-k.

    states (B, D), table (N+1, D). The catalogue is scored ``chunk`` columns at a time, so memory is
    O(B * chunk) whatever the catalogue's size. When it fits in one chunk the target's score comes from the
    same matrix product as every other score (the reference arithmetic); across chunks it is a per-row dot
    product, which can differ from the product in the last bit, so an item tied with the target to within
    rounding may fall on either side of it.
    """
    B, n = states.shape[0], table.shape[0]
    dev = states.device
    states = states.float()
    tgt = torch.as_tensor(targets, device=dev)
    if n <= chunk:
        s = states @ table.float().T  # (B, N+1)
        raw = s.gather(1, tgt[:, None])[:, 0]  # (B,)
        s[:, 0] = -torch.inf
        if seen is not None:
            exclude(s, seen)
        ts = s.gather(1, tgt[:, None])  # (B, 1)
        top = torch.topk(s, min(k, n), dim=1) if k else None
        return Ranked(count_above(s, ts), raw, top.values if top else None, top.indices if top else None)
    raw = (states * table[tgt].float()).sum(-1)  # (B,)
    ts = raw[:, None].clone()
    if seen is not None:  # a target inside its own history is excluded: it ranks below every scored item
        r, c = seen
        own = np.zeros(B, dtype=bool)
        own[r[c == targets[r]]] = True
        ts[torch.as_tensor(own, device=dev)] = -torch.inf
    rank = torch.zeros(B, dtype=torch.int64, device=dev)
    best_v = best_i = None
    rows = torch.arange(B, device=dev)
    for a in range(0, n, chunk):
        s = states @ table[a : a + chunk].float().T  # (B, C)
        if a == 0:
            s[:, 0] = -torch.inf
        if seen is not None:
            exclude(s, seen, a)
        if k:  # running top-k: the best k of (the best so far, this chunk's best)
            v, i = torch.topk(s, min(k, s.shape[1]), dim=1)
            v, i = (v, i + a) if best_v is None else (torch.cat([best_v, v], 1), torch.cat([best_i, i + a], 1))
            best_v, pick = torch.topk(v, min(k, v.shape[1]), dim=1)
            best_i = i.gather(1, pick)
        inside = (tgt >= a) & (tgt < a + s.shape[1])
        s[rows[inside], tgt[inside] - a] = -torch.inf  # the target does not outrank itself
        rank += count_above(s, ts)
    return Ranked(rank, raw, best_v, best_i)


@torch.no_grad()
def score_histories(model: Retriever, histories: list[np.ndarray], times: list[np.ndarray],
                    query_time: np.ndarray, exclude_history: bool, table: torch.Tensor | None = None
                    ) -> torch.Tensor:
    """(B, N+1) scores of every item for each history; padding and (optionally) history items are -inf.

    The dense form serving and ``genrec recommend`` use for a handful of queries; evaluation goes through
    :func:`catalogue_ranks`, which never holds the (B, N+1) matrix for more than one chunk."""
    batch = make_history_batch(histories, times, query_time, model.max_len).to(model.device)
    states = model.encode(batch)  # (B, D)
    if table is None:
        table = model.item_table()
    scores = states.float() @ table.float().T  # (B, N+1)
    scores[:, 0] = -torch.inf
    if exclude_history:
        lens = np.array([len(h) for h in histories], dtype=np.int64)
        exclude(scores, (np.repeat(np.arange(len(histories)), lens),
                         np.concatenate(histories).astype(np.int64) if len(histories) else np.zeros(0, np.int64)))
    return scores


@torch.no_grad()
def rank_targets(model: Retriever, seqs: UserSequences, samples: EvalSamples, exclude_history: bool = True,
                 batch_size: int = 256, chunk: int = CHUNK_ITEMS) -> np.ndarray:
    """0-based rank of each sample's target among all items (strictly higher scores counted)."""
    was_training = model.training
    model.eval()
    table = model.item_table()  # (N+1, D)
    ranks = np.empty(len(samples), dtype=np.int64)
    for qb in query_batches(seqs, samples, model.max_len, batch_size):
        states = model.encode(qb.batch.to(model.device))  # (B, D)
        r = catalogue_ranks(states, table, qb.targets, qb.seen if exclude_history else None, chunk=chunk)
        ranks[qb.index] = r.rank.cpu().numpy()
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
