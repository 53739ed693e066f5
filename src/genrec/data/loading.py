"""Resolve a run's ``data:`` section to a loaded :class:`Dataset` (a prepared folder or the synthetic default)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Protocol

from genrec.data.schema import MANIFEST_FILE, Dataset, load_dataset


class DataSource(Protocol):
    """What loading reads of a run's ``data:`` section (:class:`genrec.config.DataConfig` has it all).

    Typed by shape, not by the class, because ``config`` sits above ``data`` and ``data`` imports nothing above it.
    """

    path: str
    synthetic_users: int
    synthetic_items: int
    synthetic_seed: int


def synthetic_cache_dir(cfg: DataSource) -> Path:
    root = Path(os.environ.get("GENREC_CACHE", "data_cache"))
    return root / f"synthetic-u{cfg.synthetic_users}-i{cfg.synthetic_items}-s{cfg.synthetic_seed}"


def load_data(cfg: DataSource) -> Dataset:
    """Load ``cfg.path``; when it is empty, generate (once, cached) the bundled synthetic dataset."""
    if cfg.path:
        return load_dataset(cfg.path)
    from genrec.data import prepare, synthetic

    out = synthetic_cache_dir(cfg)
    if not (out / MANIFEST_FILE).exists():
        raw = synthetic.generate(num_users=cfg.synthetic_users, num_items=cfg.synthetic_items,
                                 seed=cfg.synthetic_seed)
        prepare.prepare(raw, out, name="synthetic", overwrite=True)  # a cache: another process may have written it
    return load_dataset(out)
