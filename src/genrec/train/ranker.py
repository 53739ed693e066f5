"""The training loop for rankers (CTR track, spec §6.1): pointwise BCE on impressions, early stopping on
validation AUC (or GAUC / LogLoss), then AUC, GAUC and LogLoss on the test impressions.

Impressions come from ``ranking.labels`` (ratings: label = rating >= threshold; behaviors: a page view
is positive when the user favs/carts/buys the item later in the same day or session). The split is
global and temporal: test = the last ``ranking.test_frac`` of impressions by time, validation = the
last ``ranking.valid_frac`` of the training period. Training batches only ever hold training-period
impressions; every sample's history is its user's events strictly before the impression.

Exact resume, as in the other trainers: the batch order of an epoch is a pure function of
``(seed, epoch)`` and the torch RNG (dropout) is restored from the atomic checkpoint, so an interrupted
run that resumes ends with the same weights as one that never stopped.

The training step is the model's logits under the CTR BCE objective (:func:`genrec.objectives.ctr_bce`). Models
opt into side features with ``needs_features = True`` (:class:`~genrec.models.base.Ranker`): the trainer then calls
``genrec.data.features.impression_features(dataset, impressions, cutoff_time=t_test)`` once and passes
``features={name: (B, ...) tensor}`` to ``model.score``.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

import genrec
from genrec.config import RunConfig, config_from_dict
from genrec.data.impressions import (
    ImpressionSamples,
    ImpressionSplit,
    impressions_from_behaviors,
    impressions_from_ratings,
    make_impression_batch,
    temporal_split,
)
from genrec.data.loading import load_data
from genrec.data.schema import Dataset, Interactions, load_dataset
from genrec.data.sequences import SeqBatch, batch_order
from genrec.errors import CheckpointError, ConfigError, DataError
from genrec.eval.ranking import ranking_metrics
from genrec.models.base import RANKER, Ranker
from genrec.models.registry import build_model
from genrec.nn.optim import build_optimizer
from genrec.objectives import ctr_bce
from genrec.train.base import CONFIG_FILE, TrainerBase, fit_and_test, git_commit
from genrec.train.checkpoint import latest_checkpoint, load_weights

LABEL_MODES = ("auto", "ratings", "behaviors")
STOP_METRICS = ("auc", "gauc", "logloss")
TASK = "ranking (CTR)"


@dataclass
class RankingData:
    """Impressions of one dataset with their temporal split (indices into ``imps``)."""

    inter: Interactions
    imps: ImpressionSamples
    split: ImpressionSplit
    labels: str  # the resolved label mode: ratings | behaviors

    def part(self, which: str) -> np.ndarray:
        """Sample indices of ``train``, ``valid`` or ``test``."""
        if which not in ("train", "valid", "test"):
            raise ConfigError(f"unknown impression split '{which}' (train, valid or test)")
        return getattr(self.split, which)

    @property
    def t_test(self) -> int:
        return int(self.split.params["t_test"])

    @property
    def t_valid(self) -> int:
        return int(self.split.params["t_valid"])

    def manifest(self) -> dict[str, Any]:
        """The derivation rule and split parameters, as stamped into run records and results."""
        return {"labels": dict(self.imps.rule), "split": dict(self.split.params)}


def resolve_label_mode(cfg: RunConfig, dataset: Dataset) -> str:
    """``auto`` -> behaviors when the log carries behavior levels, else ratings."""
    mode = cfg.ranking.labels
    if mode not in LABEL_MODES:
        raise ConfigError(f"ranking.labels must be one of {', '.join(LABEL_MODES)}, got {mode!r}")
    inter = dataset.interactions
    if mode == "auto":
        if inter.behavior is not None and dataset.behavior_names:
            return "behaviors"
        if inter.rating is not None:
            return "ratings"
        raise DataError(f"dataset '{dataset.manifest.get('name', '')}' has neither behaviors nor ratings, so no "
                        "CTR labels can be derived; prepare a log with a rating or behavior column")
    return mode


def build_ranking_data(cfg: RunConfig, dataset: Dataset) -> RankingData:
    """Impressions and labels by ``cfg.ranking``, then the global temporal split (valid/test fractions)."""
    rc = cfg.ranking
    inter = dataset.interactions
    mode = resolve_label_mode(cfg, dataset)
    if mode == "ratings":
        imps = impressions_from_ratings(inter, threshold=rc.rating_threshold, min_history=rc.min_history)
    else:
        if inter.behavior is None or not dataset.behavior_names:
            raise DataError("ranking.labels=behaviors but the dataset has no behavior column; "
                            "use ranking.labels=ratings or prepare a multi-behavior log")
        imps = impressions_from_behaviors(
            inter, dataset.behavior_names,
            impression=getattr(rc, "impression_behavior", "pv"),
            positives=tuple(rc.positive_behaviors),
            window=rc.window,
            tz_offset_hours=getattr(rc, "tz_offset_hours", 8.0),
            session_gap=rc.session_gap,
            min_history=rc.min_history,
        )
    if len(imps) == 0:
        raise DataError(f"no impressions with at least ranking.min_history={rc.min_history} earlier events")
    split = temporal_split(imps, valid_frac=rc.valid_frac, test_frac=rc.test_frac)
    for which in ("train", "valid", "test"):
        y = imps.label[getattr(split, which)]
        if y.size == 0 or y.min() == y.max():
            raise DataError(f"the {which} impressions ({y.size}) hold a single label class, so AUC is undefined; "
                            "change ranking.valid_frac / ranking.test_frac or the label rule")
    return RankingData(inter, imps, split, mode)


def _impression_features(dataset: Dataset, imps: ImpressionSamples, cutoff_time: int) -> dict[str, np.ndarray]:
    """The side features of a ``needs_features`` model, checked to be one row per impression."""
    from genrec.data.features import impression_features  # only feature-hungry models need it

    feats = impression_features(dataset, imps, cutoff_time)
    for name, arr in feats.items():
        if np.shape(arr)[0] != len(imps):
            raise DataError(f"impression feature '{name}' has {np.shape(arr)[0]} rows for {len(imps)} impressions")
    return {name: np.asarray(arr) for name, arr in feats.items()}


class RankerTrainer(TrainerBase):
    """Train a RANKER-kind model on training impressions; same run-folder layout as the other trainers."""

    compat_keys = TrainerBase.compat_keys + ("impressions",)

    def __init__(self, cfg: RunConfig, run_dir: str | Path, dataset: Dataset, resume: bool = True,
                 readonly: bool = False) -> None:
        super().__init__(cfg, run_dir, dataset, default_metric="auc")
        if self.stop_metric not in STOP_METRICS:
            raise ConfigError(f"train.early_stop_metric '{self.stop_metric}' is not a ranking metric "
                              f"(choose auto, {', '.join(STOP_METRICS)})")
        self.data = build_ranking_data(cfg, dataset)
        self.model: Ranker = build_model(cfg.model, dataset.num_items, cfg.data.max_len).to(self.device)
        if RANKER not in self.model.kinds:
            raise ConfigError(f"model '{cfg.model['name']}' is not a ranker; this trainer trains rankers")
        self.needs_features = self.model.needs_features
        self.features: dict[str, np.ndarray] | None = (
            _impression_features(dataset, self.data.imps, self.data.t_test) if self.needs_features else None)
        self.optimizer = build_optimizer(self.model.parameters(), cfg.train)
        self.train_idx = self.data.part("train")
        self.open_run(resume, write=not readonly)

    def run_record(self) -> dict[str, Any]:
        return {**super().run_record(), "task": TASK, "impressions": self.data.manifest()}

    # -- batches ----------------------------------------------------------------------------------
    def batch(self, idx: np.ndarray) -> tuple[SeqBatch, torch.Tensor, torch.Tensor, dict[str, Any]]:
        """Samples ``idx`` -> (history batch, candidates (B, 1), labels (B,), model kwargs), on the device."""
        b, cands, labels = make_impression_batch(self.data.inter, self.data.imps, idx, self.cfg.data.max_len)
        kw: dict[str, Any] = {}
        if self.features is not None:
            kw["features"] = {k: torch.from_numpy(np.ascontiguousarray(v[idx])).to(self.device)
                              for k, v in self.features.items()}
        return b.to(self.device), cands.to(self.device), labels.to(self.device), kw

    # -- training ---------------------------------------------------------------------------------
    def epoch_batches(self, epoch: int) -> list[np.ndarray]:
        tc = self.cfg.train
        lengths = np.minimum(self.data.imps.history_lengths[self.train_idx], self.cfg.data.max_len)
        return batch_order(lengths, tc.batch_size, np.random.default_rng([tc.seed, epoch]), tc.length_bucketing)

    def step_loss(self, rows: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        batch, cands, labels, kw = self.batch(self.train_idx[rows])
        with self.autocast():
            return ctr_bce(self.model.score(batch, cands, **kw), cands, labels)  # (sum, real candidates)

    def validate(self) -> tuple[dict[str, Any], float]:
        m = self.metrics("valid")
        return m, m[self.stop_metric]

    # -- evaluation -------------------------------------------------------------------------------
    @torch.no_grad()
    def predict(self, idx: np.ndarray) -> np.ndarray:
        """(S,) logits of samples ``idx`` in their given order (batched by history length for speed)."""
        idx = np.asarray(idx, dtype=np.int64)
        out = np.empty(len(idx), dtype=np.float64)
        order = np.argsort(self.data.imps.history_lengths[idx], kind="stable")
        bs = self.cfg.ranking.eval_batch_size
        was_training = self.model.training
        self.model.eval()
        try:
            for i in range(0, len(order), bs):
                pos = order[i : i + bs]
                batch, cands, _, kw = self.batch(idx[pos])
                with self.autocast():
                    logits = self.model.score(batch, cands, **kw)  # (B, 1)
                out[pos] = logits.float().reshape(-1).cpu().numpy()
        finally:
            self.model.train(was_training)
        return out

    def metrics(self, which: str) -> dict[str, float]:
        """AUC, GAUC (+ users counted), LogLoss, count and positive rate on one part of the split."""
        idx = self.data.part(which)
        imps = self.data.imps
        return ranking_metrics(imps.label[idx], self.predict(idx), imps.user_id[idx], from_logits=True)

    def evaluate(self, which: str = "test") -> dict[str, Any]:
        """Results record of the current weights on ``which`` (test | valid)."""
        if which not in ("test", "valid"):
            raise ConfigError(f"evaluate: unknown split '{which}' (test or valid)")
        cfg = self.cfg
        man = self.data.manifest()
        return {
            "model": cfg.model["name"],
            "dataset": self.dataset.manifest.get("name", ""),
            "data_fingerprint": self.dataset.fingerprint,
            "protocol": {
                "task": TASK,
                "evaluated_on": which,
                "labels": man["labels"],
                "split": man["split"],
                "candidates": "the impressed item (pointwise)",
                "history_window": cfg.data.max_len,
                "early_stopping": f"{self.stop_metric} on validation",
                "best_epoch": self.state.get("best_epoch"),
            },
            "metrics": self.metrics(which),
            "config": cfg.to_dict(),
            "genrec_version": genrec.__version__,
            "commit": git_commit(),
            "date": time.strftime("%Y-%m-%d"),
        }


def train_ranker_run(cfg: RunConfig, out: str | Path, resume: bool = True, dataset: Dataset | None = None
                     ) -> dict[str, Any]:
    """Train (or resume) a ranker run, then evaluate its best weights on the test impressions.

    Returns the results record (also written to ``OUT/results/test.json``), like ``train_run``.
    """
    dataset = dataset if dataset is not None else load_data(cfg.data)
    return fit_and_test(RankerTrainer(cfg, out, dataset, resume=resume), out)


def open_ranker_run(run_dir: str | Path, weights: str = "best") -> RankerTrainer:
    """Reopen a ranker run folder read-only, with its best (or ``weights="last"``) weights loaded."""
    root = Path(run_dir)
    cpath = root / CONFIG_FILE
    if not cpath.exists():
        raise CheckpointError(f"{root}: not a genrec run folder (no {CONFIG_FILE})")
    record = json.loads(cpath.read_text())
    cfg = config_from_dict(record["config"], str(cpath))
    dataset = load_dataset(record["data_path"]) if record.get("data_path") else load_data(cfg.data)
    if dataset.fingerprint != record.get("data_fingerprint"):
        raise DataError(f"{root}: the dataset at '{dataset.path}' has fingerprint {dataset.fingerprint}, "
                        f"but the run was trained on {record.get('data_fingerprint')}")
    trainer = RankerTrainer(cfg, root, dataset, resume=True, readonly=True)
    if weights == "best" and trainer.load_best():
        return trainer
    ck = latest_checkpoint(trainer.ckpt_root)
    if ck is None:
        raise CheckpointError(f"{root}: no trained weights found (train the run first)")
    load_weights(trainer.model, ck / "model.safetensors")
    return trainer


def evaluate_ranker_run(run_dir: str | Path, which: str = "test") -> dict[str, Any]:
    """Results record of a ranker run folder's best weights on ``which`` (test | valid)."""
    trainer = open_ranker_run(run_dir)
    res = trainer.evaluate(which)
    res["train"] = trainer.summary()
    return res
