"""Training and evaluation of GAMER-style multi-behavior generators on a session split.

What one run does (spec §3.5-3.7):

1. Levels from the manifest (or ``multibehavior.behavior_order``), sessions by inactivity gap, split by the
   last two sessions (:mod:`genrec.data.multibehavior`).
2. Semantic ids: a saved table (``sid.table``), or RQ-KMeans (+ collision level) over item embeddings:
   ``sid.embeddings=cf`` without ``source_run`` quantizes an item-session co-occurrence SVD computed from
   **training events only** (see :func:`cooccurrence_embeddings`), ``file`` a ``.npy`` array, ``text`` the
   item text. The table is written to the run folder.
3. Training sequences: every user's training part plus ``augment`` thinned copies (built once, seeded), cut
   to windows of ``max_len + 1`` interactions; next-token cross-entropy on SID tokens with temperature.
   AdamW, linear warmup over ``warmup_ratio`` of the steps then cosine decay (the authors' HF Trainer).
4. Early stopping on the validation loss (each validation-session event predicted from the history before
   that session, computed in one pass per user with branch masks) or on a validation metric.
5. Test: per-behavior beam search over that behavior's candidates, multi-target metrics, user-weighted merge.

Resume is exact at step granularity: epoch order is a function of ``(seed, epoch)``, the learning rate of
the step, and the RNG state is restored from the atomic checkpoint.
"""

from __future__ import annotations

import math
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from genrec.config import RunConfig
from genrec.data.multibehavior import (
    BehaviorLevels,
    MultiBehaviorConfig,
    SessionSplit,
    TrainSequences,
    session_split,
    training_sequences,
)
from genrec.data.multibehavior_config import with_defaults
from genrec.data.schema import Dataset
from genrec.data.sequences import batch_order, pad_windows
from genrec.errors import ConfigError, DataError
from genrec.eval.metrics import MULTI_TARGET, check_stop_metric
from genrec.eval.multibehavior import (
    MultiBehaviorEval,
    behavior_eval,
    behavior_results,
    format_table,
)
from genrec.models.base import GENERATOR, Generator, GeneratorBatch
from genrec.models.registry import build_model
from genrec.nn.optim import build_optimizer, lr_schedule
from genrec.objectives import next_sid_loss
from genrec.runs.layout import SESSION_SID_FILE as SID_FILE
from genrec.sid.build import build_session_sid_table
from genrec.sid.codebook import SIDTable
from genrec.train import distributed as dist_utils
from genrec.train.base import TrainerBase


def run_sid_table(run_dir: Path, cfg: RunConfig, dataset: Dataset, split: SessionSplit) -> SIDTable:
    """The run folder's ``sids.json``, built from the training events the first time (by one process)."""
    path = run_dir / SID_FILE
    with dist_utils.main_first():
        if path.exists():
            return SIDTable.load(path)
        from genrec.train.run import run_cf_embeddings

        sids = build_session_sid_table(cfg.sid, dataset, split, cf_loader=run_cf_embeddings)
        sids.save(path)
    return sids


# ---- batches -----------------------------------------------------------------------------------------


def training_options(mb: dict[str, Any] | None) -> dict[str, Any] | None:
    """The ``multibehavior`` settings that shape the trained model (a run folder is bound to them).

    With early stopping on the validation loss, the candidate mode and the evaluated behaviors only affect
    the test, so a finished run may be evaluated again under another candidate mode.
    """
    if mb is None or mb.get("early_stop") != "valid_loss":
        return mb
    return {k: v for k, v in mb.items() if k not in ("candidates", "eval_behaviors")}


