"""The generator trainer (TIGER, GLASS): next-SID cross-entropy over every training prefix.

Examples follow TIGER (spec §2.4, A-T2): for every user and every position ``j >= 1`` of the training part
of the split, the encoder reads the last ``<= max_len`` items before ``j`` and the decoder is taught the SID
of item ``j``. The optimiser is AdamW; the learning rate is held at ``train.lr`` for ``warmup_steps`` (the
paper's 10k steps at 0.01) and then decays as ``1/sqrt(step)``, optionally after a linear ramp (the
``inverse_sqrt`` schedule of :mod:`genrec.nn.optim`). Validation runs the (trie-constrained) beam search and
early-stops on ``train.early_stop_metric``.

Exact resume, as in the retriever trainer: the example order of an epoch is a pure function of
``(seed, epoch)``, the learning rate a pure function of the step, and the torch RNG (dropout) is restored
from the atomic checkpoint, so an interrupted run that resumes ends with the same weights as one that never
stopped. The loop (and data parallelism under ``torchrun``) is :class:`~genrec.train.base.TrainerBase`'s.
"""

from __future__ import annotations

from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from genrec.config import GeneratorConfig, RunConfig, early_stop_metric
from genrec.data.multibehavior import SessionSplit
from genrec.data.schema import Dataset
from genrec.data.sequences import UserSequences, batch_order
from genrec.data.splits import EvalSamples, Split, split_from_config
from genrec.errors import ConfigError, DataError
from genrec.eval.generation import (
    GenerationEval,
    generation_eval,
    generation_ks,
    generation_results,
    history_matrix,
)
from genrec.eval.metrics import GENERATION, check_stop_metric, default_stop_metric
from genrec.models.base import GENERATOR, Generator, GeneratorBatch
from genrec.models.registry import build_model
from genrec.nn.optim import build_optimizer, lr_schedule
from genrec.objectives import next_sid_loss
from genrec.sid.codebook import SIDTable
from genrec.train.base import TrainerBase

GeneratorOptions = GeneratorConfig  # the generator: section of a recipe (kept under its old name)


def generator_optimizer(params: Any, cfg: RunConfig) -> torch.optim.AdamW:
    """The recipe's AdamW (:func:`~genrec.nn.optim.build_optimizer`). With ``model.kernels: fused`` it is torch's
    fused AdamW (as ``train.fused`` asks for any model): one kernel per parameter instead of a dozen small ops (about 8x less optimiser time on a CPU
    step), the same update up to float rounding, the same checkpointed state."""
    fused = cfg.train.fused or cfg.model.get("kernels") == "fused"
    return build_optimizer(params, replace(cfg.train, fused=fused))


class TrainExamples:
    """Every (row, history length) pair of the training part: ``rows[e]`` predicts event ``ends[e]``.

    ``last`` > 0 keeps each row's ``last`` most recent targets (``generator.train_last``): on long-history data
    (MovieLens-1M: 165 events a user) the newest prefixes are the ones nearest the test query, and the epoch
    shrinks to a CPU's budget. 0 keeps every prefix, as TIGER trains.
    """

    def __init__(self, train_end: np.ndarray, last: int = 0) -> None:
        n = np.maximum(train_end - 1, 0)  # (U,) targets per row: positions 1..train_end-1
        keep = np.minimum(n, last) if last > 0 else n  # (U,) the most recent of them
        self.rows = np.repeat(np.arange(len(n)), keep)  # (E,)
        first = np.repeat(np.cumsum(keep) - keep, keep)  # (E,) index of each row's first example
        self.ends = np.arange(len(self.rows)) - first + 1 + np.repeat(n - keep, keep)  # (E,) target position

    def __len__(self) -> int:
        return len(self.rows)


