"""Multi-behavior data: level order, session split, per-behavior targets, augmentation, no test event in training."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from genrec.data.multibehavior import (
    BehaviorLevels,
    MultiBehaviorConfig,
    behavior_queries,
    candidate_items,
    session_split,
    thinned_copies,
    training_sequences,
)
from genrec.errors import ConfigError, DataError
from genrec.eval.multibehavior import query_histories
from genrec.train.gamer import ValidRows
from tests.gamer.conftest import cycle_events, make_dataset

H = 3_600

# user 1: sessions at t=0 (train), 10h (train), 20h (valid), 30h (test); user 2: one session only
EVENTS = [
    (1, 1, 0, 0), (1, 2, 60, 3),
    (1, 3, 10 * H, 0), (1, 4, 10 * H + 5, 1), (1, 5, 10 * H + 9, 2),
    (1, 6, 20 * H, 0), (1, 7, 20 * H + 1, 3),
    (1, 8, 30 * H, 0), (1, 9, 30 * H + 2, 3), (1, 10, 30 * H + 3, 3), (1, 9, 30 * H + 4, 3), (1, 11, 30 * H + 5, 2),
    (2, 1, 0, 0), (2, 2, 100, 3),
]


def test_levels_from_manifest_and_overrides():
    lv = BehaviorLevels.from_manifest({"behaviors": ["pv", "fav", "cart", "buy"]})
    assert lv.levels == (0, 1, 2, 3) and lv.top == 3 and lv.id_of("cart") == 2
    swapped = BehaviorLevels.from_manifest({"behaviors": ["pv", "fav", "cart", "buy"]}, ["pv", "cart", "fav", "buy"])
    assert swapped.as_dict() == {"pv": 0, "fav": 2, "cart": 1, "buy": 3}
    custom = BehaviorLevels.from_manifest({"behaviors": ["pv", "fav", "cart", "buy"]},
                                          {"pv": 0, "fav": 1, "cart": 1, "buy": 5})
    assert custom.top == 3 and custom.levels == (0, 1, 1, 5)
    with pytest.raises(ConfigError, match="top level"):
        BehaviorLevels.from_manifest({"behaviors": ["pv", "buy"]}, {"pv": 1, "buy": 1})
    with pytest.raises(ConfigError, match="exactly once"):
        BehaviorLevels.from_manifest({"behaviors": ["pv", "buy"]}, ["pv", "cart"])
    with pytest.raises(DataError, match="behavior"):
        BehaviorLevels.from_manifest({"name": "ml"})
    with pytest.raises(ConfigError, match="candidates"):
        MultiBehaviorConfig(candidates="every").check()


def test_session_split_by_gap_and_per_behavior_targets():
    ds = make_dataset(EVENTS)
    sp = session_split(ds.interactions, BehaviorLevels.from_manifest(ds.manifest), session_gap=H)
    assert sp.valid_start.tolist() == [5, 0] and sp.test_start.tolist() == [7, 0]
    assert len(np.unique(sp.seqs.session_ids)) == 5  # 4 sessions of user 1 + 1 of user 2
    buy = behavior_queries(sp, "test", 3)
    assert buy.rows.tolist() == [0] and buy.hist_end.tolist() == [7]
    assert [s.tolist() for s in buy.target_sets()] == [[9, 10]]  # distinct items bought in the test session
    assert [s.tolist() for s in behavior_queries(sp, "test", 2).target_sets()] == [[11]]
    assert len(behavior_queries(sp, "test", 1)) == 0  # no fav in the test session
    assert [s.tolist() for s in behavior_queries(sp, "valid", 3).target_sets()] == [[7]]
    # user 2 has one session and no history: excluded with min_history=1, kept with 0
    assert 1 in behavior_queries(sp, "test", 3, min_history=0).rows.tolist()
    assert candidate_items(sp, 3, "behavior").tolist() == [2, 7, 9, 10]
    assert candidate_items(sp, 3, "behavior_history").tolist() == [2, 7]  # events before the test sessions
    assert candidate_items(sp, 3, "behavior_history", which="valid").tolist() == [2]
    assert candidate_items(sp, 3, "all").size == 11
    # a 12h gap merges each user's events into one session: nothing left to train or validate on
    merged = session_split(ds.interactions, sp.levels, session_gap=12 * H)
    assert merged.test_start.tolist() == [0, 0] and merged.valid_start.tolist() == [0, 0]


def test_no_test_session_event_reaches_training_inputs():
    ds = make_dataset(cycle_events(num_users=30, seed=4))
    sp = session_split(ds.interactions, BehaviorLevels.from_manifest(ds.manifest), session_gap=1800)
    test_mask = sp.part_mask("test")
    valid_mask = sp.part_mask("valid")
    assert test_mask.sum() > 0 and valid_mask.sum() > 0
    for windows in ("last", "all"):
        seqs = training_sequences(sp, max_len=3, augment=4, windows=windows, seed=1)
        assert len(seqs) > 30 and seqs.augmented.any()
        assert not test_mask[seqs.index].any() and not valid_mask[seqs.index].any()
        assert (np.diff(seqs.offsets) <= 4).all()  # windows of max_len + 1 interactions
        for s in range(len(seqs)):  # every sequence stays inside its own user's training part
            ev = seqs.events(s)
            u = seqs.rows[s]
            rel = ev - sp.seqs.offsets[u]
            assert (rel >= 0).all() and (rel < sp.valid_start[u]).all() and (np.diff(ev) > 0).all()
    vr = ValidRows(sp, max_len=5, min_history=1)
    assert len(vr) > 0
    for h, br in zip(vr.hist, vr.branches):
        assert not test_mask[h].any() and not test_mask[br].any() and valid_mask[br].all()
    q = behavior_queries(sp, "test", 3)
    items, _ = query_histories(sp, q, max_len=50)
    for row, end, hist in zip(q.rows, q.hist_end, items):
        expect = sp.seqs.items[sp.seqs.offsets[row]:sp.seqs.offsets[row] + end][-50:]
        assert hist[hist > 0].tolist() == expect.tolist()  # the history stops where the test session starts


def test_augmentation_thins_lower_levels_and_never_the_top_level():
    levels = np.array([0, 1, 2, 3])
    rng = np.random.default_rng(0)
    for trial in range(200):
        n = int(rng.integers(2, 40))
        beh = rng.integers(0, 4, n)
        copies = thinned_copies(beh, levels, 4, np.random.default_rng(trial))
        for keep in copies:
            assert keep[beh == 3].all()  # conversions are never dropped
            assert keep.sum() >= 2
    beh = np.array([0] * 8 + [1] * 4 + [2] * 6 + [3] * 2)
    copies = thinned_copies(beh, levels, 4, np.random.default_rng(1))
    assert len(copies) == 4
    # copy k drops floor(n_b * (k/4) / (level_b + 1)) events of behavior b
    expected = [[2, 0, 0, 0], [4, 1, 1, 0], [6, 1, 1, 0], [8, 2, 2, 0]]
    assert [[int((~keep[beh == b]).sum()) for b in range(4)] for keep in copies] == expected
    assert not copies[-1][beh == 0].any()  # at ratio 1 the lowest level is gone entirely
    # a copy left with fewer than two events is not produced
    assert thinned_copies(np.array([0, 0, 0, 3]), levels, 1, np.random.default_rng(0)) == []


def test_cooccurrence_sid_inputs_never_read_evaluation_sessions():
    from genrec.sid.cooccurrence import cooccurrence_embeddings

    base = cycle_events(num_users=12, seed=3)
    ds = make_dataset(base)
    lv = BehaviorLevels.from_manifest(ds.manifest)
    sp = session_split(ds.interactions, lv, 1800)
    emb = cooccurrence_embeddings(sp, 12, dim=4, seed=0)
    # rewrite every validation and test event's item: the embeddings must not move
    held_out = sp.part_mask("valid") | sp.part_mask("test")
    changed = ds.interactions.item_id.copy()
    changed[held_out] = (changed[held_out] % 12) + 1
    ds2 = make_dataset([(int(u), int(i), int(t), int(b)) for u, i, t, b in zip(
        ds.interactions.user_id, changed, ds.interactions.timestamp, ds.interactions.behavior)])
    emb2 = cooccurrence_embeddings(session_split(ds2.interactions, lv, 1800), 12, dim=4, seed=0)
    assert held_out.any() and emb.vectors.shape == (12, 4 + 8)
    assert torch.allclose(emb.vectors, emb2.vectors, atol=1e-5)
    # while changing a training event does move them
    train = np.flatnonzero(sp.part_mask("train"))
    changed3 = ds.interactions.item_id.copy()
    changed3[train[:10]] = (changed3[train[:10]] % 12) + 1
    ds3 = make_dataset([(int(u), int(i), int(t), int(b)) for u, i, t, b in zip(
        ds.interactions.user_id, changed3, ds.interactions.timestamp, ds.interactions.behavior)])
    emb3 = cooccurrence_embeddings(session_split(ds3.interactions, lv, 1800), 12, dim=4, seed=0)
    assert not torch.allclose(emb.vectors, emb3.vectors, atol=1e-3)
