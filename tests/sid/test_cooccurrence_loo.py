"""Co-occurrence SIDs for generators on logs without text: built from leave-one-out training events only."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
import torch

from genrec.config import SIDConfig, config_from_dict
from genrec.data.schema import Dataset, Interactions, fingerprint_of
from genrec.errors import ConfigError, DataError
from genrec.sid.build import item_embeddings

NUM_ITEMS = 20


def _dataset(items: list[list[int]], sessions: bool = True) -> Dataset:
    """One row of items per user, one event a minute, a new session every 3 events; categories = item % 4."""
    u = np.concatenate([np.full(len(r), k + 1) for k, r in enumerate(items)]).astype(np.int64)
    it = np.concatenate([np.asarray(r) for r in items]).astype(np.int64)
    t = np.concatenate([60 * np.arange(len(r)) for r in items]).astype(np.int64)
    sess = np.concatenate([k * 100 + np.arange(len(r)) // 3 for k, r in enumerate(items)]).astype(np.int64)
    inter = Interactions(u, it, t, session_id=sess if sessions else None)
    cat = pa.table({"item_id": np.arange(1, NUM_ITEMS + 1, dtype=np.int64),
                    "external_id": [f"i{x}" for x in range(1, NUM_ITEMS + 1)],
                    "category_id": np.arange(1, NUM_ITEMS + 1, dtype=np.int64) % 4})
    manifest = {"name": "toy", "counts": {"items": NUM_ITEMS}, "params": {}, "fingerprint": fingerprint_of(inter, {})}
    return Dataset(interactions=inter, items=cat, users=None, manifest=manifest)


ROWS = [[1, 2, 3, 4, 5, 6, 7, 8], [2, 3, 9, 10, 11, 12], [5, 6, 7, 13, 14, 15, 16], [1, 17, 18, 19, 20, 3]]


def test_vectors_ignore_the_validation_and_test_events():
    cfg = SIDConfig(embeddings="cooccurrence", seed=0)
    base = item_embeddings(cfg, _dataset(ROWS))
    assert base.vectors.shape[0] == NUM_ITEMS and torch.isfinite(base.vectors).all()
    changed = [r[:-2] + [11, 20] for r in ROWS]  # every user's last two events (valid, test targets) replaced
    again = item_embeddings(cfg, _dataset(changed))
    assert torch.equal(base.vectors, again.vectors) and base.fingerprint == again.fingerprint
    # a training event does change them
    moved = [ROWS[0][:2] + [12] + ROWS[0][3:]] + ROWS[1:]
    assert not torch.equal(base.vectors, item_embeddings(cfg, _dataset(moved)).vectors)


def test_items_sharing_sessions_or_categories_are_closer():
    vec = item_embeddings(SIDConfig(embeddings="cooccurrence", seed=0), _dataset(ROWS)).vectors
    sim = vec @ vec.T
    # 2 and 3 share two training sessions; 2 and 16 (category 0 vs 2) never meet in training
    assert sim[2 - 1, 3 - 1] > sim[2 - 1, 16 - 1]


def test_clear_errors():
    with pytest.raises(DataError, match="sessions"):
        item_embeddings(SIDConfig(embeddings="cooccurrence"), _dataset(ROWS, sessions=False))
    from genrec.train.run import train_generator_run

    cfg = config_from_dict({"model": {"name": "tiger"}, "data": {"split": "temporal"},
                            "sid": {"embeddings": "cooccurrence", "quantizer": "rqkmeans"}})
    with pytest.raises(ConfigError, match="leave-one-out"):
        train_generator_run(cfg, "unused", resume=False, dataset=_dataset(ROWS))
