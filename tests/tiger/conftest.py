"""Fixtures for the TIGER tests: a toy catalogue with 2-position SIDs, a deterministic next-item rule, tiny configs."""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import pytest
import torch

from genrec.config import RunConfig, config_from_dict
from genrec.data.schema import Dataset, Interactions, fingerprint_of
from genrec.models.tiger import TIGER
from genrec.sid import SIDTable

NUM_ITEMS = 10
CYCLE = [3, 7, 1, 9, 4, 10, 2, 6, 8, 5]  # item CYCLE[k] is always followed by CYCLE[k+1]


def next_item(item: int) -> int:
    return CYCLE[(CYCLE.index(item) + 1) % len(CYCLE)]


def toy_sequences(num_users: int = 30, seed: int = 0) -> Dataset:
    """Each user walks the fixed cycle from a random start for 6..11 steps: the next item is a function of the last."""
    rng = np.random.default_rng(seed)
    u, i, t = [], [], []
    for user in range(1, num_users + 1):
        n = int(rng.integers(6, 12))
        item = CYCLE[int(rng.integers(0, NUM_ITEMS))]
        for k in range(n):
            u.append(user)
            i.append(item)
            t.append(1_000 + 10 * k)
            item = next_item(item)
    inter = Interactions(np.array(u, dtype=np.int64), np.array(i, dtype=np.int64), np.array(t, dtype=np.int64))
    params = {"tiger_toy": seed}
    items = pa.table({"item_id": np.arange(1, NUM_ITEMS + 1, dtype=np.int64),
                      "external_id": [f"i{x}" for x in range(1, NUM_ITEMS + 1)]})
    manifest = {"name": "tiger-toy", "counts": {"users": num_users, "items": NUM_ITEMS, "interactions": len(u)},
                "params": params, "fingerprint": fingerprint_of(inter, params)}
    return Dataset(interactions=inter, items=items, users=None, manifest=manifest)


def toy_table() -> SIDTable:
    """10 items, one quantizer level of 4 codes ((id-1)//3) + the collision level: SIDs (c, 0..2), sizes (4, 3)."""
    ids = np.arange(1, NUM_ITEMS + 1)
    return SIDTable.build(ids, ((ids - 1) // 3)[:, None], [4], quantizer="toy")


TINY_MODEL: dict[str, Any] = {"name": "tiger", "d_model": 32, "num_encoder_layers": 1, "num_decoder_layers": 1,
                              "num_heads": 2, "head_dim": 16, "d_ff": 64, "dropout": 0.0, "codebook_size": 4,
                              "sid_length": 2, "num_user_buckets": 16}


def tiny_cfg(model: dict[str, Any] | None = None, **train: Any) -> RunConfig:
    raw = {"model": {**TINY_MODEL, **(model or {})}, "data": {"max_len": 20},
           "train": {"epochs": 2, "batch_size": 32, "lr": 3e-3, "device": "cpu", "progress": False,
                     "tensorboard": False, "patience": 0, "seed": 3,
                     "early_stop_metric": "ndcg@5", **train},
           "eval": {"ks": [1, 5]}}
    return config_from_dict(raw)


def tiny_model(seed: int = 0, **over: Any) -> TIGER:
    torch.manual_seed(seed)
    params = {k: v for k, v in {**TINY_MODEL, **over}.items() if k != "name"}
    model = TIGER(TIGER.Config(**params), num_items=NUM_ITEMS, max_len=20)
    model.set_sid_table(toy_table())
    return model.eval()


@pytest.fixture
def toy_data() -> Dataset:
    return toy_sequences()


@pytest.fixture
def table() -> SIDTable:
    return toy_table()
