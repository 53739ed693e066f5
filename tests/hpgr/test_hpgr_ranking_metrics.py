"""AUC / GAUC / LogLoss against hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest

from genrec.eval.ranking import auc, gauc, log_loss, ranking_metrics


def test_auc_hand_values():
    # pairs (pos, neg): (0.8,0.1) win, (0.8,0.4) win, (0.35,0.1) win, (0.35,0.4) loss -> 3/4
    assert auc([1, 0, 1, 0], [0.8, 0.1, 0.35, 0.4]) == pytest.approx(0.75)
    assert auc([1, 0], [0.5, 0.5]) == pytest.approx(0.5)  # a tie counts half
    assert auc([1, 1, 0], [0.3, 0.3, 0.3]) == pytest.approx(0.5)
    assert math.isnan(auc([1, 1], [0.1, 0.2]))


def pairwise_auc(labels, scores) -> float:
    """The definition, pair by pair: P(positive scores above negative), a tie counting half."""
    y, s = np.asarray(labels).astype(bool), np.asarray(scores, dtype=np.float64)
    diff = s[y][:, None] - s[~y][None, :]  # (P, N)
    return float(((diff > 0) + 0.5 * (diff == 0)).mean())


def test_auc_matches_the_pairwise_definition_with_ties():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 500)
    s = rng.integers(0, 20, 500).astype(float)  # many ties
    assert auc(y, s) == pytest.approx(pairwise_auc(y, s), abs=1e-12)


def test_gauc_hand_values():
    users = [1, 1, 1, 2, 2, 3, 3, 3, 3]
    labels = [1, 0, 0, 0, 0, 1, 0, 1, 0]
    scores = [0.9, 0.2, 0.95, 0.5, 0.1, 0.6, 0.6, 0.2, 0.1]
    # user 1: pos 0.9 vs negs 0.2 (win), 0.95 (loss) -> 0.5, weight 3
    # user 2: one class only -> left out
    # user 3: pos {0.6, 0.2} vs negs {0.6, 0.1}: 0.5 + 1 + 0 + 1 = 2.5 / 4 = 0.625, weight 4
    value, n = gauc(labels, scores, users)
    assert n == 2
    assert value == pytest.approx((0.5 * 3 + 0.625 * 4) / 7)
    assert math.isnan(gauc([1, 1], [0.1, 0.2], [5, 5])[0])


def test_logloss_hand_values_and_clipping():
    expected = -(math.log(0.8) + math.log(1 - 0.3)) / 2
    assert log_loss([1, 0], [0.8, 0.3]) == pytest.approx(expected)
    assert log_loss([1], [0.0]) == pytest.approx(-math.log(1e-7))  # clipped, finite
    m = ranking_metrics(np.array([1, 0]), np.array([math.log(4.0), 0.0]), users=np.array([1, 1]))
    assert m["logloss"] == pytest.approx(-(math.log(0.8) + math.log(0.5)) / 2)
    assert m["auc"] == m["gauc"] == 1.0 and m["gauc_users"] == 1 and m["num_impressions"] == 2
