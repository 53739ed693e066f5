import numpy as np
import pytest

from genrec.data.schema import Interactions
from genrec.data.sequences import UserSequences, batch_order, make_train_batch
from genrec.data.splits import leave_one_out, make_split, temporal
from genrec.errors import ConfigError


def seqs_from(rows):
    u, i, t = [], [], []
    for uid, items in enumerate(rows, 1):
        u += [uid] * len(items)
        i += items
        t += list(range(100 * uid, 100 * uid + len(items)))
    return UserSequences.from_interactions(Interactions(np.array(u), np.array(i), np.array(t)))


def test_leave_one_out_keeps_a_real_validation_item():
    s = seqs_from([[1, 2, 3, 4, 5], [6, 7], [8]])
    sp = leave_one_out(s)
    assert sp.train_end.tolist() == [3, 0, 0]
    assert sp.valid.rows.tolist() == [0] and sp.valid.hist_end.tolist() == [3]
    assert sp.test.rows.tolist() == [0, 1] and sp.test.hist_end.tolist() == [4, 1]
    # training batch never contains the validation (4) or test (5) item, as input or target
    b = make_train_batch(s, np.array([0]), sp.train_end, max_len=10)
    assert b.items[0, : b.lengths[0]].tolist() == [1, 2]
    assert b.targets[0, : b.lengths[0]].tolist() == [2, 3]
    assert sp.train_rows().tolist() == [0]


def test_train_batch_truncates_to_the_most_recent_window():
    s = seqs_from([list(range(1, 31))])
    b = make_train_batch(s, np.array([0]), np.array([30]), max_len=5)
    assert b.items[0].tolist() == [25, 26, 27, 28, 29]
    assert b.targets[0].tolist() == [26, 27, 28, 29, 30]
    assert int(b.query_time[0]) == int(b.target_times[0, -1])


def test_temporal_split_never_trains_on_events_after_the_cut():
    rng = np.random.default_rng(0)
    u = np.repeat(np.arange(1, 51), 20)
    t = np.concatenate([np.sort(rng.integers(0, 10_000, 20)) for _ in range(50)])
    s = UserSequences.from_interactions(Interactions(u, rng.integers(1, 100, len(u)), t))
    sp = temporal(s, 0.1, 0.1)
    t_valid, t_test = sp.params["t_valid"], sp.params["t_test"]
    for r in range(len(s)):
        ts = s.timestamps[s.row(r)]
        assert (ts[: sp.train_end[r]] < t_valid).all()
    for r, e in zip(sp.test.rows, sp.test.hist_end):
        ts = s.timestamps[s.row(r)]
        assert ts[e] >= t_test and (ts[:e] < t_test).all()
    with pytest.raises(ConfigError):
        make_split(s, "random")


def test_batch_order_covers_every_row_once_and_groups_lengths():
    lengths = np.random.default_rng(1).integers(1, 100, 1000)
    batches = batch_order(lengths, 32, np.random.default_rng(0), bucketing=True)
    allrows = np.concatenate(batches)
    assert sorted(allrows.tolist()) == list(range(1000))
    spread = np.mean([lengths[b].max() - lengths[b].min() for b in batches])
    plain = batch_order(lengths, 32, np.random.default_rng(0), bucketing=False)
    assert spread < 0.5 * np.mean([lengths[b].max() - lengths[b].min() for b in plain])
    again = batch_order(lengths, 32, np.random.default_rng(0), bucketing=True)
    assert all((a == b).all() for a, b in zip(batches, again))


def test_jagged_view_round_trips():
    s = seqs_from([[1, 2, 3], [4, 5]])
    b = make_train_batch(s, np.array([0, 1]), np.array([3, 2]), max_len=10)
    values, offsets = b.jagged()
    assert values.tolist() == [1, 2, 4] and offsets.tolist() == [0, 2, 3]
