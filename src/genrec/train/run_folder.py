"""Run-folder bookkeeping shared by every trainer: the process it runs in, ``config.json``, checkpoints, best
weights, early stopping, logs.

A trainer's run folder holds a ``config.json`` record that refuses to resume a folder holding another model or
dataset, atomic checkpoints with exact resume, the best validation weights under ``best/``, ``metrics.jsonl``
(and TensorBoard) logs. :class:`RunFolder` keeps them; :class:`genrec.train.base.TrainerBase` adds the one
training loop on top. Under ``torchrun`` every process holds the same state, and only the main one writes.
"""

from __future__ import annotations

import json
import math
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Any

import torch

from genrec.config import RunConfig, early_stop_metric
from genrec.data.schema import Dataset
from genrec.errors import CheckpointError, ConfigError
from genrec.eval.record import git_commit  # noqa: F401 (re-exported through train.base)
from genrec.io import write_json_atomic
from genrec.models.pretrained import STAGE1_KEY, apply_pretrained, fill_stage1
from genrec.nn.precision import BF16, FP32, autocast, resolve_precision
from genrec.progress import say
from genrec.runs import lock
from genrec.runs.checkpoint import (
    SUMMARY_KEYS,
    load_weights,
    resume_checkpoint,
    save_best_weights,
    save_checkpoint,
    verify_best_weights,
)
from genrec.runs.layout import BEST_DIR, CHECKPOINT_DIR, CONFIG_FILE, best_weights_path, results_path  # noqa: F401
from genrec.runs.record import new_run_record, read_record
from genrec.train import distributed as dist_utils
from genrec.train.logging import MetricLogger, flat_settings