class ValidRows:
    """Validation-loss rows: a history prefix + up to ``max_len`` validation events as separate branches."""

    def __init__(self, split: SessionSplit, max_len: int, min_history: int, max_users: int = 0, seed: int = 0
                 ) -> None:
        start, end = split.bounds("valid")
        users = np.flatnonzero((end > start) & (start >= min_history))
        if max_users and len(users) > max_users:
            users = np.sort(np.random.default_rng([seed, 5]).choice(users, max_users, replace=False))
        hist = split.seqs.windows(users, start[users], max_len)  # the max_len events before each valid session
        self.hist: list[np.ndarray] = []
        self.branches: list[np.ndarray] = []
        for i, u in enumerate(users):
            h = hist.index[i, :hist.lengths[i]]
            ev = split.seqs.offsets[u] + np.arange(start[u], end[u])
            for j in range(0, len(ev), max_len):
                self.hist.append(h)
                self.branches.append(ev[j:j + max_len])

    def __len__(self) -> int:
        return len(self.hist)


class GamerTrainer(TrainerBase):
    """Train a multi-behavior generator (GAMER or an ablation) on a session split; run folder, checkpoints,
    best weights and patience from :class:`~genrec.train.base.TrainerBase`."""

    compat_keys = TrainerBase.compat_keys + ("sid_fingerprint", "behavior_levels", "multibehavior")
    ddp_find_unused = True  # routed experts: a batch need not reach every expert

    def __init__(self, cfg: RunConfig, run_dir: str | Path, dataset: Dataset, sids: SIDTable | None = None,
                 options: MultiBehaviorConfig | None = None, resume: bool = True) -> None:
        self.opts = options or getattr(cfg, "multibehavior", None) or MultiBehaviorConfig()
        self.opts.check()
        if cfg.generator.train_last:
            raise ConfigError("generator.train_last: GAMER trains on whole sessions (multibehavior.train_windows), "
                              "not on next-item prefixes; leave it at 0")
        super().__init__(cfg, run_dir, dataset, default_metric="valid_loss")
        tc = cfg.train
        self.levels = BehaviorLevels.from_manifest(dataset.manifest, self.opts.behavior_order or None)
        self.split = session_split(dataset.interactions, self.levels, self.opts.session_gap)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.sids = sids = sids if sids is not None else run_sid_table(self.run_dir, cfg, dataset, self.split)
        missing = np.setdiff1d(np.unique(self.split.seqs.items), sids.item_ids)
        if missing.size:
            raise DataError(f"SID table lacks {missing.size} item(s) of the dataset (e.g. {missing[:5].tolist()})")
        model_params = dict(cfg.model)
        model_params.setdefault("num_behaviors", self.levels.num_behaviors)
        self.model: Generator = build_model(model_params, dataset.num_items, cfg.data.max_len)
        if GENERATOR not in self.model.kinds or not self.model.needs_behavior_levels:
            raise ConfigError(f"model '{cfg.model.get('name')}' is not a multi-behavior generator")
        self.model.set_sid_table(sids)
        self.model.set_behavior_levels(self.levels.array())
        self.model.to(self.device)
        self.train_seqs: TrainSequences = training_sequences(self.split, cfg.data.max_len, self.opts.augment,
                                                             self.opts.train_windows, tc.seed)
        if len(self.train_seqs) == 0:
            raise ConfigError("no user has a training session before its validation session; "
                              "lower multibehavior.session_gap or use a larger log")
        self.valid_rows = ValidRows(self.split, cfg.data.max_len, self.opts.min_history, self.opts.valid_max_users,
                                    tc.seed)
        self.eval_behaviors = [self.levels.id_of(n) for n in self.opts.eval_behaviors] or list(
            range(self.levels.num_behaviors))
        self.ks = [k for k in cfg.eval.ks if k <= cfg.generator.beam_size] or [1, 5, 10]
        self.stop = self._parse_stop(self.opts.early_stop)
        self.stop_metric, self.minimize = self.opts.early_stop, self.stop[0] == "loss"
        self.steps_per_epoch = math.ceil(len(self.train_seqs) / tc.batch_size)
        self.total_steps = self.steps_per_epoch * tc.epochs
        self.optimizer = build_optimizer(self.model.parameters(), tc)
        self.schedule = lr_schedule("cosine", tc.lr, total_steps=self.total_steps, warmup_ratio=self.opts.warmup_ratio)
        self.open_run(resume)

    def _parse_stop(self, spec: str) -> tuple[str, int | None, str]:
        """``valid_loss`` or ``<behavior>/<metric>`` -> (kind, behavior id, metric)."""
        if spec == "valid_loss":
            return "loss", None, "valid_loss"
        if "/" not in spec:
            raise ConfigError(f"multibehavior.early_stop '{spec}': use valid_loss or <behavior>/<metric>")
        name, metric = spec.split("/", 1)
        check_stop_metric(metric, self.cfg.eval.metrics, MULTI_TARGET, self.ks, key="multibehavior.early_stop metric")
        return "metric", self.levels.id_of(name), metric

    # -- run folder -------------------------------------------------------------------------------------
    def run_record(self) -> dict[str, Any]:
        return {**super().run_record(), "sid_fingerprint": self.sids.fingerprint, "sid_table": self.sids.meta(),
                "behavior_levels": self.levels.as_dict(), "multibehavior": asdict(self.opts),
                "num_train_sequences": len(self.train_seqs),
                "num_parameters": sum(p.numel() for p in self.model.parameters())}

    def compatible(self, key: str, old: Any, new: Any) -> bool:
        if key == "multibehavior":
            old, new = with_defaults(old), with_defaults(new)  # a key added later ran at its default
            if training_options(old) == training_options(new):
                return True  # only evaluation settings differ: the trained model can be re-tested
        return super().compatible(key, old, new)

    # -- batches ----------------------------------------------------------------------------------------
    def _events(self, idx: np.ndarray, segments: np.ndarray | None = None) -> GeneratorBatch:
        """(B, L) flat event indices (-1 = none) -> the batch of their items and behaviors on the device."""
        seqs = self.split.seqs
        real = idx >= 0
        safe = np.where(real, idx, 0)
        items = torch.from_numpy(np.where(real, seqs.items[safe], 0)).to(self.device)
        behs = torch.from_numpy(np.where(real, self.split.behaviors[safe], 0).astype(np.int64)).to(self.device)
        seg = None if segments is None else torch.from_numpy(segments).to(self.device)
        return GeneratorBatch(items, behaviors=behs, segments=seg)

    def train_batch(self, seq_ids: np.ndarray) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Training sequence ids -> the model's inputs for right-padded (B, T) token rows."""
        rows = pad_windows([self.train_seqs.events(int(s)) for s in seq_ids], None, fill=-1)[0]
        return self.model.training_inputs(self._events(rows))

    def valid_batch(self, rows: range) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Validation rows -> the model's inputs: tokens (B, T) and segments (history = 0, validation event j = j + 1)."""
        vr = self.valid_rows
        pieces = [np.concatenate([vr.hist[i], vr.branches[i]]) for i in rows]
        segs = [np.r_[np.zeros(len(vr.hist[i]), np.int64), np.arange(1, len(vr.branches[i]) + 1)] for i in rows]
        return self.model.training_inputs(self._events(pad_windows(pieces, None, fill=-1)[0],
                                                       pad_windows(segs, None, fill=0)[0]))

    # -- training ---------------------------------------------------------------------------------------
    @torch.no_grad()
    def valid_loss(self) -> float:
        """Mean cross-entropy of every validation-session event's SID given the history before the session."""
        was = self.model.training
        self.model.eval()
        total, count = 0.0, 0
        bs = self.cfg.eval.batch_size
        for i in range(0, len(self.valid_rows), bs):
            inputs = self.valid_batch(range(i, min(i + bs, len(self.valid_rows))))
            with self.autocast():
                s, n = next_sid_loss(self.model.sid_logits(inputs))
            total += float(s)
            count += int(n)
        self.model.train(was)
        return total / max(count, 1)

    def epoch_batches(self, epoch: int) -> list[np.ndarray]:
        # Without bucketing this is one permutation cut into batches (the recorded runs); with it, sequences of
        # similar length share a batch, so short multi-behavior logs (Tmall: 7 events on average for a window of
        # 21) stop paying for padding.
        lengths = np.diff(self.train_seqs.offsets)  # (S,) interactions per training sequence
        return batch_order(lengths, self.cfg.train.batch_size, np.random.default_rng([self.cfg.train.seed, epoch]),
                           self.opts.length_bucketing)

    def step_loss(self, rows: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        inputs = self.train_batch(rows)
        with self.autocast():
            return next_sid_loss(self.model.sid_logits(inputs))  # (sum, SID tokens of the batch)

    def validate(self) -> tuple[dict[str, Any], float]:
        """What validation measured (to log) and the early-stopping value (``multibehavior.early_stop``)."""
        kind, beh, metric = self.stop
        if kind == "loss":
            if len(self.valid_rows) == 0:
                raise ConfigError("no user has a validation session; early stopping on valid_loss is impossible")
            value = self.valid_loss()
            return {"loss": value}, value
        assert beh is not None
        ev = self._evaluate("valid", [beh], max_users=self.opts.valid_max_users)
        m = ev.per_behavior[self.levels.names[beh]]
        return {f"{self.levels.names[beh]}/{k}": v for k, v in m.items()}, float(m.get(metric, 0.0))

    # -- evaluation -------------------------------------------------------------------------------------
    def _evaluate(self, which: str, behaviors: list[int], max_users: int = 0) -> MultiBehaviorEval:
        return behavior_eval(self.model, self.cfg, self.opts, self.split, which, behaviors, max_users)

    def evaluate(self, which: str = "test") -> dict[str, Any]:
        """Results record for ``which`` (test | valid): per-behavior metrics, merged row, protocol."""
        return behavior_results(self.model, self.cfg, self.opts, self.dataset, self.split, which,
                                sid_fingerprint=self.sids.fingerprint, best_epoch=self.state.get("best_epoch"),
                                train_seconds=self.state.get("train_seconds"))


# ---- command line (until the main CLI dispatches multi-behavior generators) ---------------------------


def main(argv: list[str] | None = None) -> int:
    """``python -m genrec.train.gamer --config RECIPE --out RUN [--set section.key=value ...]``.

    Trains and tests GAMER, an ablation recipe, or a baseline recipe (``model.name`` sasrec | tiger | recency,
    see :mod:`genrec.train.multibehavior_baselines`); the test record goes to ``RUN/results.json``. A run
    folder that already holds ``results.json`` is not retrained unless ``--no-resume``.
    """
    import argparse
    import sys

    from genrec.config import apply_overrides, config_from_dict, load_yaml
    from genrec.data.schema import load_dataset
    from genrec.errors import EXIT_INTERRUPTED, error_report
    from genrec.train.multibehavior_baselines import run_variant

    ap = argparse.ArgumentParser(prog="python -m genrec.train.gamer", description=main.__doc__)
    ap.add_argument("--config", required=True, help="recipe YAML (e.g. configs/gamer-taobao.yaml)")
    ap.add_argument("--out", required=True, help="run folder")
    ap.add_argument("--set", nargs="*", default=[], metavar="SECTION.KEY=VALUE")
    ap.add_argument("--no-resume", action="store_true")
    args = ap.parse_args(argv)
    try:
        cfg = config_from_dict(apply_overrides(load_yaml(args.config), args.set), args.config)
        rec = run_variant(cfg, args.out, load_dataset(cfg.data.path), cfg.multibehavior, resume=not args.no_resume)
        dist_utils.finish()
    except KeyboardInterrupt:
        print("genrec: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as exc:  # the CLI's one policy (genrec.errors.error_report): one line, never a traceback
        line, code = error_report(exc)
        print(line, file=sys.stderr)
        return code
    if "metrics" not in rec:  # a torchrun process other than the main one: it trained, the main one reports
        return 0
    summary = rec.get("summary", {})
    print(f"{rec.get('num_parameters', 0):,} parameters, best epoch {summary.get('best_epoch')}, "
          f"{summary.get('train_seconds') or 0:.0f}s training, {rec['eval_seconds']:.0f}s test evaluation "
          f"-> {Path(args.out) / 'results.json'}")
    print(format_table(rec))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
