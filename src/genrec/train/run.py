"""Run-level entry points used by the CLI: train a recipe, reopen a finished run, recommend."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from genrec.config import RunConfig, config_from_dict
from genrec.data.loading import load_data
from genrec.data.schema import Dataset, load_dataset
from genrec.data.sequences import UserSequences
from genrec.errors import CheckpointError, DataError, GenrecError
from genrec.eval.retrieval import score_histories
from genrec.models.base import Retriever
from genrec.models.registry import build_model
from genrec.train.checkpoint import load_weights
from genrec.train.trainer import BEST_DIR, CONFIG_FILE, Trainer


def _write_json(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(obj, indent=2))
    tmp.replace(path)


def train_run(cfg: RunConfig, out: str | Path, resume: bool = True, dataset: Dataset | None = None
              ) -> dict[str, Any]:
    """Train (or resume) a run, then evaluate its best weights on the test split.

    Returns the results record (also written to ``RUN_DIR/results/test.json``).
    """
    dataset = dataset if dataset is not None else load_data(cfg.data)
    trainer = Trainer(cfg, out, dataset, resume=resume)
    summary = trainer.fit()
    if not trainer.main:
        return {"summary": summary}
    if not summary.get("finished"):
        return {"summary": summary, "stopped_early_by": "train.max_steps"}
    trainer.load_best()
    res = trainer.evaluate("test")
    other = trainer.evaluate("test", exclude_history=not res["protocol"]["exclude_history"])
    res["metrics_other_exclusion"] = {"exclude_history": other["protocol"]["exclude_history"],
                                      "metrics": other["metrics"]}
    res["train"] = summary
    _write_json(Path(out) / "results" / "test.json", res)
    return res


@dataclass
class LoadedRun:
    cfg: RunConfig
    record: dict[str, Any]
    model: Retriever
    dataset: Dataset
    seqs: UserSequences


def open_run(run_dir: str | Path, weights: str = "best", device: str = "cpu") -> LoadedRun:
    """Reopen a trained run folder for evaluation or recommendation."""
    root = Path(run_dir)
    cpath = root / CONFIG_FILE
    if not cpath.exists():
        raise CheckpointError(f"{root}: not a genrec run folder (no {CONFIG_FILE})")
    record = json.loads(cpath.read_text())
    cfg = config_from_dict(record["config"], str(cpath))
    if record.get("data_path"):
        dataset = load_dataset(record["data_path"])
    else:
        dataset = load_data(cfg.data)
    if dataset.fingerprint != record.get("data_fingerprint"):
        raise DataError(f"{root}: the dataset at '{dataset.path}' has fingerprint {dataset.fingerprint}, "
                        f"but the run was trained on {record.get('data_fingerprint')}")
    model = build_model(cfg.model, dataset.num_items, cfg.data.max_len).to(device)
    wpath = root / BEST_DIR / "model.safetensors"
    if weights != "best" or not wpath.exists():
        from genrec.train.checkpoint import latest_checkpoint

        ck = latest_checkpoint(root / "checkpoints")
        if ck is None:
            raise CheckpointError(f"{root}: no trained weights found (train the run first)")
        wpath = ck / "model.safetensors"
    load_weights(model, wpath)
    model.eval()
    return LoadedRun(cfg, record, model, dataset, UserSequences.from_interactions(dataset.interactions))


def recommend(run: LoadedRun, history_items: list[int], history_times: list[int] | None, k: int = 10,
              exclude_history: bool = True, query_time: int | None = None) -> list[tuple[int, float]]:
    """Top-k (internal item id, score) for one history of internal ids, ranked like the evaluation code."""
    if not history_items:
        raise GenrecError("empty history: give at least one item")
    if not 1 <= k <= run.dataset.num_items:
        raise GenrecError(f"k={k} is out of range (1..{run.dataset.num_items})")
    h = np.asarray(history_items, dtype=np.int64)
    t = np.asarray(history_times if history_times is not None else np.arange(1, len(h) + 1), dtype=np.int64)
    qt = int(query_time) if query_time is not None else int(t[-1])
    scores = score_histories(run.model, [h], [t], np.array([qt]), exclude_history)[0]
    k = min(k, int(torch.isfinite(scores).sum()))
    top = torch.topk(scores, k)
    return [(int(i), float(s)) for s, i in zip(top.values, top.indices)]
