"""The training loop for retrievers: next-item training at every position, early stopping on
validation NDCG@10, atomic checkpoints with exact resume, JSONL/TensorBoard logs, CPU/CUDA/DDP.

Exact resume: the batch order of an epoch is a pure function of (seed, epoch), negatives of a step
are drawn from a generator seeded by (seed, step), and the torch RNG (dropout) is restored from the
checkpoint, so a killed run that resumes produces the same weights as one that never stopped.
"""

from __future__ import annotations

import json
import math
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

import genrec
from genrec.config import RunConfig, early_stop_metric
from genrec.data.schema import Dataset
from genrec.data.sequences import UserSequences, batch_order, make_train_batch
from genrec.data.splits import Split, make_split
from genrec.errors import CheckpointError, ConfigError
from genrec.eval.retrieval import evaluate_retrieval
from genrec.models.base import RETRIEVER, Retriever
from genrec.models.registry import build_model
from genrec.objectives import build_objective
from genrec.train import distributed as dist_utils
from genrec.train.base import (  # noqa: F401 (re-exported)
    BEST_DIR,
    CONFIG_FILE,
    git_commit,
    non_finite_loss,
    resolve_device,
)
from genrec.train.checkpoint import (
    latest_checkpoint,
    load_checkpoint,
    load_weights,
    save_checkpoint,
    save_weights,
)
from genrec.train.logging import MetricLogger


