"""Resolve a run's ``data:`` section to a loaded :class:`Dataset` (a prepared folder or the synthetic default)."""

from __future__ import annotations

import os
from pathlib import Path

from genrec.config import DataConfig
from genrec.data.schema import MANIFEST_FILE, Dataset, load_dataset


def synthetic_cache_dir(cfg: DataConfig) -> Path:
    root = Path(os.environ.get("GENREC_CACHE", "data_cache"))
    return root / f"synthetic-u{cfg.synthetic_users}-i{cfg.synthetic_items}-s{cfg.synthetic_seed}"


def load_data(cfg: DataConfig) -> Dataset:
    """Load ``cfg.path``; when it is empty, generate (once, cached) the bundled synthetic dataset."""
    if cfg.path:
        return load_dataset(cfg.path)
    from genrec.data import prepare, synthetic

    out = synthetic_cache_dir(cfg)
    if not (out / MANIFEST_FILE).exists():
        raw = synthetic.generate(num_users=cfg.synthetic_users, num_items=cfg.synthetic_items,
                                 seed=cfg.synthetic_seed)
        prepare.prepare(raw, out, name="synthetic")
    return load_dataset(out)
