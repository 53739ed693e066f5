"""The one results-record builder: what a test (or validation) evaluation of a run writes and returns.

Every record has the same spine, in this order: ``model``, ``dataset``, ``data_fingerprint``, the run's other
identities (``ids``: e.g. ``sid_fingerprint``), ``protocol`` (how it was measured), ``metrics``, a kind's own
fields (``extra``), ``config`` (the resolved recipe), the kind's settings sections (``sections``), then the stamp
``genrec_version``, ``commit``, ``date``. The benchmark scripts and ``benchmarks/report.py`` read these keys.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path
from typing import Any

import genrec
from genrec.config import RunConfig
from genrec.data.prepare import DEFAULT_TIE_ORDER
from genrec.data.schema import Dataset
from genrec.errors import ConfigError

EVAL_SPLITS = ("test", "valid")


def check_split(which: str) -> None:
    """A results record is of the test or the validation split."""
    if which not in EVAL_SPLITS:
        raise ConfigError(f"evaluate: unknown split '{which}' (test or valid)")


def git_commit() -> str:
    """Short commit of the installed source tree, or ``unknown`` outside a git checkout."""
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parent)
        return out.stdout.strip() or "unknown"
    except Exception:
        return "unknown"


def tie_order(dataset: Dataset) -> str:
    """How the dataset ordered a user's events with equal timestamps (``stable`` unless prepared otherwise)."""
    return str((dataset.manifest.get("params") or {}).get("tie_order", DEFAULT_TIE_ORDER))


def results_record(model_name: str, dataset: Dataset, protocol: dict[str, Any], metrics: dict[str, Any],
                   cfg: RunConfig | None, *, ids: dict[str, Any] | None = None,
                   sections: dict[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
    """A results record stamped with the genrec version, source commit and date (``cfg=None``: no config)."""
    rec: dict[str, Any] = {"model": model_name, "dataset": dataset.manifest.get("name", ""),
                           "data_fingerprint": dataset.fingerprint, **(ids or {}),
                           "protocol": {**protocol, "tie_order": tie_order(dataset)},
                           "metrics": metrics, **extra}
    if cfg is not None:
        rec["config"] = cfg.to_dict()
    rec.update(sections or {})
    rec.update(genrec_version=genrec.__version__, commit=git_commit(), date=time.strftime("%Y-%m-%d"))
    return rec