class _LossModule(nn.Module):
    """Model + objective in one forward, so DDP sees every parameter use inside its forward."""

    def __init__(self, model: Retriever, objective) -> None:
        super().__init__()
        self.model = model
        self.objective = objective

    def forward(self, batch, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        states = self.model.sequence_output(batch)  # (B, L, D)
        valid = batch.targets > 0  # (B, L)
        return self.objective(self.model, states[valid], batch.targets[valid], generator), valid.sum()


class Trainer:
    def __init__(self, cfg: RunConfig, run_dir: str | Path, dataset: Dataset, resume: bool = True) -> None:
        self.cfg = cfg
        self.stop_metric = early_stop_metric(cfg, "ndcg@10")
        self.run_dir = Path(run_dir)
        self.dataset = dataset
        tc = cfg.train
        if tc.num_threads > 0:
            torch.set_num_threads(tc.num_threads)
        self.device = resolve_device(tc.device)
        self.distributed = dist_utils.init_distributed(self.device)
        self.rank, self.world, local_rank = dist_utils.world_info()
        if self.device.type == "cuda" and self.distributed:
            self.device = torch.device(f"cuda:{local_rank}")
            torch.cuda.set_device(self.device)
        if tc.batch_size % self.world:
            raise ConfigError(f"train.batch_size={tc.batch_size} is not divisible by the {self.world} processes")
        torch.manual_seed(tc.seed)
        self.seqs = UserSequences.from_interactions(dataset.interactions)
        self.split: Split = make_split(self.seqs, cfg.data.split, **(
            {"valid_frac": cfg.data.valid_frac, "test_frac": cfg.data.test_frac} if cfg.data.split == "temporal" else {}))
        self.model: Retriever = build_model(cfg.model, dataset.num_items, cfg.data.max_len).to(self.device)
        if RETRIEVER not in self.model.kinds:
            raise ConfigError(f"model '{cfg.model['name']}' is not a retriever; this trainer trains retrievers")
        self.objective = build_objective(cfg.objective)
        self.loss_module: nn.Module = _LossModule(self.model, self.objective)
        if self.distributed:
            self.loss_module = nn.parallel.DistributedDataParallel(
                self.loss_module, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=tc.lr, betas=tuple(tc.betas),
                                           weight_decay=tc.weight_decay)
        self.train_rows = self.split.train_rows()
        if len(self.train_rows) == 0:
            raise ConfigError("no user has two or more training events; the dataset is too small for this split")
        self.state: dict[str, Any] = {"epoch": 0, "step_in_epoch": 0, "global_step": 0, "best_metric": None,
                                      "best_epoch": None, "bad_evals": 0, "finished": False}
        self.main = dist_utils.is_main()
        if self.main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        self._check_or_write_config()
        self.ckpt_root = self.run_dir / "checkpoints"
        if resume:
            path = latest_checkpoint(self.ckpt_root)
            if path is not None:
                self.state = load_checkpoint(path, self.model, self.optimizer)
                self.resumed_from = path
        self.logger = MetricLogger(self.run_dir, tensorboard=tc.tensorboard, enabled=self.main)

    # -- run folder -------------------------------------------------------------------------------
    def run_record(self) -> dict[str, Any]:
        return {
            "genrec_version": genrec.__version__,
            "model": self.cfg.model["name"],
            "kinds": list(self.model.kinds),
            "num_items": self.dataset.num_items,
            "max_len": self.cfg.data.max_len,
            "data_fingerprint": self.dataset.fingerprint,
            "data_path": str(self.dataset.path) if self.dataset.path else "",
            "config": self.cfg.to_dict(),
        }

    def _check_or_write_config(self) -> None:
        path = self.run_dir / CONFIG_FILE
        rec = self.run_record()
        if path.exists():
            old = json.loads(path.read_text())
            for key in ("model", "num_items", "max_len", "data_fingerprint"):
                if old.get(key) != rec.get(key):
                    raise CheckpointError(
                        f"{path}: this run folder holds a run with {key}={old.get(key)!r}, not {rec.get(key)!r}; "
                        "use another --out folder")
            if old["config"]["model"] != rec["config"]["model"]:
                raise CheckpointError(f"{path}: the model settings differ from this run folder's; use another --out folder")
        if self.main:
            tmp = path.with_name(CONFIG_FILE + ".tmp")
            tmp.write_text(json.dumps(rec, indent=2))
            tmp.replace(path)

    # -- training ---------------------------------------------------------------------------------
    def _step_generator(self, step: int) -> torch.Generator:
        g = torch.Generator()
        g.manual_seed((self.cfg.train.seed * 1_000_003 + step) % (2**63 - 1))
        return g

    def _autocast(self):
        if self.device.type == "cuda" and self.cfg.train.bf16:
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return nullcontext()

    def _save(self, name: str) -> None:
        if self.main:
            save_checkpoint(self.ckpt_root, name, self.model, self.optimizer, self.state)
        dist_utils.barrier()

    def fit(self) -> dict[str, Any]:
        tc = self.cfg.train
        st = self.state
        if st.get("finished"):
            return self.summary()
        lengths = self.split.train_end[self.train_rows]
        self.model.train()
        stop = False
        while st["epoch"] < tc.epochs and not stop:
            epoch = st["epoch"]
            rng = np.random.default_rng([tc.seed, epoch])
            batches = batch_order(lengths, tc.batch_size, rng, tc.length_bucketing)
            bar = None
            if tc.progress and self.main:
                from tqdm.auto import tqdm

                bar = tqdm(total=len(batches), initial=st["step_in_epoch"], desc=f"epoch {epoch + 1}/{tc.epochs}",
                           leave=False, dynamic_ncols=True, disable=None)
            loss_sum, loss_n, t_epoch = 0.0, 0, time.time()
            for bi in range(st["step_in_epoch"], len(batches)):
                rows = batches[bi]
                per = math.ceil(len(rows) / self.world)
                local = rows[self.rank * per : (self.rank + 1) * per]
                batch = make_train_batch(self.seqs, self.train_rows[local], self.split.train_end,
                                         self.cfg.data.max_len).to(self.device)
                with self._autocast():
                    lsum, count = self.loss_module(batch, self._step_generator(st["global_step"]))
                stats = dist_utils.all_reduce_sum(torch.stack([lsum.detach().float(), count.float()]))
                total = max(float(stats[1]), 1.0)
                loss = lsum * (self.world / total)
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if tc.grad_clip > 0:
                    torch.nn.utils.clip_grad_norm_(self.model.parameters(), tc.grad_clip)
                self.optimizer.step()
                st["global_step"] += 1
                st["step_in_epoch"] = bi + 1
                step_loss = float(stats[0]) / total
                loss_sum += step_loss
                loss_n += 1
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(loss=f"{step_loss:.4f}")
                self.logger.log(st["global_step"], train_loss=step_loss, epoch=epoch)
                if not math.isfinite(step_loss):
                    raise non_finite_loss(step_loss, st["global_step"], self.device, tc.bf16)
                if tc.checkpoint_every and st["global_step"] % tc.checkpoint_every == 0:
                    self._save(f"step-{st['global_step']:09d}")
                if tc.max_steps and st["global_step"] >= tc.max_steps:
                    stop = True
                    break
            if bar is not None:
                bar.close()
            if stop:
                self._save(f"step-{st['global_step']:09d}")
                break
            st["epoch"] = epoch + 1
            st["step_in_epoch"] = 0
            epoch_seconds = time.time() - t_epoch
            st["train_seconds"] = st.get("train_seconds", 0.0) + epoch_seconds  # checkpointed with the state
            rec: dict[str, Any] = {"epoch": epoch + 1, "train_loss_epoch": loss_sum / max(loss_n, 1),
                                   "epoch_seconds": round(epoch_seconds, 3)}
            if (epoch + 1) % tc.eval_every == 0 or epoch + 1 == tc.epochs:
                improved = False
                if self.main:
                    m = evaluate_retrieval(self.model, self.seqs, self.split.valid, self.cfg.eval.ks,
                                           self.cfg.eval.exclude_history, self.cfg.eval.batch_size) \
                        if len(self.split.valid) else {}
                    metric = m.get(self.stop_metric)
                    if metric is None and m:
                        raise ConfigError(f"train.early_stop_metric '{self.stop_metric}' is not among {sorted(m)}")
                    rec.update({f"valid/{k}": v for k, v in m.items() if k != "num_queries"})
                    if metric is not None and (st["best_metric"] is None or metric > st["best_metric"]):
                        st["best_metric"], st["best_epoch"], st["bad_evals"] = metric, epoch + 1, 0
                        improved = True
                        (self.run_dir / BEST_DIR).mkdir(exist_ok=True)
                        save_weights(self.model, self.run_dir / BEST_DIR / "model.safetensors")
                    else:
                        st["bad_evals"] += 1
                    if tc.patience and st["bad_evals"] >= tc.patience:
                        stop = True
                stop = dist_utils.broadcast_flag(stop, self.device)
                rec["improved"] = improved
            self.logger.log(st["global_step"], **rec)
            if stop or st["epoch"] >= tc.epochs:
                st["finished"] = True
            self._save(f"epoch-{st['epoch']:05d}")
        self.logger.close()
        return self.summary()

    def summary(self) -> dict[str, Any]:
        return {k: self.state.get(k) for k in ("epoch", "global_step", "best_metric", "best_epoch", "finished",
                                                "train_seconds")}

    # -- evaluation -------------------------------------------------------------------------------
    def load_best(self) -> None:
        best = self.run_dir / BEST_DIR / "model.safetensors"
        if best.exists():
            load_weights(self.model, best)

    def evaluate(self, which: str = "test", exclude_history: bool | None = None) -> dict[str, Any]:
        samples = {"test": self.split.test, "valid": self.split.valid}.get(which)
        if samples is None:
            raise ConfigError(f"evaluate: unknown split '{which}' (test or valid)")
        excl = self.cfg.eval.exclude_history if exclude_history is None else exclude_history
        metrics = evaluate_retrieval(self.model, self.seqs, samples, self.cfg.eval.ks, excl, self.cfg.eval.batch_size)
        return results_record(self, which, excl, metrics)


def results_record(trainer: Trainer, which: str, exclude_history: bool, metrics: dict[str, Any]) -> dict[str, Any]:
    cfg = trainer.cfg
    return {
        "model": cfg.model["name"],
        "dataset": trainer.dataset.manifest.get("name", ""),
        "data_fingerprint": trainer.dataset.fingerprint,
        "protocol": {
            "task": "next-item retrieval",
            "split": trainer.split.name,
            "evaluated_on": which,
            "candidates": "full catalogue",
            "exclude_history": exclude_history,
            "history_window": cfg.data.max_len,
            "ks": cfg.eval.ks,
            "early_stopping": f"{trainer.stop_metric} on validation",
            "best_epoch": trainer.state.get("best_epoch"),
        },
        "metrics": metrics,
        "config": cfg.to_dict(),
        "genrec_version": genrec.__version__,
        "commit": git_commit(),
        "date": time.strftime("%Y-%m-%d"),
    }
