"""Run-folder bookkeeping shared by every trainer (retriever, generator, ranker).

Each trainer repeats the same chores around its own loop: a ``config.json`` record that refuses to
resume a folder holding another model or dataset, atomic checkpoints with exact resume, best weights
kept under ``best/``, early stopping with patience, a training summary and device/autocast handling.
``TrainerBase`` holds them so a trainer only writes its batches, its loss and its validation metric.

Use: in ``__init__`` call ``super().__init__(cfg, run_dir, dataset, default_metric=...)`` first,
build ``self.model`` and ``self.optimizer``, then ``self.open_run(resume)``. ``fit()`` is then
``self.run_epochs(epoch_batches, train_step, validate)``: the shared loop checkpoints, resumes mid-epoch,
validates and stops early. A trainer with its own loop calls ``self._save(name)`` for checkpoints and
``self.observe(value, epoch)`` after each validation; ``self.should_stop`` says when patience is spent. Subclasses extend ``run_record()`` and
``compat_keys`` (e.g. a SID-table fingerprint) to guard what else must not change across a resume.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import time
import warnings
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any

import torch

import genrec
from genrec.config import RunConfig, early_stop_metric
from genrec.data.schema import Dataset
from genrec.errors import CheckpointError, ConfigError
from genrec.train import distributed as dist_utils
from genrec.train.checkpoint import (
    latest_checkpoint,
    load_checkpoint,
    load_weights,
    save_checkpoint,
    save_weights,
)
from genrec.train.logging import MetricLogger

CONFIG_FILE = "config.json"
BEST_DIR = "best"
BEST_WEIGHTS = "model.safetensors"
CHECKPOINT_DIR = "checkpoints"
SUMMARY_KEYS = ("epoch", "global_step", "best_metric", "best_epoch", "finished", "train_seconds")


def resolve_device(name: str) -> torch.device:
    """``auto`` -> cuda when present else cpu; an explicit cuda device on a CPU-only machine is a user error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"train.device={name} but CUDA is not available on this machine (use cpu or auto)")
    return torch.device(name)


def git_commit() -> str:
    """Short commit of the installed source tree, or ``unknown`` outside a git checkout."""
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parent)
        return out.stdout.strip() or "unknown"
    except Exception:
        return "unknown"


