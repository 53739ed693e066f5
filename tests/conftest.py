"""Shared fixtures: a tiny deterministic dataset with strong sequential structure."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch

from genrec.data.schema import Dataset, Interactions, fingerprint_of, write_dataset

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(autouse=True)
def _one_thread():
    """The test machine is shared (CI has 2 cores): every test runs single-threaded, then restores the setting."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def make_toy(num_users: int = 120, num_items: int = 60, seed: int = 0) -> Dataset:
    """Users walk through the catalogue with a fixed stride, so the next item is predictable."""
    rng = np.random.default_rng(seed)
    u, i, t = [], [], []
    for user in range(1, num_users + 1):
        n = int(rng.integers(6, 25))
        start, step = int(rng.integers(0, num_items)), int(rng.integers(1, 3))
        u += [user] * n
        i += [(start + k * step) % num_items + 1 for k in range(n)]
        t += list(1_000_000 + np.cumsum(rng.integers(1, 5000, n)))
    inter = Interactions(np.array(u, dtype=np.int64), np.array(i, dtype=np.int64), np.array(t, dtype=np.int64))
    params = {"toy": seed}
    items = pa.table({"item_id": np.arange(1, num_items + 1, dtype=np.int64),
                      "external_id": [f"i{x}" for x in range(1, num_items + 1)],
                      "title": [f"Toy item {x}" for x in range(1, num_items + 1)]})
    users = pa.table({"user_id": np.arange(1, num_users + 1, dtype=np.int64),
                      "external_id": [f"u{x}" for x in range(1, num_users + 1)]})
    manifest = {"name": "toy", "counts": {"users": num_users, "items": num_items, "interactions": len(u)},
                "params": params, "fingerprint": fingerprint_of(inter, params)}
    return Dataset(interactions=inter, items=items, users=users, manifest=manifest)


@pytest.fixture
def toy() -> Dataset:
    return make_toy()


@pytest.fixture
def toy_dir(tmp_path: Path) -> Path:
    ds = make_toy()
    out = tmp_path / "toy"
    write_dataset(out, ds.interactions, ds.items, ds.manifest, ds.users)
    return out


def tiny_cfg(model: str = "sasrec", **sections) -> dict:
    raw = {
        "model": {"name": model, "d_model": 16, "num_layers": 1, "num_heads": 1},
        "data": {"max_len": 20},
        "objective": {"name": "sampled_softmax", "num_negatives": 16},
        "train": {"epochs": 2, "batch_size": 32, "progress": False, "tensorboard": False, "patience": 0},
        "eval": {"ks": [1, 5, 10]},
    }
    for k, v in sections.items():
        raw.setdefault(k, {}).update(v)
    return raw


def load_benchmark(stem: str):
    """Import ``benchmarks/<stem>.py`` as a module (the scripts are not a package; they import ``common``)."""
    import importlib.util
    import sys

    bench = Path(__file__).resolve().parents[1] / "benchmarks"
    sys.path.insert(0, str(bench))
    try:
        spec = importlib.util.spec_from_file_location(f"bench_{stem}", bench / f"{stem}.py")
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
    finally:
        sys.path.remove(str(bench))
    return mod


def latest_state(run_dir: Path) -> dict:
    """The loop state (``state.json``) of a run folder's latest checkpoint."""
    import json

    ckpt = Path(run_dir) / "checkpoints"
    return json.loads((ckpt / (ckpt / "latest").read_text().strip() / "state.json").read_text())


def latest_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    """The weights of a run folder's latest checkpoint."""
    from safetensors.torch import load_file

    ckpt = Path(run_dir) / "checkpoints"
    return load_file(str(ckpt / (ckpt / "latest").read_text().strip() / "model.safetensors"))


def assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    """Bit-identical tensors under the same names."""
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def train_toy_run(data_dir: Path, out: Path, model: str = "sasrec", **sections) -> Path:
    """Train a tiny recipe on the toy dataset written at ``data_dir`` into the run folder ``out``."""
    from genrec.config import config_from_dict
    from genrec.data.schema import load_dataset
    from genrec.train.run import train_run

    train_run(config_from_dict(tiny_cfg(model, data={"path": str(data_dir)}, **sections)), out,
              dataset=load_dataset(data_dir))
    return out


def write_toy(root: Path) -> Path:
    """The toy dataset written as a prepared folder under ``root``."""
    ds = make_toy()
    return write_dataset(root / "toy", ds.interactions, ds.items, ds.manifest, ds.users)


RECORD_KEYS = ("dataset", "model", "recipe", "protocol", "metrics", "seeds", "command", "date", "commit")


def assert_saved_record(path: Path) -> dict:
    """A benchmark's JSON record at ``path`` holds every key the project's records carry; returns it."""
    saved = json.loads(Path(path).read_text())
    for key in RECORD_KEYS:
        assert key in saved
    return saved
