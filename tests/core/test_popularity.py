"""The most-popular baseline: counts only training events, excludes history on request, ranks by definition."""

from __future__ import annotations

import numpy as np

from genrec.data.schema import Interactions
from genrec.data.sequences import UserSequences
from genrec.data.splits import leave_one_out
from genrec.eval.popularity import evaluate_popularity, popularity_order, popularity_ranks


def _seqs(rows: list[list[int]]) -> UserSequences:
    u = np.concatenate([np.full(len(r), i + 1) for i, r in enumerate(rows)])
    it = np.concatenate([np.asarray(r) for r in rows])
    t = np.concatenate([np.arange(len(r)) for r in rows])
    return UserSequences.from_interactions(Interactions(u.astype(np.int64), it.astype(np.int64), t.astype(np.int64)))


def test_popularity_counts_training_events_only_and_breaks_ties_by_id():
    # leave-one-out: the last two events of each user are validation and test targets
    seqs = _seqs([[5, 5, 2, 9, 9], [5, 3, 9, 9], [1, 2, 4, 4]])
    split = leave_one_out(seqs)
    pos = popularity_order(seqs, split, num_items=9)
    # training events: [5, 5, 2], [5, 3], [1, 2] -> 5 x3, 2 x2, then 1, 3 (ties by id); 9 and 4 never seen there
    assert list(np.argsort(pos)[:4]) == [5, 2, 1, 3]
    assert pos[9] > pos[3] and pos[0] == 9  # test-only items rank after every seen item, padding last


def test_ranks_with_and_without_history_exclusion():
    seqs = _seqs([[5, 5, 2, 9, 9], [5, 3, 9, 9], [1, 2, 4, 4], [5, 2, 1, 3]])
    split = leave_one_out(seqs)
    pos = popularity_order(seqs, split, num_items=9)
    free = popularity_ranks(seqs, split.test, pos, exclude_history=False)
    excl = popularity_ranks(seqs, split.test, pos, exclude_history=True)
    # user 4 predicts 3 from [5, 2, 1]: list 5, 2, 1, 3 -> rank 3, or 0 once its own three items are removed
    assert free[3] == pos[3] == 3 and excl[3] == 0
    # user 1's target 9 is in its history: a miss under exclusion
    assert excl[0] == len(pos)
    m = evaluate_popularity(seqs, split, 9, [1, 5], exclude_history=True)
    assert m["hr@1"] == 0.25 and m["num_queries"] == 4
