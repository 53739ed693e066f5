"""Baselines for GAMER on the same session split, queries, candidates and metrics, and one entry point for all.

- ``sasrec``: SASRec trained on the item sequence of *all* behaviors (behaviors dropped): every window of
  ``max_len + 1`` training events, each position supervises the next item with the recipe's objective.
- ``tiger``: TIGER on the *same* SID table as GAMER (built from the same ``sid`` section; deterministic, and
  the fingerprint is stamped), no behavior tokens and no user token: every training event after the first
  is a target, its history is the ``max_len`` events before it.
- ``recency``: the user's most recent distinct history items, filtered to the candidates (no training).
- ``gamer`` (and its ablations / the plain decoder, which are GAMER recipes): :class:`GamerTrainer`.

The trained baselines use GAMER's optimiser and schedule (AdamW, linear warmup over
``multibehavior.warmup_ratio`` then cosine decay) and early-stop on a validation ranking metric
(``multibehavior.early_stop``, e.g. ``merged/ndcg@10`` or ``buy/ndcg@10``) computed with the same
per-behavior evaluation; they resume exactly, mid-epoch too (the epoch order is a function of ``(seed, epoch)``,
the schedule and the SASRec negatives of the step).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from genrec.config import RunConfig
from genrec.data.multibehavior import BehaviorLevels, MultiBehaviorConfig, session_split, training_sequences
from genrec.data.schema import Dataset
from genrec.data.sequences import SeqBatch
from genrec.errors import ConfigError, DataError
from genrec.eval.metrics import MULTI_TARGET, check_stop_metric, select_metrics
from genrec.eval.multibehavior import evaluate_behaviors, metrics_record, protocol_record
from genrec.eval.multibehavior_baselines import RecencyBaseline, RetrieverAdapter, TigerAdapter
from genrec.eval.record import results_record
from genrec.models.base import RETRIEVER
from genrec.models.registry import build_model
from genrec.nn.optim import build_optimizer, lr_schedule
from genrec.objectives import build_objective
from genrec.sid.codebook import SIDTable
from genrec.train.base import TrainerBase, write_json_atomic
from genrec.train.gamer import GamerTrainer, run_sid_table

BASELINES = ("sasrec", "tiger", "recency")
RESULTS_FILE = "results.json"
DEFAULT_CANDIDATES = MultiBehaviorConfig().candidates


def parse_stop(spec: str, levels: BehaviorLevels, ks: list[int], metrics: list[str] | None = None) -> tuple[str, str]:
    """``<behavior|merged>/<metric>`` -> (row name, metric); the baselines have no validation loss. ``metrics``
    is ``eval.metrics``: the metric must be one it selects."""
    if "/" not in spec:
        raise ConfigError(f"multibehavior.early_stop '{spec}': the baselines early-stop on a validation metric; "
                          "set multibehavior.early_stop=<behavior or merged>/<metric>, e.g. merged/ndcg@10")
    name, metric = spec.split("/", 1)
    if name != "merged":
        levels.id_of(name)
    check_stop_metric(metric, metrics, MULTI_TARGET, ks, key="multibehavior.early_stop metric")
    return name, metric


def _record(cfg: RunConfig, dataset: Dataset, opts: MultiBehaviorConfig, levels: BehaviorLevels, ev: Any,
            which: str, ranked_by: str, history_window: int, ks: list[int], **extra: Any) -> dict[str, Any]:
    """A results record in the layout of :meth:`GamerTrainer.evaluate`."""
    return results_record(cfg.model["name"], dataset, protocol_record(levels, opts, which, ranked_by, history_window, ks),
                          metrics_record(ev, levels, select_metrics(cfg.eval.metrics, MULTI_TARGET)), cfg,
                          sections={"multibehavior": asdict(opts)}, **extra)


class BaselineTrainer(TrainerBase):
    """Train SASRec (all behaviors) or TIGER (GAMER's SIDs) on the training part of the session split."""

    compat_keys = ("model", "num_items", "max_len", "data_fingerprint", "multibehavior", "sid_fingerprint")

    def __init__(self, cfg: RunConfig, run_dir: str | Path, dataset: Dataset, sids: SIDTable | None = None,
                 options: MultiBehaviorConfig | None = None, resume: bool = True) -> None:
        self.opts = options or cfg.multibehavior
        self.opts.check()
        super().__init__(cfg, run_dir, dataset, default_metric=self.opts.early_stop)
        self.levels = BehaviorLevels.from_manifest(dataset.manifest, self.opts.behavior_order or None)
        self.split = session_split(dataset.interactions, self.levels, self.opts.session_gap)
        self.ks = [k for k in cfg.eval.ks if k <= cfg.generator.beam_size] or [1, 5, 10]
        self.stop = parse_stop(self.opts.early_stop, self.levels, self.ks, cfg.eval.metrics)
        self.minimize = False
        name = cfg.model.get("name")
        self.model = build_model(cfg.model, dataset.num_items, cfg.data.max_len)
        self.sids: SIDTable | None = None
        self.adapter: RetrieverAdapter | TigerAdapter
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if name == "tiger":
            sids = sids if sids is not None else run_sid_table(self.run_dir, cfg, dataset, self.split)
            missing = np.setdiff1d(np.unique(self.split.seqs.items), sids.item_ids)
            if missing.size:
                raise DataError(f"SID table lacks {missing.size} item(s) of the dataset (e.g. {missing[:5].tolist()})")
            self.sids = sids
            self.model.set_sid_table(sids)
            self.adapter = TigerAdapter(self.model)
            start = self.split.valid_start  # (U,) training events per user; targets are positions 1..start-1
            n = np.maximum(start - 1, 0)
            rows = np.repeat(np.arange(len(n)), n)
            self.targets = (self.split.seqs.offsets[rows] + np.arange(n.sum()) - np.repeat(np.cumsum(n) - n, n) + 1)
        elif RETRIEVER in getattr(self.model, "kinds", ()):
            self.objective = build_objective(cfg.objective)
            self.adapter = RetrieverAdapter(self.model)
            self.windows = training_sequences(self.split, cfg.data.max_len, 0, "all", cfg.train.seed)
            keep = np.flatnonzero(np.diff(self.windows.offsets) >= 2)  # a window needs an input and a target
            self.targets = keep
        else:
            raise ConfigError(f"model '{name}' is not a multi-behavior baseline (sasrec-style retriever or tiger)")
        if len(self.targets) == 0:
            raise ConfigError("no training examples: no user has two training events before its validation session")
        self.model.to(self.device)
        tc = cfg.train
        self.steps_per_epoch = math.ceil(len(self.targets) / tc.batch_size)
        self.total_steps = self.steps_per_epoch * tc.epochs
        self.optimizer = build_optimizer(self.model.parameters(), tc)
        self.schedule = lr_schedule("cosine", tc.lr, total_steps=self.total_steps, warmup_ratio=self.opts.warmup_ratio)
        self.open_run(resume)

    def run_record(self) -> dict[str, Any]:
        return {**super().run_record(), "multibehavior": asdict(self.opts),
                "sid_fingerprint": self.sids.fingerprint if self.sids is not None else None,
                "num_train_examples": int(len(self.targets))}

    # -- batches ----------------------------------------------------------------------------------------
    def _sasrec_loss(self, ids: np.ndarray, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Windows ``ids`` -> mean next-item loss over every position (inputs w[:-1], targets w[1:]), positions."""
        seqs = self.split.seqs
        wins = [self.windows.events(int(s)) for s in ids]
        width = max(len(w) for w in wins) - 1
        items = np.zeros((len(wins), width), np.int64)
        tgts = np.zeros((len(wins), width), np.int64)
        for i, w in enumerate(wins):
            items[i, :len(w) - 1] = seqs.items[w[:-1]]
            tgts[i, :len(w) - 1] = seqs.items[w[1:]]
        lengths = torch.from_numpy((items > 0).sum(1))
        zeros = torch.zeros(items.shape, dtype=torch.long)
        batch = SeqBatch(torch.from_numpy(items), zeros, lengths, torch.zeros(len(wins), dtype=torch.long),
                         targets=torch.from_numpy(tgts)).to(self.device)
        states = self.model.sequence_output(batch)  # (B, L, D)
        valid = batch.targets > 0  # (B, L)
        gen = torch.Generator().manual_seed(self.cfg.train.seed * 1_000_003 + step)
        n = valid.sum()
        return self.objective(self.model, states[valid], batch.targets[valid], gen) / n.clamp(min=1), n

    def _tiger_loss(self, ids: np.ndarray) -> tuple[torch.Tensor, int]:
        """Target events ``ids`` -> mean cross-entropy of their SID given the ``max_len`` events before them."""
        seqs = self.split.seqs
        ev = self.targets[ids]  # (B,) flat event index of each target
        rows = np.searchsorted(seqs.offsets, ev, side="right") - 1
        start = np.maximum(seqs.offsets[rows], ev - self.cfg.data.max_len)
        hist = self.model.history_tensor([seqs.items[a:b] for a, b in zip(start, ev)])  # (B, L)
        enc_tokens, enc_mask = self.model.encoder_inputs(hist, None)
        target = self.model.item_sids[torch.from_numpy(seqs.items[ev]).to(self.device)]  # (B, m)
        return self.model.loss(enc_tokens, enc_mask, target) / target.numel(), target.numel()

    # -- training ---------------------------------------------------------------------------------------
    def epoch_batches(self, epoch: int) -> list[np.ndarray]:
        bs = self.cfg.train.batch_size
        order = np.random.default_rng([self.cfg.train.seed, epoch]).permutation(len(self.targets))
        return [order[i:i + bs] for i in range(0, len(order), bs)]

    def step_loss(self, ids: np.ndarray) -> tuple[torch.Tensor, Any]:
        with self.autocast():
            if self.sids is not None:
                return self._tiger_loss(ids)
            return self._sasrec_loss(self.targets[ids], self.state["global_step"])

    def _evaluate(self, which: str, behaviors: list[int] | None = None, max_users: int = 0):
        g = self.cfg.generator
        return evaluate_behaviors(self.adapter, self.split, which, behaviors, self.ks, g.beam_size,
                                  self.cfg.eval.batch_size, self.opts.candidates, self.opts.min_history,
                                  g.constrained, max_users, self.cfg.train.seed)

    def validate(self) -> tuple[dict[str, Any], float]:
        """The early-stopping metric on the validation sessions (one behavior, or all of them merged)."""
        name, metric = self.stop
        behaviors = None if name == "merged" else [self.levels.id_of(name)]
        ev = self._evaluate("valid", behaviors, self.opts.valid_max_users)
        row = ev.merged if name == "merged" else ev.per_behavior[name]
        value = float(row.get(metric, 0.0))
        return {"/".join(self.stop): value}, value

    def evaluate(self, which: str = "test") -> dict[str, Any]:
        """Results record for ``which`` in the layout of :meth:`GamerTrainer.evaluate`."""
        t0 = time.time()
        behaviors = [self.levels.id_of(n) for n in self.opts.eval_behaviors] or None
        ev = self._evaluate(which, behaviors)
        g = self.cfg.generator
        ranked_by = (f"beam {g.beam_size}, {'trie-constrained' if g.constrained else 'unconstrained'}"
                     if self.sids is not None else f"top {g.beam_size} retriever scores over the candidates")
        rec = _record(self.cfg, self.dataset, self.opts, self.levels, ev, which, ranked_by, self.cfg.data.max_len,
                      self.ks, sid_fingerprint=self.sids.fingerprint if self.sids is not None else None,
                      eval_seconds=round(time.time() - t0, 2), train_seconds=self.state.get("train_seconds"),
                      num_parameters=sum(p.numel() for p in self.model.parameters()))
        rec["protocol"]["best_epoch"] = self.state.get("best_epoch")
        return rec


def evaluate_recency(cfg: RunConfig, dataset: Dataset, options: MultiBehaviorConfig | None = None,
                     which: str = "test") -> dict[str, Any]:
    """Results record of the recency heuristic (``model: {name: recency, restrict_to_candidates: true}``)."""
    opts = options or cfg.multibehavior
    opts.check()
    unknown = sorted(set(cfg.model) - {"name", "restrict_to_candidates"})
    if unknown:
        raise ConfigError(f"recency baseline: unknown model keys {unknown} (known: restrict_to_candidates)")
    restrict = cfg.model.get("restrict_to_candidates", True)
    if not isinstance(restrict, bool):
        raise ConfigError(f"model.restrict_to_candidates: expected true or false, got {restrict!r}")
    levels = BehaviorLevels.from_manifest(dataset.manifest, opts.behavior_order or None)
    split = session_split(dataset.interactions, levels, opts.session_gap)
    ks = [k for k in cfg.eval.ks if k <= cfg.generator.beam_size] or [1, 5, 10]
    model = RecencyBaseline(cfg.data.max_len, restrict)
    t0 = time.time()
    behaviors = [levels.id_of(n) for n in opts.eval_behaviors] or None
    ev = evaluate_behaviors(model, split, which, behaviors, ks, cfg.generator.beam_size, cfg.eval.batch_size,
                            opts.candidates, opts.min_history, True, 0, cfg.train.seed)
    ranked_by = "most recent distinct history items" + (", filtered to the candidates" if restrict else "")
    return _record(cfg, dataset, opts, levels, ev, which, ranked_by, cfg.data.max_len, ks,
                   eval_seconds=round(time.time() - t0, 2), train_seconds=0.0, num_parameters=0)


def results_file(candidates: str) -> str:
    """``results.json`` for the default (leak-free) candidates, ``results-<mode>.json`` for another mode."""
    return RESULTS_FILE if candidates == DEFAULT_CANDIDATES else f"results-{candidates}.json"


def selection_uses_candidates(cfg: RunConfig, options: MultiBehaviorConfig | None = None) -> bool:
    """Whether the chosen weights depend on the candidate mode (early stopping on a ranking metric).

    GAMER stopping on the validation loss does not: one trained run can be tested under every mode.
    """
    opts = options or cfg.multibehavior
    return cfg.model.get("name") != "recency" and not (cfg.model.get("name") == "gamer"
                                                        and opts.early_stop == "valid_loss")


def run_variant(cfg: RunConfig, run_dir: str | Path, dataset: Dataset, options: MultiBehaviorConfig | None = None,
                resume: bool = True) -> dict[str, Any]:
    """Train (unless finished) and test one variant; the record also goes to ``run_dir/`` :func:`results_file`.

    A folder whose results file exists is not evaluated again: the stored record is returned (``resume``).
    A finished GAMER run (valid-loss early stopping) is only re-tested under another candidate mode.
    """
    run_dir = Path(run_dir)
    opts = options or cfg.multibehavior
    done = run_dir / results_file(opts.candidates)
    if resume and done.exists():
        return json.loads(done.read_text())
    name = cfg.model.get("name")
    if name == "recency":
        rec = evaluate_recency(cfg, dataset, opts)
        rec["summary"] = {"finished": True, "train_seconds": 0.0}
    else:
        trainer: GamerTrainer | BaselineTrainer
        if name == "gamer":
            trainer = GamerTrainer(cfg, run_dir, dataset, None, opts, resume=resume)
        else:
            trainer = BaselineTrainer(cfg, run_dir, dataset, None, opts, resume=resume)
        summary = trainer.fit()
        if not trainer.main:  # under torchrun only the main process tests and writes
            return {"summary": summary}
        trainer.load_best()
        rec = trainer.evaluate("test")
        rec["summary"] = summary
    write_json_atomic(done, rec)
    return rec
