"""GAMER's comparisons on the same session split, queries, candidates and metrics, and one entry point for all.

A variant is any registered model; what runs depends on its kind and capabilities, never on its name:

- a multi-behavior generator (GAMER, its ablations, the plain decoder): :class:`~genrec.train.gamer.GamerTrainer`;
- a retriever (SASRec): the retriever trainer (:class:`~genrec.train.trainer.Trainer`, its training step and
  objective) on the item sequence of *all* behaviors (behaviors dropped): every window of ``max_len + 1``
  training events, each position supervising the next item;
- a next-item generator (TIGER): the generator trainer (:class:`~genrec.train.generator.GeneratorTrainer`) on
  the *same* SID table as GAMER (built from the same ``sid`` section; deterministic, and the fingerprint is
  stamped), without user token: every training event after the first is a target, its history the ``max_len``
  events before it;
- a model with nothing to learn (``trainable = False``, the ``recency`` heuristic): evaluated as it is.

:class:`MultiBehaviorProtocol` is what the retriever and generator runs share here: GAMER's split, its optimiser
schedule (AdamW, linear warmup over ``multibehavior.warmup_ratio`` then cosine decay), early stopping on a
validation ranking metric (``multibehavior.early_stop``, e.g. ``merged/ndcg@10``) computed with the same
per-behavior evaluation, and GAMER's results record. They resume exactly, mid-epoch too (the epoch order is a
function of ``(seed, epoch)``, the schedule and the retriever's negatives of the step).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch

from genrec.config import RunConfig
from genrec.data.multibehavior import BehaviorLevels, MultiBehaviorConfig, session_split, training_sequences
from genrec.data.multibehavior_config import with_defaults
from genrec.data.schema import Dataset
from genrec.data.sequences import SeqBatch, batch_order, pad_windows
from genrec.errors import ConfigError
from genrec.eval.metrics import MULTI_TARGET, check_stop_metric, select_metrics
from genrec.eval.multibehavior import evaluate_behaviors, metrics_record, protocol_record
from genrec.eval.multibehavior_baselines import behavior_ranker
from genrec.eval.record import results_record
from genrec.io import write_json_atomic
from genrec.models.base import GENERATOR, MULTI_BEHAVIOR, RETRIEVER
from genrec.models.registry import build_model, get_model_class
from genrec.nn.optim import lr_schedule
from genrec.sid.codebook import SIDTable
from genrec.train import distributed as dist_utils
from genrec.train.base import TrainerBase, resolve_device
from genrec.train.gamer import GamerTrainer, run_sid_table
from genrec.train.generator import GeneratorTrainer
from genrec.train.run_folder import RunFolder
from genrec.train.trainer import Trainer

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


class MultiBehaviorProtocol:
    """GAMER's protocol for a kind's own trainer: put it first in the bases (``class X(MultiBehaviorProtocol,
    Trainer)``). Its hooks replace the trainer's data, schedule and evaluation hooks; the trainer keeps its
    training step. Call :meth:`open_protocol` before the trainer's ``__init__``."""

    compat_keys = ("model", "num_items", "max_len", "data_fingerprint", "multibehavior", "sid_fingerprint")
    sids: SIDTable | None = None

    def open_protocol(self, cfg: RunConfig, dataset: Dataset, options: MultiBehaviorConfig | None) -> None:
        """Levels, session split, ks and the early-stopping row/metric (settings checked before anything runs)."""
        self.mb = options or cfg.multibehavior
        self.mb.check()
        self.levels = BehaviorLevels.from_manifest(dataset.manifest, self.mb.behavior_order or None)
        self.split = session_split(dataset.interactions, self.levels, self.mb.session_gap)
        self.ks = [k for k in cfg.eval.ks if k <= cfg.generator.beam_size] or [1, 5, 10]
        self.stop = parse_stop(self.mb.early_stop, self.levels, self.ks, cfg.eval.metrics)

    def num_examples(self) -> int:
        raise NotImplementedError

    def example_lengths(self) -> np.ndarray:
        """(num_examples,) events each training example reads (what ``multibehavior.length_bucketing`` sorts by)."""
        raise NotImplementedError

    # -- the trainer's hooks ----------------------------------------------------------------------------
    def evaluation_setup(self, cfg: RunConfig) -> str:
        return self.mb.early_stop

    def setup_protocol(self) -> None:
        """GAMER's schedule over this run's examples, and the model as the multi-behavior evaluator reads it."""
        self.minimize = False
        tc = self.cfg.train
        self.steps_per_epoch = math.ceil(self.num_examples() / tc.batch_size)
        self.total_steps = self.steps_per_epoch * tc.epochs
        self.schedule = lr_schedule("cosine", tc.lr, total_steps=self.total_steps, warmup_ratio=self.mb.warmup_ratio)
        self.adapter = behavior_ranker(self.model)

    def compatible(self, key: str, old: Any, new: Any) -> bool:
        if key == "multibehavior":  # a key added later ran at its default
            return with_defaults(old) == with_defaults(new)
        return super().compatible(key, old, new)  # type: ignore[misc]  (the trainer's, next in the bases)

    def run_record(self) -> dict[str, Any]:
        return {**RunFolder.run_record(self), "multibehavior": asdict(self.mb),
                "sid_fingerprint": self.sids.fingerprint if self.sids is not None else None,
                "num_train_examples": int(self.num_examples())}

    def epoch_batches(self, epoch: int) -> list[np.ndarray]:
        """One permutation cut into batches, or (``multibehavior.length_bucketing``) examples of similar length
        batched together."""
        rng = np.random.default_rng([self.cfg.train.seed, epoch])
        if not self.mb.length_bucketing:
            return batch_order(np.zeros(self.num_examples(), np.int64), self.cfg.train.batch_size, rng, False)
        return batch_order(self.example_lengths(), self.cfg.train.batch_size, rng, True)

    def _evaluate(self, which: str, behaviors: list[int] | None = None, max_users: int = 0):
        g = self.cfg.generator
        return evaluate_behaviors(self.adapter, self.split, which, behaviors, self.ks, g.beam_size,
                                  self.cfg.eval.batch_size, self.mb.candidates, self.mb.min_history,
                                  g.constrained, max_users, self.cfg.train.seed, by_length=self.mb.length_bucketing)

    def validate(self) -> tuple[dict[str, Any], float]:
        """The early-stopping metric on the validation sessions (one behavior, or all of them merged)."""
        name, metric = self.stop
        behaviors = None if name == "merged" else [self.levels.id_of(name)]
        ev = self._evaluate("valid", behaviors, self.mb.valid_max_users)
        row = ev.merged if name == "merged" else ev.per_behavior[name]
        value = float(row.get(metric, 0.0))
        return {"/".join(self.stop): value}, value

    def evaluate(self, which: str = "test") -> dict[str, Any]:
        """Results record for ``which`` in the layout of :meth:`GamerTrainer.evaluate`."""
        t0 = time.time()
        behaviors = [self.levels.id_of(n) for n in self.mb.eval_behaviors] or None
        ev = self._evaluate(which, behaviors)
        g = self.cfg.generator
        ranked_by = (f"beam {g.beam_size}, {'trie-constrained' if g.constrained else 'unconstrained'}"
                     if GENERATOR in self.model.kinds else f"top {g.beam_size} retriever scores over the candidates")
        rec = _record(self.cfg, self.dataset, self.mb, self.levels, ev, which, ranked_by, self.cfg.data.max_len,
                      self.ks, sid_fingerprint=self.sids.fingerprint if self.sids is not None else None,
                      eval_seconds=round(time.time() - t0, 2), train_seconds=self.state.get("train_seconds"),
                      num_parameters=sum(p.numel() for p in self.model.parameters()))
        rec["protocol"]["best_epoch"] = self.state.get("best_epoch")
        return rec