def write_json_atomic(path: Path, obj: Any) -> None:
    """Write JSON under a temporary name and rename it, so a reader never sees a torn file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps(obj, indent=2, default=str))
    tmp.replace(path)


def fit_and_test(trainer: Any, out: str | Path,
                 extras: Callable[[Any, dict[str, Any]], dict[str, Any]] | None = None) -> dict[str, Any]:
    """Train (or resume) ``trainer``, then evaluate its best weights on the test split.

    The one ending every trainer shares: a non-main DDP rank returns its summary only; a run cut short by
    ``train.max_steps`` says so instead of evaluating; otherwise ``extras(trainer, record)`` may add keys
    (other decodings, SID health, ...) and the record goes to ``OUT/results/test.json``.
    """
    summary = trainer.fit()
    if not getattr(trainer, "main", True):
        return {"summary": summary}
    if not summary.get("finished"):
        return {"summary": summary, "stopped_early_by": "train.max_steps"}
    trainer.load_best()
    res = trainer.evaluate("test")
    if extras is not None:
        res.update(extras(trainer, res))
    res["train"] = summary
    dev = getattr(trainer, "device", None)  # where it trained: timings are only comparable on the same device
    if isinstance(dev, torch.device):
        res["device"] = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu"
    write_json_atomic(Path(out) / "results" / "test.json", res)
    return res


def non_finite_loss(value: float, step: int, device: torch.device, bf16: bool) -> FloatingPointError:
    """The error for a NaN/inf training loss, with the knobs that usually cure it.

    bf16 autocast on CUDA is named because it is a cause fp32 CPU runs never see: GLASS with hard search on the
    Taobao sample diverged under it at lr 0.01 and trained cleanly in fp32.
    """
    hint = "lower train.lr"
    if device.type == "cuda" and bf16:
        hint += " or set train.bf16=false (bf16 autocast is on)"
    return FloatingPointError(f"training loss is {value} at step {step}; {hint}; checkpoints already "
                              "written are intact, and a resumed run starts from the last one")


def lower_is_better(metric: str) -> bool:
    """Losses are minimised, everything else (AUC, GAUC, NDCG, HR, MRR) is maximised."""
    return "loss" in metric.lower()


def initial_state() -> dict[str, Any]:
    return {"epoch": 0, "step_in_epoch": 0, "global_step": 0, "best_metric": None, "best_epoch": None,
            "bad_evals": 0, "finished": False, "train_seconds": 0.0}


class TrainerBase:
    """Run folder, config record, checkpoints, best weights and early stopping for one training run."""

    compat_keys: tuple[str, ...] = ("model", "num_items", "max_len", "data_fingerprint")

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer

    def __init__(self, cfg: RunConfig, run_dir: str | Path, dataset: Dataset, *, default_metric: str,
                 main: bool = True) -> None:
        self.cfg = cfg
        self.run_dir = Path(run_dir)
        self.dataset = dataset
        self.main = main  # only the main process writes files (DDP)
        self.stop_metric = early_stop_metric(cfg, default_metric)
        self.minimize = lower_is_better(self.stop_metric)
        tc = cfg.train
        if tc.num_threads > 0:
            torch.set_num_threads(tc.num_threads)
        self.device = resolve_device(tc.device)
        torch.manual_seed(tc.seed)
        self.state: dict[str, Any] = initial_state()
        self.ckpt_root = self.run_dir / CHECKPOINT_DIR
        self.resumed_from: Path | None = None
        self._t_mark = time.time()  # start of the training time not yet banked in state["train_seconds"]
        self.logger: MetricLogger | None = None

    # -- run folder -------------------------------------------------------------------------------
    def run_record(self) -> dict[str, Any]:
        """What ``config.json`` holds; subclasses add their own fields (and list guarded ones in compat_keys)."""
        return {
            "genrec_version": genrec.__version__,
            "model": self.cfg.model["name"],
            "kinds": list(getattr(self.model, "kinds", ())),
            "num_items": self.dataset.num_items,
            "max_len": self.cfg.data.max_len,
            "data_fingerprint": self.dataset.fingerprint,
            "data_path": str(self.dataset.path) if self.dataset.path else "",
            "config": self.cfg.to_dict(),
        }

    def compatible(self, key: str, old: Any, new: Any) -> bool:
        """Whether a guarded ``config.json`` field may resume with this value (equality; subclasses relax it,
        e.g. evaluation-only settings)."""
        return old == new

    def check_or_write_config(self, write: bool = True) -> None:
        """Refuse a folder that holds another run; otherwise (re)write the record atomically."""
        path = self.run_dir / CONFIG_FILE
        rec = json.loads(json.dumps(self.run_record(), default=str))  # compare in JSON form (tuples -> lists)
        if path.exists():
            old = json.loads(path.read_text())
            for key in self.compat_keys:
                if not self.compatible(key, old.get(key), rec.get(key)):
                    raise CheckpointError(f"{path}: this run folder holds a run with {key}={old.get(key)!r}, "
                                          f"not {rec.get(key)!r}; use another --out folder")
            if old.get("config", {}).get("model") != rec["config"]["model"]:
                raise CheckpointError(f"{path}: the model settings differ from this run folder's; "
                                      "use another --out folder")
        if write and self.main:
            write_json_atomic(path, rec)

    def open_run(self, resume: bool = True, write: bool = True) -> None:
        """Create the folder, check/write config.json, resume from the latest checkpoint, open the logger.

        ``write=False`` opens an existing run read-only (evaluation): nothing is written or logged.
        """
        if write and self.main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        self.check_or_write_config(write=write)
        if resume:
            path = latest_checkpoint(self.ckpt_root)
            if path is not None:
                self.state = {**initial_state(), **load_checkpoint(path, self.model, self.optimizer)}
                self.resumed_from = path
        self.logger = MetricLogger(self.run_dir, tensorboard=self.cfg.train.tensorboard,
                                   enabled=self.main and write)

    def log(self, **values: Any) -> None:
        if self.logger is not None:
            self.logger.log(self.state["global_step"], **values)

    def close(self) -> None:
        if self.logger is not None:
            self.logger.close()

    # -- checkpoints and best weights -------------------------------------------------------------
    def _save(self, name: str) -> None:
        """Atomic checkpoint of weights, optimizer, RNG and loop state (main process only)."""
        if self.main:
            save_checkpoint(self.ckpt_root, name, self.model, self.optimizer, self.state)
        dist_utils.barrier()

    @property
    def best_path(self) -> Path:
        return self.run_dir / BEST_DIR / BEST_WEIGHTS

    def load_best(self) -> bool:
        """Load the best validation weights when there are any; returns whether it did."""
        if self.best_path.exists():
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
                self.best_path.parent.mkdir(parents=True, exist_ok=True)
                save_weights(self.model, self.best_path)
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

    # -- one optimiser update -------------------------------------------------------------------
    def set_lr(self, lr: float) -> None:
        for g in self.optimizer.param_groups:
            g["lr"] = lr

    def update(self, loss: torch.Tensor, value: float | None = None) -> float:
        """One optimiser step on ``loss``: zero the gradients, backward, clip to ``train.grad_clip`` (0 = off),
        step, count it in ``global_step``. Returns the step's loss (``value`` when the caller has a better
        one, e.g. all-reduced over processes), refusing a non-finite one with a hint instead of training on."""
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.cfg.train.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.train.grad_clip)
        self.optimizer.step()
        self.state["global_step"] += 1
        v = float(loss.detach()) if value is None else float(value)
        if not math.isfinite(v):
            raise non_finite_loss(v, self.state["global_step"], self.device, self.cfg.train.bf16)
        return v

    def run_epochs(self, epoch_batches: Callable[[int], Sequence[Any]],
                   train_step: Callable[[Any], tuple[float, dict[str, Any]]],
                   validate: Callable[[], tuple[dict[str, Any], float | None]] | None) -> dict[str, Any]:
        """The resumable epoch loop of the step-checkpointing trainers, so resume and ``max_steps`` work alike.

        ``epoch_batches(epoch)`` is that epoch's batch list (seeded by epoch, so a resumed run rebuilds the same
        one and skips the ``step_in_epoch`` already done); ``train_step(batch)`` runs one optimiser step through
        :meth:`update` and returns its loss and extra log fields (e.g. ``{"lr": lr}``).
        """
        tc, st = self.cfg.train, self.state
        if st.get("finished"):
            return self.summary()
        stop = False
        while st["epoch"] < tc.epochs and not stop:
            epoch = st["epoch"]
            batches = epoch_batches(epoch)
            self.model.train()
            loss_sum, loss_n, t_epoch = 0.0, 0, self.begin_epoch()
            for bi in range(st["step_in_epoch"], len(batches)):
                step_loss, extra = train_step(batches[bi])
                loss_sum, loss_n = loss_sum + step_loss, loss_n + 1
                if self.step_done(bi, train_loss=step_loss, **extra, epoch=epoch):
                    stop = True
                    break
            self.end_steps(stop)
            if stop:
                break
            stop = self.end_epoch(epoch, loss_sum, loss_n, t_epoch, validate)
        self.close()
        return self.summary()

    def begin_epoch(self) -> float:
        """Start timing an epoch (returned) and the stretch of training time since the last checkpoint."""
        self._t_mark = time.time()
        return self._t_mark

    def step_done(self, bi: int, **log: Any) -> bool:
        """Bookkeeping after :meth:`update` of batch ``bi`` of the epoch: resume position, the step's log
        line, a checkpoint every ``train.checkpoint_every`` steps. True once ``train.max_steps`` is reached."""
        tc, st = self.cfg.train, self.state
        st["step_in_epoch"] = bi + 1
        self.log(**log)
        if tc.checkpoint_every and st["global_step"] % tc.checkpoint_every == 0:
            self.add_train_seconds(self._t_mark)
            self._t_mark = time.time()
            self._save(f"step-{st['global_step']:09d}")
        return bool(tc.max_steps and st["global_step"] >= tc.max_steps)

    def end_steps(self, stopped: bool) -> None:
        """After an epoch's steps: bank their training time; a ``max_steps`` stop leaves a step checkpoint."""
        self.add_train_seconds(self._t_mark)
        if stopped:
            self._save(f"step-{self.state['global_step']:09d}")

    def end_epoch(self, epoch: int, loss_sum: float, loss_n: int, t_epoch: float,
                  validate: Callable[[], tuple[dict[str, Any], float | None]] | None) -> bool:
        """Close epoch ``epoch`` (0-based): log its loss and time, validate when due (``train.eval_every`` and
        the last epoch; ``validate()`` returns the metrics to log and the early-stopping value), keep the best
        weights, mark the run finished, write the epoch checkpoint. Returns whether patience is spent."""
        tc, st = self.cfg.train, self.state
        st["epoch"], st["step_in_epoch"] = epoch + 1, 0
        rec: dict[str, Any] = {"epoch": epoch + 1, "train_loss_epoch": loss_sum / max(loss_n, 1),
                               "epoch_seconds": round(time.time() - t_epoch, 3)}
        stop = False
        if validate is not None and ((epoch + 1) % tc.eval_every == 0 or epoch + 1 == tc.epochs):
            metrics, value = validate()
            rec.update({f"valid/{k}": v for k, v in metrics.items()})
            rec["improved"] = self.observe(value, epoch + 1)
            stop = self.should_stop
        self.log(**rec)
        if stop or st["epoch"] >= tc.epochs:
            st["finished"] = True
        self._save(f"epoch-{st['epoch']:05d}")
        return stop

    # -- device -----------------------------------------------------------------------------------
    def autocast(self) -> AbstractContextManager:
        """bf16 autocast on CUDA when ``train.bf16``; a no-op on CPU."""
        if self.device.type == "cuda" and self.cfg.train.bf16:
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return nullcontext()

    def add_train_seconds(self, t0: float) -> None:
        """Accumulate wall time since ``t0`` into the checkpointed state (survives resumes)."""
        self.state["train_seconds"] = float(self.state.get("train_seconds") or 0.0) + (time.time() - t0)
