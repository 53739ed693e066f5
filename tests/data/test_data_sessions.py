import numpy as np
import pytest

from genrec.data.sessions import sessionize
from genrec.errors import ConfigError, DataError


def s(users, times, gap=10, cap=50):
    return sessionize(np.asarray(users), np.asarray(times), gap, cap).tolist()


def test_gap_exactly_tau_stays_together_and_tau_plus_one_splits():
    assert s([1, 1], [0, 10]) == [1, 1]
    assert s([1, 1], [0, 11]) == [1, 2]


def test_equal_timestamps_stay_together():
    assert s([1, 1, 1, 1], [5, 5, 5, 5]) == [1, 1, 1, 1]


def test_single_events_and_user_change():
    assert s([1], [100]) == [1]
    assert s([1, 2, 3], [0, 0, 0]) == [1, 2, 3]
    # same time, different user: still a new session
    assert s([1, 1, 2, 2], [0, 1, 1, 2]) == [1, 1, 2, 2]


def test_empty_input():
    assert s([], []) == []


def test_over_long_session_cut_at_max_len():
    out = s([1] * 7, [0] * 7, gap=10, cap=3)
    assert out == [1, 1, 1, 2, 2, 2, 3]
    # the cap restarts after a gap split
    out = s([1] * 5, [0, 1, 100, 101, 102], gap=10, cap=2)
    assert out == [1, 1, 2, 2, 3]


def test_no_cap_and_no_gap():
    assert s([1] * 4, [0, 100, 200, 300], gap=None, cap=None) == [1, 1, 1, 1]
    assert s([1] * 4, [0, 0, 0, 0], gap=0, cap=0) == [1, 1, 1, 1]


def test_ids_are_consecutive_int64_and_match_reference():
    rng = np.random.default_rng(0)
    users = np.sort(rng.integers(1, 30, 2000))
    times = np.zeros_like(users)
    for u in np.unique(users):
        m = users == u
        times[m] = np.sort(rng.integers(0, 500, m.sum()))
    out = sessionize(users, times, 20, 7)
    assert out.dtype == np.int64 and out[0] == 1
    assert set(np.diff(out).tolist()) <= {0, 1}
    # reference: plain loop
    ref, sid, n = [], 0, 0
    for j in range(len(users)):
        if j == 0 or users[j] != users[j - 1] or times[j] - times[j - 1] > 20 or n == 7:
            sid, n = sid + 1, 0
        n += 1
        ref.append(sid)
    assert out.tolist() == ref


def test_unsorted_or_bad_args_are_clear_errors():
    with pytest.raises(DataError, match="sorted"):
        s([1, 1], [5, 3])
    with pytest.raises(DataError, match="sorted"):
        s([2, 1], [0, 0])
    with pytest.raises(ConfigError, match="session_gap"):
        s([1], [0], gap=-1)
