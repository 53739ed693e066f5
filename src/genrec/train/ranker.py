"""The training loop for rankers (CTR track, spec §6.1): pointwise BCE on impressions, early stopping on
validation AUC (or GAUC / LogLoss), then AUC, GAUC and LogLoss on the test impressions.

The impressions, labels and temporal split are :mod:`genrec.runs.ranking_data`'s; training batches only ever
hold training-period impressions, and the evaluation is :mod:`genrec.eval.ranking`'s.

Exact resume, as in the other trainers: the batch order of an epoch is a pure function of
``(seed, epoch)`` and the torch RNG (dropout) is restored from the atomic checkpoint, so an interrupted
run that resumes ends with the same weights as one that never stopped.

The training step is the model's logits under the CTR BCE objective (:func:`genrec.objectives.ctr_bce`). Models
opt into side features with ``needs_features = True`` (:class:`~genrec.models.base.Ranker`): the trainer then calls
``genrec.data.features.impression_features(dataset, impressions, cutoff_time=t_test)`` once and passes
``features={name: (B, ...) tensor}`` to ``model.score``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from genrec.config import RunConfig
from genrec.data.loading import load_data
from genrec.data.schema import Dataset
from genrec.data.sequences import SeqBatch, batch_order
from genrec.errors import ConfigError
from genrec.eval.metrics import CTR, check_stop_metric, default_stop_metric
from genrec.eval.ranking import CTR_TASK, predict_impressions, ranker_metrics, ranker_results
from genrec.models.base import RANKER, Ranker
from genrec.models.registry import build_model
from genrec.nn.optim import build_optimizer
from genrec.objectives import ctr_bce
from genrec.runs.ranking_data import (  # noqa: F401 (build_ranking_data, RankingData: re-exported for train.stages)
    RankingData,
    build_ranking_data,
    impression_batch,
    impression_features,
)
from genrec.train.base import TrainerBase, fit_and_test


class RankerTrainer(TrainerBase):
    """Train a RANKER-kind model on training impressions; same run-folder layout as the other trainers."""

    compat_keys = TrainerBase.compat_keys + ("impressions",)

    def __init__(self, cfg: RunConfig, run_dir: str | Path, dataset: Dataset, resume: bool = True,
                 readonly: bool = False) -> None:
        super().__init__(cfg, run_dir, dataset, default_metric=default_stop_metric(CTR, cfg.eval.ks))
        check_stop_metric(self.stop_metric, cfg.eval.metrics, CTR, cfg.eval.ks)
        self.data = build_ranking_data(cfg, dataset)
        self.model: Ranker = build_model(cfg.model, dataset.num_items, cfg.data.max_len).to(self.device)
        if RANKER not in self.model.kinds:
            raise ConfigError(f"model '{cfg.model['name']}' is not a ranker; this trainer trains rankers")
        if cfg.train.packed and not self.model.packs:
            raise ConfigError(f"train.packed: model '{cfg.model['name']}' has no packed path with these settings "
                              "(hpgr packs its dense ranker and PGSA's gathered all-rows layers); set train.packed=false")
        self.needs_features = self.model.needs_features
        self.features: dict[str, np.ndarray] | None = (
            impression_features(dataset, self.data) if self.needs_features else None)
        self.optimizer = build_optimizer(self.model, cfg.train)
        self.train_idx = self.data.part("train")
        self.open_run(resume, write=not readonly)

    def run_record(self) -> dict[str, Any]:
        return {**super().run_record(), "task": CTR_TASK, "impressions": self.data.manifest()}

    # -- batches ----------------------------------------------------------------------------------
    def batch(self, idx: np.ndarray) -> tuple[SeqBatch, torch.Tensor, torch.Tensor, dict[str, Any]]:
        """Samples ``idx`` -> (history batch, candidates (B, 1), labels (B,), model kwargs), on the device."""
        return impression_batch(self.data, idx, self.cfg.data.max_len, self.features, self.device)

    # -- training ---------------------------------------------------------------------------------
    def epoch_batches(self, epoch: int) -> list[np.ndarray]:
        tc = self.cfg.train
        lengths = np.minimum(self.data.imps.history_lengths[self.train_idx], self.cfg.data.max_len)
        return batch_order(lengths, tc.batch_size, np.random.default_rng([tc.seed, epoch]), tc.length_bucketing)

    def step_loss(self, rows: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        batch, cands, labels, kw = self.batch(self.train_idx[rows])
        score = self.model.packed_score if self.cfg.train.packed else self.model.score  # packed: same logits
        with self.autocast():
            return ctr_bce(score(batch, cands, **kw), cands, labels)  # (sum, real candidates)

    def validate(self) -> tuple[dict[str, Any], float]:
        m = self.metrics("valid")
        return m, m[self.stop_metric]

    # -- evaluation -------------------------------------------------------------------------------
    def predict(self, idx: np.ndarray) -> np.ndarray:
        """(S,) logits of samples ``idx`` in their given order."""
        return predict_impressions(self.model, self.data, idx, self.cfg.data.max_len, self.cfg.ranking.eval_batch_size,
                                   self.features, self.autocast, packed=self.cfg.train.packed)

    def metrics(self, which: str) -> dict[str, float]:
        """The selected CTR metrics (AUC, GAUC + users counted, LogLoss), count and positive rate on one part."""
        return ranker_metrics(self.model, self.cfg, self.data, which, self.features, self.autocast)

    def evaluate(self, which: str = "test") -> dict[str, Any]:
        """Results record of the current weights on ``which`` (test | valid)."""
        return ranker_results(self.model, self.cfg, self.dataset, self.data, which, self.features,
                              stop_metric=self.stop_metric, best_epoch=self.state.get("best_epoch"),
                              autocast=self.autocast)


def train_ranker_run(cfg: RunConfig, out: str | Path, resume: bool = True, dataset: Dataset | None = None
                     ) -> dict[str, Any]:
    """Train (or resume) a ranker run, then evaluate its best weights on the test impressions.

    Returns the results record (also written to ``OUT/results/test.json``), like ``train_run``.
    """
    dataset = dataset if dataset is not None else load_data(cfg.data)
    return fit_and_test(RankerTrainer(cfg, out, dataset, resume=resume), out)
