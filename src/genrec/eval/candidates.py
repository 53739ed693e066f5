"""First-stage candidates of a two-stage retrieval: a retriever's top-K per query, and the ranks of a re-ordered list.

The re-ranking track (``genrec.train.rerank``) trains and scores on these; they are kept apart because they are
pure retrieval arithmetic (no re-ranker model): which queries train the second stage (``training_prefixes``,
training events only), what the retriever returns for them (``retrieve``), and where a target lands once only
the top-K is permuted (``reranked_ranks``), which is what keeps the metrics full-catalogue.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from genrec.data.sequences import UserSequences
from genrec.data.splits import EvalSamples, Split
from genrec.eval.retrieval import catalogue_ranks, query_batches
from genrec.models.base import Retriever


@dataclass
class Candidates:
    """The retriever's view of a set of queries: its top-K and where the true next item lies."""

    samples: EvalSamples  # (S,) rows and history ends
    targets: np.ndarray  # (S,) int64 true next item
    query_time: np.ndarray  # (S,) int64 timestamp of the target (the request time)
    top_items: np.ndarray  # (S, K) int64 retriever's top-K, best first
    top_scores: np.ndarray  # (S, K) float32 retriever scores of top_items
    target_rank: np.ndarray  # (S,) int64 0-based full-catalogue rank of the target under the retriever
    target_score: np.ndarray  # (S,) float32 retriever score of the target (before any history exclusion)

    def __len__(self) -> int:
        return len(self.targets)

    def subset(self, idx: np.ndarray) -> Candidates:
        return Candidates(EvalSamples(self.samples.rows[idx], self.samples.hist_end[idx]), self.targets[idx],
                          self.query_time[idx], self.top_items[idx], self.top_scores[idx], self.target_rank[idx],
                          self.target_score[idx])


def training_prefixes(split: Split, max_per_user: int = 0) -> EvalSamples:
    """Every (row, p) with ``1 <= p < train_end[row]``: predict event p of a row from its events before p.

    Only positions below ``train_end`` are produced, so no validation or test target can be a training target
    or appear in a training history. ``max_per_user`` keeps each row's most recent ones.
    """
    te = np.asarray(split.train_end, dtype=np.int64)
    n = np.maximum(te - 1, 0)  # (U,) prefixes per row
    if max_per_user > 0:
        n = np.minimum(n, max_per_user)
    rows = np.repeat(np.arange(len(te)), n)
    start = np.repeat(te - n, n)  # first kept p of each row
    within = np.arange(len(rows)) - np.repeat(np.cumsum(n) - n, n)
    return EvalSamples(rows.astype(np.int64), (start + within).astype(np.int64))


@torch.no_grad()
def retrieve(model: Retriever, seqs: UserSequences, samples: EvalSamples, k: int, exclude_history: bool = True,
             batch_size: int = 256) -> Candidates:
    """The retriever's top-``k`` for each query, and the target's full-catalogue rank, as the evaluation ranks.

    The rank counts items with a strictly higher score after the padding and history exclusion of
    ``genrec.eval.retrieval.score_histories`` (as ``rank_targets`` does; one encoder pass serves both the
    ranks and the raw target score). ``target_score`` is the raw score, before exclusion.
    """
    was = model.training
    model.eval()
    S = len(samples)
    k = min(k, model.num_items)
    top_items = np.zeros((S, k), dtype=np.int64)
    top_scores = np.zeros((S, k), dtype=np.float32)
    ranks = np.zeros(S, dtype=np.int64)
    tscore = np.zeros(S, dtype=np.float32)
    pos = seqs.offsets[samples.rows] + samples.hist_end
    targets, qtime = seqs.items[pos].astype(np.int64), seqs.timestamps[pos].astype(np.int64)
    table = model.item_table()  # (I+1, D)
    for qb in query_batches(seqs, samples, model.max_len, batch_size):
        states = model.encode(qb.batch.to(model.device))  # (B, D)
        got = catalogue_ranks(states, table, qb.targets, qb.seen if exclude_history else None, k=k)
        i = qb.index
        ranks[i], tscore[i] = got.rank.cpu().numpy(), got.target_score.cpu().numpy()
        top_items[i], top_scores[i] = got.top_items.cpu().numpy(), got.top_scores.cpu().numpy()
    model.train(was)
    return Candidates(samples, targets, qtime, top_items, top_scores, ranks, tscore)


def rerank_order(top_items: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """(S, K) items re-ordered by re-ranker ``scores`` (S, K), best first; ties keep the retriever's order."""
    order = np.argsort(-np.asarray(scores, dtype=np.float64), axis=1, kind="stable")
    return np.take_along_axis(top_items, order, axis=1)


def full_ranking(retriever_order: np.ndarray, k: int, scores: np.ndarray) -> np.ndarray:
    """(S, M) final list: the first ``k`` of ``retriever_order`` (S, M) re-ordered by ``scores`` (S, k), the rest
    exactly as the retriever ordered it. Only the top-``k`` is ever permuted."""
    return np.concatenate([rerank_order(retriever_order[:, :k], scores), retriever_order[:, k:]], axis=1)


def reranked_ranks(cands: Candidates, scores: np.ndarray) -> np.ndarray:
    """(S,) 0-based full-catalogue rank of each target in ``full_ranking``.

    A target inside the top-K gets its position in the re-ordered top-K; one outside keeps the retriever's
    rank (>= K), since everything below the top-K keeps the retriever's order.
    """
    k = cands.top_items.shape[1]
    new = rerank_order(cands.top_items, scores)  # (S, K)
    hit = new == cands.targets[:, None]
    inside = hit.any(1) & (cands.target_rank < k)
    return np.where(inside, hit.argmax(1), cands.target_rank)


__all__ = ["Candidates", "full_ranking", "rerank_order", "reranked_ranks", "retrieve", "training_prefixes"]