class MultiBehaviorRetriever(MultiBehaviorProtocol, Trainer):
    """A retriever (SASRec) trained by the retriever trainer on every window of the training part, all behaviors."""

    def __init__(self, cfg: RunConfig, run_dir: str | Path, dataset: Dataset, sids: SIDTable | None = None,
                 options: MultiBehaviorConfig | None = None, resume: bool = True) -> None:
        self.open_protocol(cfg, dataset, options)
        Trainer.__init__(self, cfg, run_dir, dataset, resume=resume)

    def prepare_data(self) -> None:
        self.seqs = self.split.seqs
        self.windows = training_sequences(self.split, self.cfg.data.max_len, 0, "all", self.cfg.train.seed)
        self.targets = np.flatnonzero(np.diff(self.windows.offsets) >= 2)  # a window needs an input and a target
        if len(self.targets) == 0:
            raise ConfigError("no training examples: no user has two training events before its validation session")

    def num_examples(self) -> int:
        return len(self.targets)

    def example_lengths(self) -> np.ndarray:
        return np.diff(self.windows.offsets)[self.targets]  # (T,) events of each window

    def target_counts(self) -> np.ndarray:
        return self.example_lengths() - 1  # (T,) a window of n events supervises n - 1 positions

    def train_batch(self, ids: np.ndarray) -> SeqBatch:
        """Windows ``targets[ids]`` -> inputs ``w[:-1]`` and next items ``w[1:]`` (no timestamps)."""
        items = self.seqs.items
        wins = [self.windows.events(int(s)) for s in self.targets[ids]]
        inp = torch.from_numpy(pad_windows([items[w[:-1]] for w in wins], None)[0])  # (B, L)
        tgt = torch.from_numpy(pad_windows([items[w[1:]] for w in wins], None)[0])  # (B, L)
        zeros = torch.zeros(inp.shape, dtype=torch.long)
        return SeqBatch(inp, zeros, (inp > 0).sum(1), torch.zeros(len(wins), dtype=torch.long), targets=tgt)


