"""Fixtures for the GLASS tests: a toy catalogue whose level-1 code is ``(id-1) % 4``, content vectors clustered
by that code, and user histories without repeated items (so an item id names one position of its history)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import pytest
import torch

from genrec.config import RunConfig, config_from_dict
from genrec.data.schema import Dataset, Interactions, fingerprint_of
from genrec.models.glass import GLASS
from genrec.sid import SIDTable

NUM_ITEMS = 24
LEVEL1 = 4
SHORT = 3  # data.max_len: the encoder's window
LONG = 6  # model.long_len


def toy_table() -> SIDTable:
    """24 items: level 1 = (id-1) % 4, level 2 = (id-1) // 4, plus the (constant) collision level."""
    ids = np.arange(1, NUM_ITEMS + 1)
    codes = np.stack([(ids - 1) % LEVEL1, (ids - 1) // LEVEL1], 1)
    return SIDTable.build(ids, codes, [LEVEL1, NUM_ITEMS // LEVEL1], quantizer="toy")


def toy_vectors(dim: int = 8, seed: int = 0) -> np.ndarray:
    """(NUM_ITEMS, dim) vectors around one centre per level-1 code."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(LEVEL1, dim)) * 3.0
    ids = np.arange(1, NUM_ITEMS + 1)
    return (centres[(ids - 1) % LEVEL1] + 0.3 * rng.normal(size=(NUM_ITEMS, dim))).astype(np.float32)


def toy_dataset(num_users: int = 16, seed: int = 0) -> Dataset:
    """Each user sees 12..24 distinct items in a random order."""
    rng = np.random.default_rng(seed)
    u, i, t = [], [], []
    for user in range(1, num_users + 1):
        n = int(rng.integers(12, NUM_ITEMS + 1))
        seq = rng.permutation(NUM_ITEMS)[:n] + 1
        u += [user] * n
        i += seq.tolist()
        t += list(1_000 + 10 * np.arange(n))
    inter = Interactions(np.array(u, dtype=np.int64), np.array(i, dtype=np.int64), np.array(t, dtype=np.int64))
    params = {"glass_toy": seed}
    items = pa.table({"item_id": np.arange(1, NUM_ITEMS + 1, dtype=np.int64),
                      "external_id": [f"i{x}" for x in range(1, NUM_ITEMS + 1)]})
    manifest = {"name": "glass-toy", "counts": {"users": num_users, "items": NUM_ITEMS, "interactions": len(u)},
                "params": params, "fingerprint": fingerprint_of(inter, params)}
    return Dataset(interactions=inter, items=items, users=None, manifest=manifest)


TINY: dict[str, Any] = {"name": "glass", "d_model": 32, "num_encoder_layers": 1, "num_decoder_layers": 2,
                        "num_heads": 2, "head_dim": 16, "d_ff": 64, "dropout": 0.0, "codebook_size": 6,
                        "sid_length": 3, "num_user_buckets": 16, "long_len": LONG, "num_tiers": 5,
                        "tier_hidden": 16, "retrieve_max": 3, "recency_buckets": 4}


def tiny_model(seed: int = 0, vectors: bool = True, **over: Any) -> GLASS:
    torch.manual_seed(seed)
    params = {k: v for k, v in {**TINY, **over}.items() if k != "name"}
    model = GLASS(GLASS.Config(**params), num_items=NUM_ITEMS, max_len=SHORT)
    model.set_sid_table(toy_table())
    if vectors:
        model.set_item_vectors(np.arange(1, NUM_ITEMS + 1), torch.from_numpy(toy_vectors()))
    return model.eval()


def tiny_cfg(emb_file: str, model: dict[str, Any] | None = None, **train: Any) -> RunConfig:
    raw = {"model": {**TINY, **(model or {})}, "data": {"max_len": SHORT},
           "sid": {"embeddings": "file", "embeddings_file": emb_file, "quantizer": "rqkmeans", "levels": 2,
                   "codebook_size": 4},
           "generator": {"warmup_steps": 100000, "beam_size": 5, "test_other_decoding": False},
           "train": {"epochs": 1, "batch_size": 32, "lr": 3e-3, "device": "cpu", "progress": False,
                     "tensorboard": False, "patience": 0, "seed": 3, "early_stop_metric": "ndcg@5", **train},
           "eval": {"ks": [1, 5]}}
    return config_from_dict(raw)


@pytest.fixture
def model() -> GLASS:
    return tiny_model()


@pytest.fixture
def emb_file(tmp_path) -> str:
    path = tmp_path / "emb.npy"
    np.save(path, toy_vectors())
    return str(path)
