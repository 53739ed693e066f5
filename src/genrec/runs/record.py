"""The run record (``config.json``): written when a run starts, read by everything that opens the run again.

The record names the model, its kinds, the resolved config and the dataset (path and fingerprint) the run was
trained on; a trainer adds its own fields (SID fingerprint, impressions, behavior levels ...). Reopening a run
reads the dataset back and refuses one whose fingerprint differs, so a run is never evaluated on other data.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import genrec
from genrec.config import RunConfig, config_from_dict
from genrec.data.loading import load_data
from genrec.data.schema import Dataset, load_dataset
from genrec.errors import CheckpointError, DataError
from genrec.runs.layout import CONFIG_FILE, config_path


def new_run_record(cfg: RunConfig, kinds: tuple[str, ...] | list[str], dataset: Dataset) -> dict[str, Any]:
    """The fields every ``config.json`` holds (a trainer adds its own after them)."""
    return {
        "genrec_version": genrec.__version__,
        "model": cfg.model["name"],
        "kinds": list(kinds),
        "num_items": dataset.num_items,
        "max_len": cfg.data.max_len,
        "data_fingerprint": dataset.fingerprint,
        "data_path": str(dataset.path) if dataset.path else "",
        "config": cfg.to_dict(),
    }


# what ``genrec export`` writes beside its own config.json (genrec.serve.format.MANIFEST; serve sits above runs)
ARTIFACT_MANIFEST = "artifact.json"


def read_record(run_dir: str | Path) -> dict[str, Any]:
    """``RUN_DIR/config.json``; a folder without one, an exported artifact (whose ``config.json`` is a bare
    config) or a record cut short (a full disk, a copy interrupted) is refused in one line naming what it is."""
    path = config_path(run_dir)
    if (Path(run_dir) / ARTIFACT_MANIFEST).exists():
        raise CheckpointError(f"{run_dir}: an exported serving artifact, not a run folder: serve it with "
                              f"`genrec serve {run_dir}` (or genrec.serve.load_artifact), or evaluate the run "
                              "folder it was exported from")
    if not path.exists():
        raise CheckpointError(f"{run_dir}: not a genrec run folder (no {CONFIG_FILE})")
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:  # JSONDecodeError is a ValueError
        raise CheckpointError(f"{path}: the run record is not valid JSON (truncated or damaged? {exc}); "
                              "restore it, or train into another --out folder") from None
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read the run record ({exc.strerror})") from None
    if not isinstance(record, dict) or not isinstance(record.get("config"), dict):
        raise CheckpointError(f"{path}: not a genrec run record (no 'config' mapping)")
    return record


def record_config(record: dict[str, Any], run_dir: str | Path) -> RunConfig:
    """The resolved config a run was trained with."""
    return config_from_dict(record["config"], str(config_path(run_dir)))


def run_dataset(record: dict[str, Any], cfg: RunConfig, run_dir: str | Path) -> Dataset:
    """The dataset a run was trained on (its recorded path, else the config's), checked by fingerprint."""
    dataset = load_dataset(record["data_path"]) if record.get("data_path") else load_data(cfg.data)
    if dataset.fingerprint != record.get("data_fingerprint"):
        raise DataError(f"{run_dir}: the dataset at '{dataset.path}' has fingerprint {dataset.fingerprint}, "
                        f"but the run was trained on {record.get('data_fingerprint')}")
    return dataset
