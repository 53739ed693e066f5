"""The run-folder layout: every file and folder name a run folder holds, in one place.

::

    RUN_DIR/
      config.json              the run record: resolved config, model, kinds, data (and SID) fingerprint
      checkpoints/<name>/      model.safetensors, optimizer.pt, state.json, checksums.json (their sha256);
                               checkpoints/latest names the newest, the one before it is kept too
      .lock                    held (flock) by the process writing the run folder
      best/model.safetensors   the best validation weights, with best/checksums.json (their sha256)
      metrics.jsonl, tb/       training and validation logs (JSON lines, TensorBoard)
      results/test.json        the results record written at the end of training
      results.json             the test record of a multi-behavior variant run (``python -m genrec.train.gamer``)
      sid/                     a generator's copy of the SID table it was trained with
      sids.json                a multi-behavior generator's SID table (built from the training sessions)
"""

from __future__ import annotations

from pathlib import Path

CONFIG_FILE = "config.json"
CHECKPOINT_DIR = "checkpoints"
LATEST = "latest"  # inside CHECKPOINT_DIR: the name of the newest complete checkpoint
CKPT_WEIGHTS = "model.safetensors"  # inside one checkpoint folder
CKPT_STATE = "state.json"
CKPT_OPTIM = "optimizer.pt"
CKPT_SUMS = "checksums.json"  # sha256 of the three files above, written into the folder before it is renamed
LOCK_FILE = ".lock"  # inside the run folder: the writer's lock (genrec.runs.lock)
BEST_DIR = "best"
BEST_WEIGHTS = "model.safetensors"
METRICS_LOG = "metrics.jsonl"
TB_DIR = "tb"
RESULTS_DIR = "results"
VARIANT_RESULTS = "results.json"  # a multi-behavior variant run's test record (default candidate mode)
SID_DIR = "sid"
SESSION_SID_FILE = "sids.json"


def config_path(run_dir: str | Path) -> Path:
    return Path(run_dir) / CONFIG_FILE


def checkpoint_root(run_dir: str | Path) -> Path:
    return Path(run_dir) / CHECKPOINT_DIR


def best_weights_path(run_dir: str | Path) -> Path:
    return Path(run_dir) / BEST_DIR / BEST_WEIGHTS


def results_path(run_dir: str | Path, which: str = "test") -> Path:
    """``RUN_DIR/results/<which>.json``: the results record of one split."""
    return Path(run_dir) / RESULTS_DIR / f"{which}.json"
