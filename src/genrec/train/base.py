"""The one training loop every trainer runs: retriever, ranker, generator (TIGER, GLASS), GAMER, re-ranker,
multi-behavior baselines and HPGR stage-1 pre-training.

Writing a trainer: in ``__init__`` call ``super().__init__(cfg, run_dir, dataset, default_metric=...)`` first,
build ``self.model`` and ``self.optimizer`` (:func:`genrec.nn.optim.build_optimizer`), set ``self.schedule``
when the learning rate is not constant, then call ``self.open_run(resume)``. ``fit()`` is inherited; the
trainer says what is particular to it through these hooks:

- ``epoch_batches(epoch)`` (required): the epoch's *global* batches, a pure function of ``(seed, epoch)``, so a
  resumed run rebuilds the same list and skips the ``step_in_epoch`` batches already done;
- ``step_loss(batch)`` (required): ``(sum of per-position losses, count)`` of this process's part of one batch,
  the convention of every objective (:mod:`genrec.objectives`); the loop divides the sum by the count summed over
  all processes, so one process and several take the same step;
- ``shard(batch)``: this process's part of a global batch (a contiguous slice); override it to draw per-batch
  randomness for the whole batch first (the re-ranker's negatives). It is called once per batch in order, the
  batches a resumed run skips included, so such draws replay exactly;
- ``validate()``: ``(metrics to log, early-stopping value)``, or None for no validation;
- ``after_update()``: after each optimiser step (stage 1 re-zeroes its padding row);
- ``on_epoch_end(epoch)``: extra fields for the epoch's log record (and per-epoch bookkeeping).

Attributes: ``schedule`` (an :class:`~genrec.nn.optim.LRSchedule`; constant = ``train.lr``),
``skip_empty_steps`` (a step with no supervised position anywhere makes no update), ``step_budget`` (optimiser
steps after which the run is complete, e.g. ``pretrain.max_steps``; 0 = none), ``log_steps`` (a
``metrics.jsonl`` line per step), ``ddp_find_unused`` (DDP's ``find_unused_parameters``), ``generators``
(random streams that run on across steps, checkpointed with the run).

The loop checkpoints atomically (``train.checkpoint_every`` steps and every epoch end), stops at
``train.max_steps`` with a step checkpoint a later run resumes exactly, validates every ``train.eval_every``
epochs, keeps the best weights, stops early on patience, and says how it goes on standard error
(:mod:`genrec.progress`): a bar on a terminal or a plain line every ``train.progress_interval`` seconds in a log
(``train.progress``), and one line per epoch with the loss, the validation metric and the best so far. Under ``torchrun`` each process trains on its slice of every batch; the
loss is all-reduced so the gradient equals the single-process one of the same global batch, the main process
validates and broadcasts the early-stop flag, and only it writes files.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from genrec.errors import ConfigError
from genrec.nn.optim import LRSchedule, lr_schedule
from genrec.progress import Progress, duration, say
from genrec.train import distributed as dist_utils
from genrec.train.run_folder import (  # noqa: F401 (re-exported: the names trainers import from here)
    BEST_DIR,
    CHECKPOINT_DIR,
    CONFIG_FILE,
    RunFolder,
    fit_and_test,
    git_commit,
    non_finite_loss,
    resolve_device,
)


class _StepForward(nn.Module):
    """The trainer's ``step_loss`` as one module forward, so DDP sees every parameter use inside its forward."""

    def __init__(self, model: nn.Module, step_loss: Any) -> None:
        super().__init__()
        self.model = model
        self.step_loss = step_loss

    def forward(self, batch: Any) -> Any:
        return self.step_loss(batch)