class MultiBehaviorGenerator(MultiBehaviorProtocol, GeneratorTrainer):
    """A next-item generator (TIGER) trained by the generator trainer on GAMER's SIDs: every training event after
    a user's first is a target."""

    def __init__(self, cfg: RunConfig, run_dir: str | Path, dataset: Dataset, sids: SIDTable | None = None,
                 options: MultiBehaviorConfig | None = None, resume: bool = True) -> None:
        self.open_protocol(cfg, dataset, options)
        if sids is None:  # one process builds GAMER's table into the run folder, the others read it
            dist_utils.init_distributed(resolve_device(cfg.train.device))
            Path(run_dir).mkdir(parents=True, exist_ok=True)
            sids = run_sid_table(Path(run_dir), cfg, dataset, self.split)
        GeneratorTrainer.__init__(self, cfg, run_dir, dataset, sids, resume=resume)

    def prepare_data(self) -> None:
        self.seqs = self.split.seqs
        self.train_end = self.split.valid_start  # (U,) training events per user
        self.sessions = self.split

    def num_examples(self) -> int:
        return len(self.examples)

    def example_lengths(self) -> np.ndarray:
        return np.minimum(self.examples.ends, self.cfg.data.max_len)  # (T,) history events of each target


def multibehavior_trainer(cfg: RunConfig, run_dir: str | Path, dataset: Dataset, sids: SIDTable | None = None,
                          options: MultiBehaviorConfig | None = None, resume: bool = True) -> TrainerBase:
    """The trainer of a trainable variant, chosen by the model's kind and protocol."""
    import genrec.models  # noqa: F401  (registers the built-in models)

    cls = get_model_class(cfg.model["name"])
    if not cls.trainable:
        raise ConfigError(f"model '{cfg.model['name']}' has nothing to train (see evaluate_untrained)")
    if GENERATOR in cls.kinds and cls.protocol == MULTI_BEHAVIOR:
        return GamerTrainer(cfg, run_dir, dataset, sids, options, resume=resume)
    if RETRIEVER in cls.kinds:
        return MultiBehaviorRetriever(cfg, run_dir, dataset, sids, options, resume=resume)
    if GENERATOR in cls.kinds:
        return MultiBehaviorGenerator(cfg, run_dir, dataset, sids, options, resume=resume)
    raise ConfigError(f"model '{cfg.model['name']}' is not a multi-behavior baseline "
                      "(a retriever, a next-item generator or a multi-behavior generator)")


