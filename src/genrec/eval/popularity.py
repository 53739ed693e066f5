"""The most-popular baseline on the retrieval protocol: every model's floor.

Items are ranked by how often they occur among the training events of the split (each row's events before
``train_end``, what the learned models train on); ties go to the smaller item id, so the ranking is
deterministic. A model that does not beat this list has learned nothing beyond item frequency.
"""

from __future__ import annotations

import numpy as np

from genrec.data.sequences import UserSequences
from genrec.data.splits import EvalSamples, Split
from genrec.eval.metrics import metrics_from_ranks


def popularity_order(seqs: UserSequences, split: Split, num_items: int) -> np.ndarray:
    """(N+1,) position of every item id in the popularity list (0 = most popular; padding id 0 last)."""
    lengths = np.diff(seqs.offsets)
    in_train = np.arange(len(seqs.items)) - np.repeat(seqs.offsets[:-1], lengths) < np.repeat(split.train_end,
                                                                                              lengths)
    counts = np.bincount(seqs.items[in_train], minlength=num_items + 1).astype(np.int64)
    counts[0] = -1  # padding is never recommended
    order = np.lexsort((np.arange(num_items + 1), -counts))  # by count desc, then id asc
    pos = np.empty(num_items + 1, dtype=np.int64)
    pos[order] = np.arange(num_items + 1)
    return pos


def popularity_ranks(seqs: UserSequences, samples: EvalSamples, pos: np.ndarray, exclude_history: bool
                     ) -> np.ndarray:
    """(S,) 0-based rank of each query's target in the popularity list, history items removed when asked
    (a target that is itself in the history then counts as a miss, as in the model evaluation)."""
    ranks = np.empty(len(samples), dtype=np.int64)
    miss = len(pos)
    for q, (row, end) in enumerate(zip(samples.rows, samples.hist_end)):
        s = int(seqs.offsets[row])
        target = int(seqs.items[s + end])
        r = int(pos[target])
        if exclude_history:
            hist = np.unique(seqs.items[s : s + end])
            r = miss if target in hist else r - int((pos[hist] < r).sum())
        ranks[q] = r
    return ranks


def evaluate_popularity(seqs: UserSequences, split: Split, num_items: int, ks: list[int], exclude_history: bool,
                        which: str = "test") -> dict[str, float]:
    """Hit / NDCG@k and MRR of the popularity list on ``which`` (test | valid), full catalogue."""
    samples = split.test if which == "test" else split.valid
    pos = popularity_order(seqs, split, num_items)
    return metrics_from_ranks(popularity_ranks(seqs, samples, pos, exclude_history), ks)
