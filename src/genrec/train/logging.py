"""Metric logs: one JSON object per line (machine-readable) and TensorBoard scalars and hyper-parameters
(optional).

Every record carries ``step`` (optimiser steps so far) and ``epoch`` in one convention, the epochs completed:
a step record inside the third epoch says ``2.25``, the record that closes it ``3``."""

from __future__ import annotations

import json
import time
import warnings
from pathlib import Path
from typing import Any

from genrec.runs.layout import METRICS_LOG, TB_DIR


class MetricLogger:
    def __init__(self, run_dir: Path, tensorboard: bool = True, enabled: bool = True) -> None:
        self.enabled = enabled
        self.path = run_dir / METRICS_LOG
        self.tb = None
        if enabled and tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(log_dir=str(run_dir / TB_DIR))
            except Exception as exc:  # tensorboard missing or broken: JSONL still works
                warnings.warn(f"TensorBoard logging disabled ({exc})", stacklevel=2)

    def log(self, step: int, **values: Any) -> None:
        if not self.enabled:
            return
        rec = {"step": step, "time": round(time.time(), 3), **values}
        with open(self.path, "a") as f:
            f.write(json.dumps(rec) + "\n")
        if self.tb is not None:
            for k, v in values.items():
                if isinstance(v, (int, float)) and not isinstance(v, bool):
                    self.tb.add_scalar(k, v, step)

    def hparams(self, values: dict[str, Any], metrics: list[str]) -> None:
        """The run's settings in TensorBoard's HPARAMS tab, beside ``metrics`` (scalar tags logged later, e.g.
        ``valid/ndcg@10``), written into the run's own event file."""
        if self.tb is None:
            return
        from torch.utils.tensorboard.summary import hparams

        flat = {k: v if isinstance(v, (bool, int, float, str)) else json.dumps(v) for k, v in values.items()}
        for summary in hparams(flat, dict.fromkeys(metrics, 0.0)):
            self.tb._get_file_writer().add_summary(summary)  # the run's event file, not a new sub-folder

    def close(self) -> None:
        if self.tb is not None:
            self.tb.flush()
            self.tb.close()


def flat_settings(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"train": {"lr": 0.001}}`` -> ``{"train.lr": 0.001}`` (lists stay values)."""
    out: dict[str, Any] = {}
    for k, v in config.items():
        if isinstance(v, dict):
            out.update(flat_settings(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out