class TrainerBase(RunFolder):
    """The training loop over a :class:`~genrec.train.run_folder.RunFolder`; see the module doc for the hooks."""

    skip_empty_steps = False
    step_budget = 0
    log_steps = True
    ddp_find_unused = False
    schedule: LRSchedule | None = None  # None: constant train.lr
    # train.loss_denominator=epoch_mean: the mean number of supervised positions per global batch, which a trainer
    # that supports it sets; None = each step divides by its own count
    fixed_denominator: float | None = None
    _ddp: nn.Module | None = None  # the DDP-wrapped step, built by fit() under torchrun

    def open_run(self, resume: bool = True, write: bool = True) -> None:
        """:meth:`RunFolder.open_run`, after refusing a ``train.loss_denominator`` this trainer does not set (before
        the run folder is written)."""
        if write and self.cfg.train.loss_denominator != "batch" and self.fixed_denominator is None:
            raise ConfigError(f"train.loss_denominator={self.cfg.train.loss_denominator}: only retrievers (sasrec, "
                              "hstu) support it; set train.loss_denominator=batch")
        super().open_run(resume, write)

    # -- hooks ------------------------------------------------------------------------------------
    def epoch_batches(self, epoch: int) -> Sequence[Any]:
        raise NotImplementedError

    def step_loss(self, batch: Any) -> tuple[torch.Tensor, Any]:
        raise NotImplementedError

    def shard(self, batch: Any) -> Any:
        if self.world == 1:
            return batch
        per = math.ceil(len(batch) / self.world)
        return batch[self.rank * per : (self.rank + 1) * per]

    def validate(self) -> tuple[dict[str, Any], float | None] | None:
        return None

    def after_update(self) -> None:
        return None

    def on_epoch_end(self, epoch: int) -> dict[str, Any]:
        return {}

    # -- the loop ---------------------------------------------------------------------------------
    def fit(self) -> dict[str, Any]:
        """Train until ``train.epochs``, patience, ``step_budget`` or ``train.max_steps``; returns the summary."""
        st = self.state
        if st.get("finished"):
            return self.summary()
        if self.distributed and self._ddp is None:
            dev = [self.device.index] if self.device.type == "cuda" else None
            self._ddp = nn.parallel.DistributedDataParallel(_StepForward(self.model, self.step_loss), device_ids=dev,
                                                            find_unused_parameters=self.ddp_find_unused)
        stop, self.interrupted_by, self._t_call = False, "", time.time()
        self._planned_schedule()
        while st["epoch"] < self.cfg.train.epochs and not stop:
            stop = self._run_epoch(st["epoch"])
        self.close()
        out = self.summary()
        if self.interrupted_by and not out.get("finished"):
            out["interrupted_by"] = self.interrupted_by
        return out

    def _planned_schedule(self) -> None:
        """``train.lr_schedule: cosine`` over the planned steps (``train.epochs`` x the first epoch's batches), for
        a trainer that sets no schedule of its own; one that does (generators, GAMER) refuses the key."""
        kind = self.cfg.train.lr_schedule
        if kind == "constant":
            return
        if self.schedule is not None:
            raise ConfigError(f"train.lr_schedule={kind}: this trainer has its own learning-rate schedule; "
                              f"drop the key (the generator: and multibehavior: sections set theirs)")
        total = self.cfg.train.epochs * len(self.epoch_batches(0))
        self.schedule = lr_schedule(kind, self.cfg.train.lr, total_steps=total, warmup_ratio=self.cfg.train.warmup_ratio)

    def _scale_epoch(self, epoch: int) -> None:
        """``train.lr_scales`` hold for the first ``train.lr_scale_epochs`` epochs (0 = all), then every group
        takes the full rate; set from the epoch alone, so a resumed run sets what the uninterrupted one did."""
        tc = self.cfg.train
        active = not tc.lr_scale_epochs or epoch < tc.lr_scale_epochs
        for g in self.optimizer.param_groups:
            if "base_scale" in g:
                g["lr_scale"] = g["base_scale"] if active else 1.0
                if self.schedule is None or not self.schedule.varies:
                    g["lr"] = tc.lr * g["lr_scale"]

    def _run_epoch(self, epoch: int) -> bool:
        """One epoch (or the rest of it, after a resume); returns whether training ends here."""
        tc, st = self.cfg.train, self.state
        batches = self.epoch_batches(epoch)
        self._scale_epoch(epoch)
        start = st["step_in_epoch"]
        for done in batches[:start]:
            self.shard(done)  # replays randomness a trainer draws per global batch
        self.model.train()
        bar = self._progress_bar(len(batches), start, epoch)
        loss_sum, loss_n, t_epoch = 0.0, 0, time.time()
        self._t_mark = t_epoch
        ending = ""  # "budget": the run is complete; "train.max_steps" / "train.max_seconds": a later run resumes
        for bi in range(start, len(batches)):
            value, extra = self._train_step(batches[bi])
            st["step_in_epoch"] = bi + 1
            if bar is not None:
                bar.update(1)
                if value is not None:
                    bar.set_postfix(loss=f"{value:.4f}")
            if value is None:  # no supervised position: no update
                continue
            loss_sum, loss_n = loss_sum + value, loss_n + 1
            if self.log_steps:
                self.log(train_loss=value, **extra, epoch=round(epoch + (bi + 1) / len(batches), 4))
            if tc.checkpoint_every and st["global_step"] % tc.checkpoint_every == 0:
                self.add_train_seconds(self._t_mark)
                self._t_mark = time.time()
                self._save(f"step-{st['global_step']:09d}")
            if self.step_budget and st["global_step"] >= self.step_budget:
                ending = "budget"
            elif tc.max_steps and st["global_step"] >= tc.max_steps:
                ending = "train.max_steps"
            elif tc.max_seconds and dist_utils.broadcast_flag(time.time() - self._t_call >= tc.max_seconds,
                                                             self.device):  # every rank stops at the same step
                ending = "train.max_seconds"
            if ending:
                break
        if bar is not None:
            bar.close()
        self.add_train_seconds(self._t_mark)
        if ending.startswith("train."):
            self.interrupted_by = ending
            self._save(f"step-{st['global_step']:09d}")
            return True
        return self._end_epoch(epoch, loss_sum, loss_n, t_epoch, complete=ending == "budget")

    def _progress_bar(self, total: int, initial: int, epoch: int) -> Progress | None:
        """The epoch's progress (main process, ``train.progress``): a bar on a terminal, else a plain line every
        ``train.progress_interval`` seconds; the epoch's summary line (:meth:`_report_epoch`) follows it."""
        tc = self.cfg.train
        if not (tc.progress and self.main):
            return None
        return Progress(f"epoch {epoch + 1}/{tc.epochs}", total, initial=initial, interval=tc.progress_interval)

    def _train_step(self, batch: Any) -> tuple[float | None, dict[str, Any]]:
        """Shard, learning rate, loss, all-reduce, one optimiser update; (logged loss or None, log fields)."""
        local = self.shard(batch)
        extra: dict[str, Any] = {}
        if self.schedule is not None and self.schedule.varies:
            lr = self.schedule(self.state["global_step"])
            self.set_lr(lr)
            extra["lr"] = lr
        with self.step_autocast():  # forward + loss only; backward and the optimizer step stay outside
            loss, count = self._ddp(local) if self.distributed else self.step_loss(local)
        reduced = self._reduce(loss, count)
        if reduced is None:
            return None, extra
        self.update(*reduced)
        self.after_update()
        return reduced[1], extra

    def _reduce(self, loss: torch.Tensor, count: Any) -> tuple[torch.Tensor, float] | None:
        """The loss to differentiate and the value to log: the sum of per-position losses over the global count
        (times ``world``, as DDP averages gradients over processes); None to skip an empty step. Under
        :attr:`fixed_denominator` the differentiated sum is divided by that instead; the logged value stays the mean.

        The differentiated scale is ``world / total`` rounded once to fp32, the gradient a trainer's own mean
        (``sum / count``) gives, so moving a mean out of a model into this loop leaves the weights bit-identical.
        """
        n = count.float() if torch.is_tensor(count) else torch.tensor(float(count), device=loss.device)
        stats = dist_utils.all_reduce_sum(torch.stack([loss.detach().float(), n.to(loss.device)]))
        total = float(stats[1])
        if self.skip_empty_steps and total == 0:
            return None
        total = max(total, 1.0)
        scale = total if self.fixed_denominator is None else self.fixed_denominator
        return loss * (self.world / scale), float(stats[0]) / total

    def set_lr(self, lr: float) -> None:
        for g in self.optimizer.param_groups:
            g["lr"] = lr * g.get("lr_scale", 1.0)

    def update(self, loss: torch.Tensor, value: float) -> None:
        """One optimiser step on ``loss``: zero the gradients, backward, clip to ``train.grad_clip`` (0 = off),
        step, count it in ``global_step``; a non-finite ``value`` stops training with a hint."""
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.cfg.train.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.train.grad_clip)
        self.optimizer.step()
        self.state["global_step"] += 1
        if not math.isfinite(value):
            raise non_finite_loss(value, self.state["global_step"], self.fp32_switch())

    def _end_epoch(self, epoch: int, loss_sum: float, loss_n: int, t_epoch: float, complete: bool = False) -> bool:
        """Close epoch ``epoch`` (0-based): log its loss and time, validate when due (``train.eval_every`` and
        the last epoch; the main process only, the stop flag is broadcast), keep the best weights, mark the run
        finished, write the epoch checkpoint. Returns whether training ends here."""
        tc, st = self.cfg.train, self.state
        st["epoch"], st["step_in_epoch"] = epoch + 1, 0
        rec: dict[str, Any] = {"epoch": epoch + 1, "train_loss_epoch": loss_sum / max(loss_n, 1),
                               "epoch_seconds": round(time.time() - t_epoch, 3),
                               "lr": self.optimizer.param_groups[0]["lr"]}
        stop, validated, value = False, False, None
        if (epoch + 1) % tc.eval_every == 0 or epoch + 1 == tc.epochs:
            res = self.validate() if self.main else None
            if res is not None:
                metrics, value = res
                rec.update({f"valid/{k}": v for k, v in metrics.items()})
                rec["improved"] = self.observe(value, epoch + 1)
                stop, validated = self.should_stop, True
            stop = dist_utils.broadcast_flag(stop, self.device)
        rec.update(self.on_epoch_end(epoch))
        self.log(**rec)
        if self.main:
            self._report_epoch(rec, value, validated, time.time() - t_epoch, stop)
        if complete or stop or st["epoch"] >= tc.epochs:
            st["finished"] = True
        self._save(f"epoch-{st['epoch']:05d}")
        return complete or stop

    def _report_epoch(self, rec: dict[str, Any], value: Any, validated: bool, seconds: float, stop: bool) -> None:
        """The epoch's summary line on standard error (every kind, terminal or log): ``epoch 3/200  loss 2.4123
        valid ndcg@10 0.0612 (best 0.0634 @ epoch 2)  41.2 s``, the validation part when one ran."""
        st, tc = self.state, self.cfg.train
        metric = self.stop_metric.removeprefix("valid_")  # GAMER's valid_loss
        parts = [f"epoch {rec['epoch']}/{tc.epochs}", f"loss {rec['train_loss_epoch']:.4f}"]
        if validated:
            shown = "n/a" if value is None or not math.isfinite(float(value)) else f"{float(value):.4f}"
            best = "none yet" if st["best_metric"] is None else f"{st['best_metric']:.4f} @ epoch {st['best_epoch']}"
            parts.append(f"valid {metric} {shown} (best {best})")
        parts.append(duration(seconds))
        say("  ".join(parts))
        if stop:
            say(f"early stop: valid {metric} has not improved in {tc.patience} validations; "
                f"the best weights are from epoch {st['best_epoch']}")
