"""Fixtures for the HPGR tests: the staged public datasets (skipped with a reason when absent) and a toy CTR log."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch

from genrec.data.schema import Dataset, Interactions, fingerprint_of
from genrec.data.sequences import UserSequences
from genrec.models.hpgr import SessionEncoder
from genrec.objectives import ctr_bce
from genrec.objectives.mim import MIMConfig
from genrec.train.pretrain import PretrainConfig, pretrain_sessions

SHARED_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"


@pytest.fixture
def shared_file():
    """``shared_file("movielens-100k/u.data.gz")`` -> path, or skip naming the missing file."""

    def get(rel: str) -> Path:
        path = SHARED_DATA / rel
        if not path.exists():
            pytest.skip(f"real data file {path} not present")
        return path

    return get


BEH = ["pv", "fav", "cart", "buy"]


def make_ctr_toy(num_users: int = 150, num_items: int = 40, seed: int = 0, behaviors: bool = False,
                 noise: float = 0.1) -> Dataset:
    """Users view random items; every third item is liked (rating 5, else 1), with ``noise`` flipped labels.

    Times interleave users so every part of the temporal split holds many users. With ``behaviors``:
    each rating becomes a pv, followed ten minutes later by a cart when the label is positive.
    """
    rng = np.random.default_rng(seed)
    u, i, t, y = [], [], [], []
    for user in range(1, num_users + 1):
        n = int(rng.integers(10, 20))
        items = rng.integers(1, num_items + 1, n)
        liked = (items % 3 == 0) ^ (rng.random(n) < noise)
        times = 1_000_000 + np.sort(rng.integers(0, 2_000_000, n)) * 60
        u += [user] * n
        i += items.tolist()
        t += times.tolist()
        y += liked.tolist()
    u, i, t, y = (np.asarray(a) for a in (u, i, t, y))
    order = np.lexsort((t, u))
    u, i, t, y = u[order], i[order], t[order], y[order]
    if behaviors:
        cu, ci, ct = u[y], i[y], t[y] + 600
        u2, i2, t2 = np.concatenate([u, cu]), np.concatenate([i, ci]), np.concatenate([t, ct])
        b2 = np.concatenate([np.zeros(len(u)), np.full(len(cu), BEH.index("cart"))]).astype(np.int8)
        o = np.lexsort((b2, t2, u2))
        inter = Interactions(u2[o].astype(np.int64), i2[o].astype(np.int64), t2[o].astype(np.int64),
                             behavior=b2[o])
    else:
        inter = Interactions(u.astype(np.int64), i.astype(np.int64), t.astype(np.int64),
                             rating=np.where(y, 5.0, 1.0).astype(np.float32))
    params = {"ctr_toy": seed, "behaviors": behaviors}
    items = pa.table({"item_id": np.arange(1, num_items + 1, dtype=np.int64),
                      "external_id": [f"i{x}" for x in range(1, num_items + 1)]})
    manifest = {"name": "ctr-toy", "counts": {"users": num_users, "items": num_items, "interactions": len(inter)},
                "params": params, "fingerprint": fingerprint_of(inter, params)}
    if behaviors:
        manifest["behaviors"] = BEH
    return Dataset(interactions=inter, items=items, users=None, manifest=manifest)


def mean_bce(model, batch, candidates: torch.Tensor, labels: torch.Tensor, **kw) -> torch.Tensor:
    """A ranker's training loss (the CTR objective over its logits) as the mean over real candidates."""
    s, n = ctr_bce(model.score(batch, candidates, **kw), candidates, labels)
    return s / n.clamp(min=1.0)


@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
    """A tiny stage-1 artifact (d=16) pre-trained for a few steps on synthetic sessions over 40 items (the
    catalogue size ``V`` of the tests that use it)."""
    V = 40
    rng = np.random.default_rng(0)
    its, tss, offs = [], [], [0]
    for _ in range(30):
        n = int(rng.integers(8, 30))
        its.append(rng.integers(1, V + 1, n))
        tss.append(1_000_000 + np.cumsum(rng.choice([60, 600, 20_000], n)))
        offs.append(offs[-1] + n)
    seqs = UserSequences(np.arange(1, 31), np.array(offs), np.concatenate(its), np.concatenate(tss))
    cfg = PretrainConfig(sem=SessionEncoder.Config(d_model=16, num_heads=2, intra_layers=1, inter_layers=1),
                         mim=MIMConfig(), max_len=30, epochs=1, max_steps=3, batch_size=16, probe_rows=8)
    return pretrain_sessions(seqs, int(np.quantile(seqs.timestamps, 0.8)), cfg, tmp_path_factory.mktemp("s1") / "a",
                             num_items=V)


def toy_ctr_benchmark(tmp_path: Path) -> tuple[Path, Path]:
    """(prepared toy CTR dataset folder, a one-epoch toy HSTU-ranker recipe) for the ``benchmarks/ctr.py`` tests."""
    import yaml

    from genrec.data.schema import write_dataset

    ds = make_ctr_toy()
    data = write_dataset(tmp_path / "ctr-toy", ds.interactions, ds.items, ds.manifest)
    recipe = tmp_path / "toy-ranker.yaml"
    recipe.write_text(yaml.safe_dump({
        "model": {"name": "hstu_ranker", "d_model": 16, "num_layers": 1, "num_heads": 1},
        "data": {"max_len": 16}, "ranking": {"labels": "ratings"},
        "train": {"epochs": 1, "batch_size": 64, "tensorboard": False, "patience": 0, "num_threads": 1}}))
    return Path(data), recipe
