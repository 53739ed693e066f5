"""The one key-tuple grouping shared by the impression labels and the MTGR cross features."""

import numpy as np

from genrec.data.features import dense_ids as features_dense_ids
from genrec.data.impressions import dense_ids


def test_dense_ids_number_key_tuples_in_sorted_order():
    rng = np.random.default_rng(0)
    keys = [rng.integers(0, 4, size=300), rng.integers(0, 3, size=300), rng.integers(0, 5, size=300)]
    _, expected = np.unique(np.stack(keys, 1), axis=0, return_inverse=True)
    got = dense_ids(*keys)
    assert got.dtype == np.int64
    assert np.array_equal(got, expected.reshape(-1))
    assert features_dense_ids is dense_ids  # one implementation, not two copies


def test_dense_ids_of_no_rows():
    out = dense_ids(np.zeros(0, np.int64), np.zeros(0, np.int64))
    assert out.shape == (0,) and out.dtype == np.int64
