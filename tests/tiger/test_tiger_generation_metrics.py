"""Beam lists -> ranks -> HR/Recall/NDCG, on hand-built beams."""

from __future__ import annotations

import math

import numpy as np
import pytest

from genrec.data.sequences import UserSequences
from genrec.errors import ConfigError
from genrec.eval.generation import beam_ranks, generation_metrics, history_matrix
from tests.tiger.conftest import NUM_ITEMS, tiny_model

BEAMS = np.array([[5, 3, 9, 1],
                  [-1, 7, -1, 2],  # invalid SIDs in slots 0 and 2
                  [4, 6, 8, 10]])
TARGETS = np.array([9, 2, 11])  # rank 2; rank 3 raw / 1 among valid beams; absent


def test_ranks_are_beam_positions_and_missing_is_beyond_the_list():
    assert beam_ranks(BEAMS, TARGETS, filter_invalid=False).tolist() == [2.0, 3.0, math.inf]
    assert beam_ranks(BEAMS, TARGETS).tolist() == [2.0, 1.0, math.inf]
    assert beam_ranks(np.array([[-1, -1]]), np.array([-1]))[0] == math.inf  # invalid never matches


def test_metrics_on_hand_built_beams():
    m = generation_metrics(BEAMS, TARGETS, [1, 2, 3, 4])
    assert m["hr@1"] == 0.0 and m["recall@2"] == pytest.approx(1 / 3) and m["hr@3"] == pytest.approx(2 / 3)
    assert m["ndcg@2"] == pytest.approx((1 / math.log2(3)) / 3)
    assert m["ndcg@4"] == pytest.approx((1 / math.log2(4) + 1 / math.log2(3)) / 3)
    assert m["mrr"] == pytest.approx((1 / 3 + 1 / 2) / 3) and m["num_queries"] == 3
    raw = generation_metrics(BEAMS, TARGETS, [4], filter_invalid=False)
    assert raw["ndcg@4"] == pytest.approx((1 / math.log2(4) + 1 / math.log2(5)) / 3)
    with pytest.raises(ConfigError, match="beam size"):
        generation_metrics(BEAMS, TARGETS, [5])


def test_history_matrix_keeps_the_last_window():
    seqs = UserSequences(user_ids=np.array([1, 2]), offsets=np.array([0, 5, 7]),
                         items=np.array([1, 2, 3, 4, 5, 6, 7]), timestamps=np.arange(7))
    h = history_matrix(seqs, np.array([0, 1, 0]), np.array([4, 1, 2]), max_len=3)
    assert h.tolist() == [[2, 3, 4], [6, 0, 0], [1, 2, 0]]


def test_recommend_returns_k_items_when_the_history_is_longer_than_the_beam():
    """Before: the beam was widened only by the distinct items of the short window while the whole history was
    removed afterwards, so `genrec recommend` on a long history returned fewer than k items without a word."""
    from genrec.eval.generation import generate_top_k

    model = tiny_model()
    rng = np.random.default_rng(0)
    for n_hist in (6, 7, 8):
        histories = [rng.permutation(np.arange(1, NUM_ITEMS + 1))[:n_hist].astype(np.int64) for _ in range(6)]
        for k in (1, 2, NUM_ITEMS - n_hist):
            lists = generate_top_k(model, histories, k, True, beam_size=3, short_len=2)
            for h, rows in zip(histories, lists):
                items = [i for i, _ in rows]
                assert len(items) == k and len(set(items)) == k and not set(items) & set(h.tolist())
    # more than the catalogue holds: every unseen item once, no more
    h = np.arange(1, 9, dtype=np.int64)
    assert sorted(i for i, _ in generate_top_k(model, [h], 5, True, 3, 2)[0]) == [9, 10]
