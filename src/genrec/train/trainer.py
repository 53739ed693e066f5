"""The retriever trainer: next-item training at every position, early stopping on validation NDCG@10.

Exact resume: the batch order of an epoch is a pure function of (seed, epoch), negatives of a step
are drawn from a generator seeded by (seed, step), and the torch RNG (dropout) is restored from the
checkpoint, so a killed run that resumes produces the same weights as one that never stopped. The loop,
checkpoints, logs and DDP are :class:`~genrec.train.base.TrainerBase`'s.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from genrec.config import RunConfig
from genrec.data.schema import Dataset
from genrec.data.sequences import SeqBatch, UserSequences, batch_order, make_train_batch
from genrec.data.splits import Split, split_from_config
from genrec.errors import ConfigError
from genrec.eval.metrics import RETRIEVAL, check_stop_metric, default_stop_metric
from genrec.eval.retrieval import retrieval_metrics, retrieval_results
from genrec.models.base import RETRIEVER, Retriever
from genrec.models.registry import build_model
from genrec.nn.optim import build_optimizer
from genrec.objectives import build_objective
from genrec.objectives.next_item import history_logits
from genrec.train.base import TrainerBase, fit_and_test


class _LossModule(nn.Module):
    """Model + objective in one forward: (sum of per-position losses, number of positions).

    ``packed``: the states come from ``model.packed_output`` at the batch's real positions (row-major, the order
    ``states[valid]`` reads), so the objective sees the same rows in the same order and draws the same negatives.
    """

    def __init__(self, model: Retriever, objective, packed: bool = False) -> None:
        super().__init__()
        self.model = model
        self.objective = objective
        self.packed = packed

    def forward(self, batch, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        if self.packed:
            return self._packed(batch, generator)
        states = self.model.sequence_output(batch)  # (B, L, D)
        valid = batch.targets > 0  # (B, L)
        if self.objective.history_negatives:
            hist = history_logits(self.model, states, batch.items, batch.targets)[valid]  # (T, L)
            return self.objective(self.model, states[valid], batch.targets[valid], generator, hist), valid.sum()
        return self.objective(self.model, states[valid], batch.targets[valid], generator), valid.sum()

    def _packed(self, batch, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        real = batch.mask  # (B, L)
        states = self.model.packed_output(batch)  # (T, D) at the real positions
        targets = batch.targets[real]  # (T,)
        valid = targets > 0  # (T,)
        if self.objective.history_negatives:  # (B, L, L) logits: the padded layout, once
            full = states.new_zeros(*real.shape, states.shape[-1]).index_put((real,), states)  # (B, L, D)
            hist = history_logits(self.model, full, batch.items, batch.targets)[real][valid]  # (N, L)
            return self.objective(self.model, states[valid], targets[valid], generator, hist), valid.sum()
        return self.objective(self.model, states[valid], targets[valid], generator), valid.sum()


class Trainer(TrainerBase):
    """Train a RETRIEVER-kind model on every training position of the split.

    What a run trains on and is measured by comes from hooks a protocol may override (the multi-behavior
    baselines do): :meth:`evaluation_setup` (stopping metric), :meth:`prepare_data` (the examples),
    :meth:`train_batch` (one batch of them) and :meth:`setup_protocol` (schedule, evaluation), besides
    ``epoch_batches`` / ``validate`` / ``evaluate``; the training step itself (model + objective) is this
    class's alone.
    """

    def __init__(self, cfg: RunConfig, run_dir: str | Path, dataset: Dataset, resume: bool = True) -> None:
        super().__init__(cfg, run_dir, dataset, default_metric=self.evaluation_setup(cfg))
        self.prepare_data()
        self.model: Retriever = build_model(cfg.model, dataset.num_items, cfg.data.max_len).to(self.device)
        if RETRIEVER not in self.model.kinds:
            raise ConfigError(f"model '{cfg.model['name']}' is not a retriever; this trainer trains retrievers")
        if cfg.train.packed and not self.model.packs:
            raise ConfigError(f"train.packed: model '{cfg.model['name']}' has no packed path (sasrec and hstu have "
                              "one); set train.packed=false")
        self.objective = build_objective(cfg.objective)
        self.loss_module = _LossModule(self.model, self.objective, cfg.train.packed)
        self.optimizer = build_optimizer(self.model, cfg.train)
        self.setup_protocol()
        if cfg.train.loss_denominator == "epoch_mean":
            self.fixed_denominator = self.targets_per_batch()
        self.open_run(resume)

    # -- protocol hooks ---------------------------------------------------------------------------
    def evaluation_setup(self, cfg: RunConfig) -> str:
        """The default early-stopping metric (before the run folder opens)."""
        return default_stop_metric(RETRIEVAL, cfg.eval.ks)

    def prepare_data(self) -> None:
        """The split of ``data:`` and the rows with at least one training target; the stopping metric must be one
        that ``eval.metrics`` selects."""
        check_stop_metric(self.stop_metric, self.cfg.eval.metrics, RETRIEVAL, self.cfg.eval.ks)
        self.seqs = UserSequences.from_interactions(self.dataset.interactions)
        self.split: Split = split_from_config(self.seqs, self.cfg.data)
        self.train_rows = self.split.train_rows()
        if len(self.train_rows) == 0:
            raise ConfigError("no user has two or more training events; the dataset is too small for this split")

    def setup_protocol(self) -> None:
        """Constant learning rate, evaluation by :func:`evaluate_retrieval`: nothing to set up."""

    def train_batch(self, rows: np.ndarray) -> SeqBatch:
        """Batch ``rows`` of :meth:`epoch_batches`: the last ``max_len + 1`` training events of each user."""
        return make_train_batch(self.seqs, self.train_rows[rows], self.split.train_end, self.cfg.data.max_len)

    def target_counts(self) -> np.ndarray:
        """(rows,) supervised positions of each training row: ``min(n, max_len + 1) - 1`` for a row of ``n``
        training events (:meth:`train_batch` reads the last ``max_len + 1``)."""
        n = self.split.train_end[self.train_rows].astype(np.int64)
        return np.minimum(n, self.cfg.data.max_len + 1) - 1

    def targets_per_batch(self) -> float:
        """Mean supervised positions per batch over an epoch (``train.loss_denominator: epoch_mean``)."""
        counts = self.target_counts()
        return float(counts.sum()) / max(math.ceil(len(counts) / self.cfg.train.batch_size), 1)

    # -- training ---------------------------------------------------------------------------------
    def _step_generator(self, step: int) -> torch.Generator:
        g = torch.Generator()
        g.manual_seed((self.cfg.train.seed * 1_000_003 + step) % (2**63 - 1))
        return g

    def epoch_batches(self, epoch: int) -> list[np.ndarray]:
        tc = self.cfg.train
        lengths = self.split.train_end[self.train_rows]
        return batch_order(lengths, tc.batch_size, np.random.default_rng([tc.seed, epoch]), tc.length_bucketing)

    def step_loss(self, rows: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        batch = self.train_batch(rows).to(self.device)
        with self.autocast():
            return self.loss_module(batch, self._step_generator(self.state["global_step"]))

    def validate(self) -> tuple[dict[str, Any], float | None]:
        m = retrieval_metrics(self.model, self.cfg, self.seqs, self.split.valid) if len(self.split.valid) else {}
        metric = m.get(self.stop_metric)
        if metric is None and m:
            raise ConfigError(f"train.early_stop_metric '{self.stop_metric}' is not among {sorted(m)}")
        return {k: v for k, v in m.items() if k != "num_queries"}, metric

    # -- evaluation -------------------------------------------------------------------------------
    def evaluate(self, which: str = "test", exclude_history: bool | None = None) -> dict[str, Any]:
        """Results record for ``which`` (test | valid), full catalogue (``exclude_history`` None: the recipe's)."""
        return retrieval_results(self.model, self.cfg, self.dataset, self.seqs, self.split, which, exclude_history,
                                 stop_metric=self.stop_metric, best_epoch=self.state.get("best_epoch"))


def train_retriever_run(cfg: RunConfig, out: str | Path, resume: bool, dataset: Dataset) -> dict[str, Any]:
    """Train (or resume) a retriever run, then its test record, also under the other history-exclusion setting."""
    return fit_and_test(Trainer(cfg, out, dataset, resume=resume), out, _other_exclusion)


def _other_exclusion(trainer: Trainer, res: dict[str, Any]) -> dict[str, Any]:
    """Retrievers also record the test metrics under the other history-exclusion setting."""
    other = trainer.evaluate("test", exclude_history=not res["protocol"]["exclude_history"])
    return {"metrics_other_exclusion": {"exclude_history": other["protocol"]["exclude_history"],
                                        "metrics": other["metrics"]}}
