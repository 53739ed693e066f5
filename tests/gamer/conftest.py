"""Fixtures for the GAMER tests: hand-built multi-behavior logs, a toy SID table and tiny models."""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import torch

from genrec.data.schema import Dataset, Interactions, fingerprint_of
from genrec.models.gamer import GAMER
from genrec.sid import SIDTable

BEHAVIORS = ["pv", "fav", "cart", "buy"]  # levels 0 < 1 < 2 < 3
NUM_ITEMS = 12
CYCLE = [3, 7, 1, 9, 4, 12, 10, 2, 6, 11, 8, 5]  # session k of a user is about CYCLE[start + k]


def make_dataset(events: list[tuple[int, int, int, int]], num_items: int = NUM_ITEMS,
                 behaviors: list[str] | None = None, name: str = "gamer-toy") -> Dataset:
    """(user, item, timestamp, behavior id) events -> a prepared-like Dataset sorted by (user, time)."""
    ev = sorted(events, key=lambda e: (e[0], e[2]))
    u, i, t, b = (np.array(col, dtype=np.int64) for col in zip(*ev))
    inter = Interactions(u, i, t, behavior=b.astype(np.int8))
    params = {"toy": name}
    items = pa.table({"item_id": np.arange(1, num_items + 1, dtype=np.int64),
                      "external_id": [f"i{x}" for x in range(1, num_items + 1)]})
    manifest = {"name": name, "behaviors": list(behaviors or BEHAVIORS),
                "counts": {"users": int(u.max()), "items": num_items, "interactions": len(ev)},
                "params": params, "fingerprint": fingerprint_of(inter, params)}
    return Dataset(interactions=inter, items=items, users=None, manifest=manifest)


def cycle_events(num_users: int = 24, seed: int = 0) -> list[tuple[int, int, int, int]]:
    """Each user walks CYCLE, one session per step (an hour apart): buy the step's item, view it again, and
    sometimes cart a random item. The next purchase is a function of the last session's item."""
    rng = np.random.default_rng(seed)
    out = []
    for user in range(1, num_users + 1):
        start = int(rng.integers(0, NUM_ITEMS))
        for k in range(int(rng.integers(5, 8))):
            item = CYCLE[(start + k) % NUM_ITEMS]
            t0 = 10_000 + 3_600 * k
            out += [(user, item, t0, 3), (user, item, t0 + 10, 0)]
            if rng.random() < 0.3:
                out.append((user, int(rng.integers(1, NUM_ITEMS + 1)), t0 + 5, 2))
    return out


def next_in_cycle(item: int) -> int:
    return CYCLE[(CYCLE.index(item) + 1) % NUM_ITEMS]


def toy_table(num_items: int = NUM_ITEMS) -> SIDTable:
    """Two quantizer levels (4 x 2 codes) + the collision level: sid_length 3, every code < 4."""
    ids = np.arange(1, num_items + 1)
    return SIDTable.build(ids, np.stack([(ids - 1) // 3 % 4, (ids - 1) % 2], 1), [4, 2], quantizer="toy")


TINY: dict[str, Any] = {"d_model": 32, "num_layers": 4, "num_heads": 4, "num_kv_heads": 2, "head_dim": 8,
                        "d_ff": 64, "dropout": 0.0, "cross_layers": 2, "injection_layers": 2, "behavior_dim": 8,
                        "num_behaviors": 4, "codebook_size": 4, "sid_length": 3, "rope_theta": 100.0}


def tiny_model(seed: int = 0, **over: Any) -> GAMER:
    torch.manual_seed(seed)
    model = GAMER(GAMER.Config(**{**TINY, **over}), num_items=NUM_ITEMS, max_len=10)
    model.set_sid_table(toy_table())
    return model.eval()


def bench_toy(root: Any, name: str = "gamer-toy.yaml") -> dict[str, Any]:
    """What the benchmarks/gamer.py tests share: the toy log written to ``root/data``, the toy SID table to
    ``root/sids.json``, and a one-epoch tiny GAMER recipe over them written to ``root/name`` (returned)."""
    import yaml

    from genrec.data.schema import write_dataset

    ds = make_dataset(cycle_events(num_users=8, seed=5))
    write_dataset(root / "data", ds.interactions, ds.items, ds.manifest)
    toy_table().save(root / "sids.json")
    recipe = {"source": "test", "model": {"name": "gamer", **TINY}, "data": {"max_len": 10},
              "train": {"epochs": 1, "device": "cpu", "tensorboard": False}, "eval": {"ks": [1, 5]},
              "generator": {"beam_size": 5}, "sid": {"table": str(root / "sids.json")},
              "multibehavior": {"session_gap": 1800, "augment": 1}}
    (root / name).write_text(yaml.safe_dump(recipe))
    return recipe