class GeneratorTrainer(TrainerBase):
    """Train a generator model over a SID table; run folder, checkpoints, best weights and patience from
    :class:`~genrec.train.base.TrainerBase` (the same layout as every other trainer).

    A protocol may override what a run trains on and is measured by (the multi-behavior baselines do):
    :meth:`evaluation_setup` (ks, stopping metric), :meth:`prepare_data` (the events and training cut-off),
    :meth:`setup_protocol` (schedule, validation queries), besides ``epoch_batches`` / ``validate`` /
    ``evaluate``; the training step (:meth:`batch`, :meth:`step_loss`) is this class's alone.
    """

    compat_keys = TrainerBase.compat_keys + ("sid_fingerprint",)
    sessions: SessionSplit | None = None  # a session split whose training part feeds item vectors (else the split)

    def __init__(self, cfg: RunConfig, run_dir: str | Path, dataset: Dataset, sids: SIDTable,
                 options: GeneratorOptions | None = None, resume: bool = True) -> None:
        self.opts = options or cfg.generator
        self.sids = sids
        super().__init__(cfg, run_dir, dataset, default_metric=self.evaluation_setup(cfg))
        self.prepare_data()
        self.model: Generator = self.build_generator()
        self.examples = TrainExamples(self.train_end, self.opts.train_last)
        if len(self.examples) == 0:
            raise ConfigError("no user has two or more training events; the dataset is too small for this split")
        self.optimizer = generator_optimizer(self.model.parameters(), cfg)
        self.setup_protocol()
        self.open_run(resume)

    # -- protocol hooks -------------------------------------------------------------------------------
    def evaluation_setup(self, cfg: RunConfig) -> str:
        """The ks the beam can rank (``eval.ks`` up to the beam size); returns the default stopping metric, after
        checking that ``eval.metrics`` selects the one the run stops on."""
        self.ks = generation_ks(cfg, self.opts.beam_size)
        default = default_stop_metric(GENERATION, self.ks)
        check_stop_metric(early_stop_metric(cfg, default), cfg.eval.metrics, GENERATION, self.ks)
        return default

    def prepare_data(self) -> None:
        """The split of ``data:``; the training part of row ``u`` is its first ``train_end[u]`` events."""
        self.seqs = UserSequences.from_interactions(self.dataset.interactions)
        self.split: Split = split_from_config(self.seqs, self.cfg.data)
        self.train_end = self.split.train_end

    def setup_protocol(self) -> None:
        """TIGER's schedule (held, then ``1/sqrt(step)``) and the validation queries."""
        self.valid_samples = self._valid_subset()
        self.schedule = lr_schedule("inverse_sqrt", self.cfg.train.lr, warmup_steps=self.opts.warmup_steps,
                                    linear_warmup_steps=self.opts.linear_warmup_steps)

    def build_generator(self) -> Generator:
        """The recipe's generator with its SID table (and item content vectors when it needs them), on the device."""
        cfg, dataset = self.cfg, self.dataset
        model = build_model(cfg.model, dataset.num_items, cfg.data.max_len)
        if GENERATOR not in model.kinds:
            raise ConfigError(f"model '{cfg.model['name']}' is not a generator; this trainer trains generators")
        model.set_sid_table(self.sids)
        if model.needs_item_vectors:  # GLASS: SID-Tier prototypes from item content
            from genrec.sid.build import item_embeddings
            from genrec.train.run import run_cf_embeddings

            emb = item_embeddings(cfg.sid, dataset, sessions=self.sessions, cf_loader=run_cf_embeddings)
            model.set_item_vectors(emb.item_ids, emb.vectors)
        missing = np.setdiff1d(np.unique(self.seqs.items), self.sids.item_ids)
        if missing.size:
            raise DataError(f"SID table lacks {missing.size} item(s) of the dataset (e.g. {missing[:5].tolist()})")
        return model.to(self.device)

    # -- run folder -----------------------------------------------------------------------------------
    def run_record(self) -> dict[str, Any]:
        return {**super().run_record(), "sid_fingerprint": self.sids.fingerprint, "sid_table": self.sids.meta(),
                "generator": asdict(self.opts)}

    def _valid_subset(self) -> EvalSamples:
        v = self.split.valid
        cap = self.opts.valid_max_queries
        if cap <= 0 or len(v) <= cap:
            return v
        keep = np.sort(np.random.default_rng([self.cfg.train.seed, 7]).choice(len(v), cap, replace=False))
        return EvalSamples(v.rows[keep], v.hist_end[keep])

    # -- training -------------------------------------------------------------------------------------
    def batch(self, idx: np.ndarray) -> Any:
        """Example indices -> the model's training inputs (:meth:`~genrec.models.base.Generator.training_inputs`)
        for histories of the model's ``max_len`` (GLASS adds its long window), users and target items."""
        rows, ends = self.examples.rows[idx], self.examples.ends[idx]
        hist = torch.from_numpy(history_matrix(self.seqs, rows, ends, self.model.max_len)).to(self.device)
        users = torch.from_numpy(self.seqs.user_ids[rows]).to(self.device)
        targets = torch.from_numpy(self.seqs.items[self.seqs.offsets[rows] + ends]).to(self.device)  # (B,)
        return self.model.training_inputs(GeneratorBatch(hist, users, targets))

    def epoch_batches(self, epoch: int) -> list[np.ndarray]:
        # Length bucketing: the encoder reads 1 + m * min(j, max_len) tokens, so batching prefixes of similar
        # length removes most padding (same loss, several times fewer FLOPs on short-history datasets).
        tc = self.cfg.train
        lengths = np.minimum(self.examples.ends, self.cfg.data.max_len)
        return batch_order(lengths, tc.batch_size, np.random.default_rng([tc.seed, epoch]), tc.length_bucketing)

    def step_loss(self, rows: np.ndarray) -> tuple[torch.Tensor, Any]:
        inputs = self.batch(rows)
        with self.autocast():
            return next_sid_loss(self.model.sid_logits(inputs))  # (sum, every SID token of the batch)

    def validate(self) -> tuple[dict[str, Any], float | None] | None:
        if not len(self.valid_samples):
            return None
        m_valid = self._evaluate_samples(self.valid_samples).metrics
        metric = m_valid.get(self.stop_metric)
        if metric is None:
            raise ConfigError(f"train.early_stop_metric '{self.stop_metric}' is not among {sorted(m_valid)}")
        return {k: v for k, v in m_valid.items() if k != "num_queries"}, metric

    # -- evaluation -----------------------------------------------------------------------------------
    def _evaluate_samples(self, samples: EvalSamples, constrained: bool | None = None) -> GenerationEval:
        return generation_eval(self.model, self.cfg, self.opts, self.seqs, samples, constrained)

    def evaluate(self, which: str = "test", constrained: bool | None = None) -> dict[str, Any]:
        """Results record for ``which`` (test | valid); ``constrained=False`` measures free decoding."""
        return generation_results(self.model, self.cfg, self.opts, self.dataset, self.seqs, self.split, which,
                                  constrained, sid_fingerprint=self.sids.fingerprint, stop_metric=self.stop_metric,
                                  best_epoch=self.state.get("best_epoch"))