def resolve_device(name: str) -> torch.device:
    """``auto`` -> cuda when present else cpu; an explicit cuda device on a CPU-only machine is a user error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"train.device={name} but CUDA is not available on this machine (use cpu or auto)")
    return torch.device(name)


_VALIDATION_ONLY: ContextVar[bool] = ContextVar("genrec_validation_only", default=False)


@contextmanager
def validation_only() -> Iterator[None]:
    """Inside this block every run trains and selects on validation and never touches the test split:
    :func:`fit_and_test` returns the training summary instead of a test record and writes no results file.
    A recipe search (:mod:`genrec.tune`) trains its trials under it, so no trial can see a test metric."""
    token = _VALIDATION_ONLY.set(True)
    try:
        yield
    finally:
        _VALIDATION_ONLY.reset(token)


def fit_and_test(trainer: Any, out: str | Path,
                 extras: Callable[[Any, dict[str, Any]], dict[str, Any]] | None = None) -> dict[str, Any]:
    """Train (or resume) ``trainer``, then evaluate its best weights on the test split.

    The one ending every trainer shares: a non-main DDP rank returns its summary only; a run cut short by
    ``train.max_steps`` or ``train.max_seconds`` says so instead of evaluating; under :func:`validation_only`
    a finished run returns ``{"summary", "validation_only": True}`` and is not tested; otherwise
    ``extras(trainer, record)`` may add keys (other decodings, SID health, ...) and the record goes to
    ``OUT/results/test.json``.
    """
    summary = trainer.fit()
    if not getattr(trainer, "main", True):
        return {"summary": summary}
    if not summary.get("finished"):
        return {"summary": summary, "stopped_early_by": summary.get("interrupted_by", "train.max_steps")}
    if _VALIDATION_ONLY.get():
        return {"summary": summary, "validation_only": True}
    trainer.load_best()
    res = trainer.evaluate("test")
    if extras is not None:
        res.update(extras(trainer, res))
    res["train"] = summary
    dev = getattr(trainer, "device", None)  # where it trained: timings are only comparable on the same device
    if isinstance(dev, torch.device):
        res["device"] = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu"
    write_json_atomic(results_path(out), res)
    return res


def non_finite_loss(value: float, step: int, fp32_switch: str = "") -> FloatingPointError:
    """The error for a NaN/inf training loss, with the knobs that usually cure it.

    ``fp32_switch`` is the setting that turns this run's bf16 autocast off (empty when the step ran in fp32); it
    is named because bf16 is a cause fp32 runs never see: GLASS with hard search on the Taobao sample diverged
    under CUDA autocast at lr 0.01 and trained cleanly in fp32.
    """
    hint = "lower train.lr"
    if fp32_switch:
        hint += f" or set {fp32_switch} (bf16 autocast is on)"
    return FloatingPointError(f"training loss is {value} at step {step}; {hint}; checkpoints already "
                              "written are intact, and a resumed run starts from the last one")


def lower_is_better(metric: str) -> bool:
    """Losses are minimised, everything else (AUC, GAUC, NDCG, HR, MRR) is maximised."""
    return "loss" in metric.lower()


# train settings that steer one call, not what the weights learn: continuing a finished run may change them
CALL_KNOBS = ("epochs", "device", "num_threads", "progress", "progress_interval", "tensorboard", "max_steps",
              "max_seconds", "checkpoint_every")


def record_changes(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """``KEY is A, recorded B`` for each record field (dotted, ``config.train.lr``) that differs, leaving out the
    call knobs (:data:`CALL_KNOBS`, in any section: ``rerank.epochs`` too) and where the run was made
    (``genrec_version``, ``data_path``). A key the old record lacks counts as unchanged while it holds its
    default: it was added to genrec after the run was made, and its default is what that run did."""
    a, b = flat_settings(old), flat_settings(new)
    defaults = flat_settings({"config": RunConfig().to_dict()})

    def changed(k: str) -> bool:
        if k in ("genrec_version", "data_path") or k.rsplit(".", 1)[-1] in CALL_KNOBS:
            return False
        if k not in a and k in defaults and b.get(k) == defaults[k]:
            return False
        return a.get(k) != b.get(k)

    return [f"{k.removeprefix('config.')} is {b.get(k)!r}, recorded {a.get(k)!r}" for k in sorted(a.keys() | b.keys())
            if changed(k)]


def initial_state() -> dict[str, Any]:
    return {"epoch": 0, "step_in_epoch": 0, "global_step": 0, "best_metric": None, "best_epoch": None,
            "bad_evals": 0, "finished": False, "train_seconds": 0.0}


class RunFolder:
    """Process and device, config record, checkpoints, best weights and early stopping for one training run."""

    compat_keys: tuple[str, ...] = ("model", "num_items", "max_len", "data_fingerprint")

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer

    def __init__(self, cfg: RunConfig, run_dir: str | Path, dataset: Dataset | None, *,
                 default_metric: str) -> None:
        # the model is built from its config alone: a stage-1 artifact's shape is recorded in it (in place, so the
        # trainer's own reference to the model section sees it too)
        cfg.model.update(fill_stage1(cfg.model))
        self.cfg = cfg
        self.run_dir = Path(run_dir)
        self.dataset = dataset
        self.stop_metric = early_stop_metric(cfg, default_metric)
        self.minimize = lower_is_better(self.stop_metric)
        tc = cfg.train
        if tc.num_threads > 0:
            torch.set_num_threads(tc.num_threads)
        self.device = resolve_device(tc.device)
        self.distributed = dist_utils.init_distributed(self.device)  # under torchrun: one process per rank
        self.rank, self.world, local_rank = dist_utils.world_info()
        if self.device.type == "cuda" and self.distributed:
            self.device = torch.device(f"cuda:{local_rank}")
            torch.cuda.set_device(self.device)
        self.precision = resolve_precision(tc, self.device)  # fp32 | bf16: what this run's steps compute in
        if tc.batch_size % self.world:
            raise ConfigError(f"train.batch_size={tc.batch_size} is not divisible by the {self.world} processes")
        self.main = dist_utils.is_main()  # only the main process writes files
        torch.manual_seed(tc.seed)
        self.state: dict[str, Any] = initial_state()
        self.ckpt_root = self.run_dir / CHECKPOINT_DIR
        self.resumed_from: Path | None = None
        self.generators: dict[str, torch.Generator] = {}  # random streams that run across steps (checkpointed)
        self._t_mark = time.time()  # start of the training time not yet banked in state["train_seconds"]
        self.logger: MetricLogger | None = None
        self._lock: Path | None = None  # the run folder's writer's lock, while this process holds it

    # -- run folder -------------------------------------------------------------------------------
    def run_record(self) -> dict[str, Any]:
        """What ``config.json`` holds; subclasses add their own fields (and list guarded ones in compat_keys)."""
        assert self.dataset is not None, "a trainer without a Dataset writes its own run_record"
        return new_run_record(self.cfg, getattr(self.model, "kinds", ()), self.dataset)

    def compatible(self, key: str, old: Any, new: Any) -> bool:
        """Whether a guarded ``config.json`` field may resume with this value (equality; subclasses relax it,
        e.g. evaluation-only settings)."""
        return old == new

    def checked_record(self) -> dict[str, Any]:
        """This run's record (JSON form); raises when the folder holds another run (guarded keys, model)."""
        path = self.run_dir / CONFIG_FILE
        rec = json.loads(json.dumps(self.run_record(), default=str))  # compare in JSON form (tuples -> lists)
        if path.exists():
            old = read_record(self.run_dir)
            for key in self.compat_keys:
                if not self.compatible(key, old.get(key), rec.get(key)):
                    raise CheckpointError(f"{path}: this run folder holds a run with {key}={old.get(key)!r}, "
                                          f"not {rec.get(key)!r}; use another --out folder")
            # model.stage1 is read from model.pretrained (compared), not a setting: runs recorded before it still match
            old_model, new_model = ({k: v for k, v in (r.get("config", {}).get("model") or {}).items()
                                     if k != STAGE1_KEY} for r in (old, rec))
            if old_model != new_model:
                raise CheckpointError(f"{path}: the model settings differ from this run folder's; "
                                      "use another --out folder")
        return rec

    def open_run(self, resume: bool = True, write: bool = True) -> None:
        """Create the folder and take its writer's lock, check config.json, resume from the newest checkpoint that
        verifies (or, starting fresh, initialise the model from its stage-1 artifact, if it names one), write the
        record, open the logger.

        A finished run keeps the record its weights were trained under (:meth:`continues_finished`).
        ``write=False`` opens an existing run read-only (evaluation): nothing is written or logged, no lock.
        """
        if write:
            self._lock_run_folder()
        rec = self.checked_record()
        if resume:
            found = self._resume(repoint=write and self.main)
            if found is not None:
                self.resumed_from, loaded = found
                self.state = {**initial_state(), **loaded}
        if write and self.resumed_from is None:  # a fresh run: start from the stage-1 artifact, if any
            apply_pretrained(self.model)
        finished = bool(self.resumed_from is not None and self.state.get("finished"))
        continuing = write and finished and self.continues_finished(rec)  # every process: they train on together
        if write and self.main and (continuing or not finished):
            write_json_atomic(self.run_dir / CONFIG_FILE, rec)
        if write and self.main and self.resumed_from is not None and not finished:
            st = self.state
            say(f"resuming {self.run_dir} from {self.resumed_from.name} (epoch {st['epoch'] + 1}, "
                f"step {st['global_step']})")
        self.logger = MetricLogger(self.run_dir, tensorboard=self.cfg.train.tensorboard,
                                   enabled=self.main and write)
        if write and self.logger.tb is not None:
            self.logger.hparams(flat_settings(self.cfg.to_dict()), [f"valid/{self.stop_metric}"])

    def continues_finished(self, rec: dict[str, Any]) -> bool:
        """Whether this call trains a finished run on: ``train.epochs`` raised past the epochs it trained, every
        other setting as recorded, and the run ended because its epochs ran out. Otherwise the run stays as it is
        (its best weights are evaluated again) and keeps its record, or, when more epochs were asked of a run
        that stopped early or of other settings, this raises a one-line error saying how to start afresh."""
        st, old = self.state, read_record(self.run_dir)
        old_train = (old.get("config") or {}).get("train") or {}
        epochs = self.cfg.train.epochs
        if "epochs" not in old_train:  # a record of its own (stage 1): its guarded keys decide
            return False
        changed = record_changes(old, rec)
        if epochs <= max(st["epoch"], old_train["epochs"]):  # nothing more asked than the run was given
            ignored = f"; ignored here: {', '.join(changed[:3])}" if changed else ""
            if self.main:
                say(f"{self.run_dir} holds a run finished at epoch {st['epoch']}; evaluating its best weights "
                    f"(raise train.epochs to train it on{ignored})")
            return False
        fresh = "; to start afresh use --no-resume (resume=False) or another --out folder"
        patience = old_train.get("patience") or 0
        if st["epoch"] < old_train["epochs"] or (patience and st["bad_evals"] >= patience):
            raise CheckpointError(f"{self.run_dir}: this run stopped early at epoch {st['epoch']} of "
                                  f"{old_train['epochs']} (no better validation {self.stop_metric} in {patience} "
                                  f"validations), so train.epochs={epochs} does not continue it{fresh}")
        if changed:
            raise CheckpointError(f"{self.run_dir}: continuing this finished run to train.epochs={epochs} keeps "
                                  f"its other settings, but {changed[0]}{fresh}")
        st["finished"] = False
        if self.main:
            say(f"continuing the finished {st['epoch']}-epoch run in {self.run_dir} to {epochs} epochs")
        return True

    def _lock_run_folder(self) -> None:
        """One writer per run folder: the main process takes the lock; every rank learns whether it got it, so a
        refused ``torchrun`` job ends on all ranks with the same one-line error instead of waiting forever."""
        refused: CheckpointError | None = None
        if self.main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            try:
                self._lock = lock.acquire(self.run_dir)
            except CheckpointError as exc:
                refused = exc
        if dist_utils.broadcast_flag(refused is not None, self.device):
            raise refused or CheckpointError(f"{self.run_dir}: the main process could not lock this run folder")

    def _resume(self, repoint: bool) -> tuple[Path, dict[str, Any]] | None:
        """The newest checkpoint that verifies, loaded; anything but a clean resume is told in one line."""
        def say(msg: str) -> None:
            print(f"genrec: {msg}", file=sys.stderr, flush=True)

        return resume_checkpoint(self.ckpt_root, self.model, self.optimizer, self.generators,
                      say=say if self.main else None, repoint=repoint)

    def log(self, **values: Any) -> None:
        if self.logger is not None:
            self.logger.log(self.state["global_step"], **values)

    def close(self) -> None:
        if self.logger is not None:
            self.logger.close()
        if self._lock is not None:  # the run is done writing checkpoints: another process may take the folder
            lock.release(self._lock)
            self._lock = None

    # -- checkpoints and best weights -------------------------------------------------------------
    def _save(self, name: str) -> None:
        """Atomic checkpoint of weights, optimizer, RNG and loop state (main process only)."""
        if self.main:
            save_checkpoint(self.ckpt_root, name, self.model, self.optimizer, self.state, generators=self.generators)
        dist_utils.barrier()

    @property
    def best_path(self) -> Path:
        return best_weights_path(self.run_dir)

    def load_best(self) -> bool:
        """Load the best validation weights when there are any; returns whether it did."""
        if self.best_path.exists():
            verify_best_weights(self.best_path)
            load_weights(self.model, self.best_path)
            return True
        return False

    def observe(self, metric_value: float | None, epoch: int) -> bool:
        """Early-stopping update after a validation run: keep the best weights, count patience.

        ``epoch`` is 1-based (epochs completed). A missing or NaN value counts as no improvement.
        Returns whether the value improved on the best so far.
        """
        st = self.state
        value = None if metric_value is None else float(metric_value)
        if value is not None and math.isnan(value):
            warnings.warn(f"validation {self.stop_metric} is NaN at epoch {epoch}; counted as no improvement",
                          stacklevel=2)
            value = None
        best = st["best_metric"]
        improved = value is not None and (best is None or (value < best if self.minimize else value > best))
        if improved:
            st["best_metric"], st["best_epoch"], st["bad_evals"] = value, epoch, 0
            if self.main:
                save_best_weights(self.model, self.best_path)
        else:
            st["bad_evals"] += 1
        return improved

    @property
    def should_stop(self) -> bool:
        """Patience spent: ``train.patience`` validation runs in a row without improvement (0 = never)."""
        p = self.cfg.train.patience
        return bool(p and self.state["bad_evals"] >= p)

    def summary(self) -> dict[str, Any]:
        return {k: self.state.get(k) for k in SUMMARY_KEYS}

    # -- device and time --------------------------------------------------------------------------
    def autocast(self) -> AbstractContextManager:
        """bf16 autocast on CUDA when the run's precision is bf16; a no-op on the CPU and in fp32.

        The trainers' own contexts (their step and the ranker's / GAMER's evaluation): unchanged by
        ``train.precision: bf16`` on the CPU, so evaluation there stays fp32."""
        return autocast(self.device, self.precision if self.device.type == "cuda" else FP32)

    def step_autocast(self) -> AbstractContextManager:
        """The training loop's context around every step's forward and loss, of every kind: bf16 autocast when
        ``train.precision`` is ``bf16`` (and the device can), else a no-op, so ``auto`` steps exactly as before
        (each trainer's own :meth:`autocast`)."""
        return autocast(self.device, self.precision if self.cfg.train.precision == BF16 else FP32)

    def fp32_switch(self) -> str:
        """The setting that turns this run's bf16 autocast off; empty when it trains in fp32."""
        if self.precision != BF16:
            return ""
        return "train.precision=fp32" if self.cfg.train.precision == BF16 else "train.bf16=false"

    def add_train_seconds(self, t0: float) -> None:
        """Accumulate wall time since ``t0`` into the checkpointed state (survives resumes)."""
        self.state["train_seconds"] = float(self.state.get("train_seconds") or 0.0) + (time.time() - t0)