def evaluate_untrained(cfg: RunConfig, dataset: Dataset, options: MultiBehaviorConfig | None = None,
                       which: str = "test") -> dict[str, Any]:
    """Results record of a model with nothing to learn (``model: {name: recency, restrict_to_candidates: true}``)."""
    import genrec.models  # noqa: F401  (registers the built-in models)

    opts = options or cfg.multibehavior
    opts.check()
    name = cfg.model["name"]
    known = [f.name for f in fields(get_model_class(name).Config)]
    unknown = sorted(set(cfg.model) - {"name", *known})
    if unknown:
        raise ConfigError(f"{name} baseline: unknown model keys {unknown} (known: {', '.join(known)})")
    model = build_model(cfg.model, dataset.num_items, cfg.data.max_len)
    levels = BehaviorLevels.from_manifest(dataset.manifest, opts.behavior_order or None)
    split = session_split(dataset.interactions, levels, opts.session_gap)
    ks = [k for k in cfg.eval.ks if k <= cfg.generator.beam_size] or [1, 5, 10]
    t0 = time.time()
    behaviors = [levels.id_of(n) for n in opts.eval_behaviors] or None
    ev = evaluate_behaviors(behavior_ranker(model), split, which, behaviors, ks, cfg.generator.beam_size,
                            cfg.eval.batch_size, opts.candidates, opts.min_history, True, 0, cfg.train.seed,
                            by_length=opts.length_bucketing)
    return _record(cfg, dataset, opts, levels, ev, which, model.ranked_by, cfg.data.max_len, ks,
                   eval_seconds=round(time.time() - t0, 2), train_seconds=0.0, num_parameters=0)


def results_file(candidates: str) -> str:
    """``results.json`` for the default (leak-free) candidates, ``results-<mode>.json`` for another mode."""
    return RESULTS_FILE if candidates == DEFAULT_CANDIDATES else f"results-{candidates}.json"


def selection_uses_candidates(cfg: RunConfig, options: MultiBehaviorConfig | None = None) -> bool:
    """Whether the chosen weights depend on the candidate mode (early stopping on a ranking metric).

    A multi-behavior generator stopping on the validation loss does not: one trained run can be tested under every
    mode; neither does a model that is not trained.
    """
    import genrec.models  # noqa: F401  (registers the built-in models)

    opts = options or cfg.multibehavior
    cls = get_model_class(cfg.model["name"])
    native = GENERATOR in cls.kinds and cls.protocol == MULTI_BEHAVIOR
    return cls.trainable and not (native and opts.early_stop == "valid_loss")


def run_variant(cfg: RunConfig, run_dir: str | Path, dataset: Dataset, options: MultiBehaviorConfig | None = None,
                resume: bool = True) -> dict[str, Any]:
    """Train (unless finished) and test one variant; the record also goes to ``run_dir/`` :func:`results_file`.

    A folder whose results file exists is not evaluated again: the stored record is returned (``resume``).
    A finished GAMER run (valid-loss early stopping) is only re-tested under another candidate mode.
    """
    import genrec.models  # noqa: F401  (registers the built-in models)

    run_dir = Path(run_dir)
    opts = options or cfg.multibehavior
    done = run_dir / results_file(opts.candidates)
    if resume and done.exists():
        return json.loads(done.read_text())
    if not get_model_class(cfg.model["name"]).trainable:
        rec = evaluate_untrained(cfg, dataset, opts)
        rec["summary"] = {"finished": True, "train_seconds": 0.0}
    else:
        trainer = multibehavior_trainer(cfg, run_dir, dataset, None, opts, resume=resume)
        summary = trainer.fit()
        if not trainer.main:  # under torchrun only the main process tests and writes
            return {"summary": summary}
        trainer.load_best()
        rec = trainer.evaluate("test")
        rec["summary"] = summary
    write_json_atomic(done, rec)
    return rec
