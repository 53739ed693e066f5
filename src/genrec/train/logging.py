"""Metric logs: one JSON object per line (machine-readable) and TensorBoard scalars (optional)."""

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

    def close(self) -> None:
        if self.tb is not None:
            self.tb.flush()
            self.tb.close()
