"""The training loop for generators (TIGER): next-SID cross-entropy over every training prefix.

Examples follow TIGER (spec §2.4, A-T2): for every user and every position ``j >= 1`` of the training part
of the split, the encoder reads the last ``<= max_len`` items before ``j`` and the decoder is taught the SID
of item ``j``. The optimiser is AdamW; the learning rate is held at ``train.lr`` for ``warmup_steps`` (the
paper's 10k steps at 0.01) and then decays as ``1/sqrt(step)``, optionally after a linear ramp. Validation
runs the (trie-constrained) beam search and early-stops on ``train.early_stop_metric``.

Exact resume, as in the retriever trainer: the example order of an epoch is a pure function of
``(seed, epoch)``, the learning rate a pure function of the step, and the torch RNG (dropout) is restored
from the atomic checkpoint, so an interrupted run that resumes ends with the same weights as one that never
stopped. Single process (CPU or one GPU); data parallelism is left to the retriever trainer for now.
"""

from __future__ import annotations

import json
import math
import time
from contextlib import nullcontext
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

import genrec
from genrec.config import GeneratorConfig, RunConfig, early_stop_metric
from genrec.data.schema import Dataset
from genrec.data.sequences import UserSequences, batch_order
from genrec.data.splits import EvalSamples, Split, make_split
from genrec.errors import CheckpointError, ConfigError, DataError
from genrec.eval.generation import GenerationEval, evaluate_generator, history_matrix
from genrec.models.base import GENERATOR
from genrec.models.registry import build_model
from genrec.sid.codebook import SIDTable
from genrec.train.base import BEST_DIR, CONFIG_FILE, git_commit, resolve_device
from genrec.train.checkpoint import (
    latest_checkpoint,
    load_checkpoint,
    load_weights,
    save_checkpoint,
    save_weights,
)
from genrec.train.logging import MetricLogger

GeneratorOptions = GeneratorConfig  # the generator: section of a recipe (kept under its old name)


class TrainExamples:
    """Every (row, history length) pair of the training part: ``rows[e]`` predicts event ``ends[e]``."""

    def __init__(self, split: Split) -> None:
        n = np.maximum(split.train_end - 1, 0)  # (U,) targets per row: positions 1..train_end-1
        self.rows = np.repeat(np.arange(len(n)), n)  # (E,)
        first = np.repeat(np.cumsum(n) - n, n)  # (E,) index of each row's first example
        self.ends = np.arange(len(self.rows)) - first + 1  # (E,) history length = target position

    def __len__(self) -> int:
        return len(self.rows)


def lr_at(step: int, base_lr: float, warmup_steps: int, linear_warmup_steps: int = 0) -> float:
    """Learning rate of optimiser step ``step`` (0-based): optional linear ramp, constant, then 1/sqrt decay."""
    s = step + 1
    ramp = min(1.0, s / linear_warmup_steps) if linear_warmup_steps > 0 else 1.0
    w = max(warmup_steps, 1)
    return base_lr * ramp * math.sqrt(w / max(s, w))


class GeneratorTrainer:
    """Train a generator model over a SID table; same run-folder layout as the retriever ``Trainer``."""

    def __init__(self, cfg: RunConfig, run_dir: str | Path, dataset: Dataset, sids: SIDTable,
                 options: GeneratorOptions | None = None, resume: bool = True) -> None:
        self.cfg = cfg
        self.opts = options or cfg.generator
        self.run_dir = Path(run_dir)
        self.dataset = dataset
        self.sids = sids
        tc = cfg.train
        if tc.num_threads > 0:
            torch.set_num_threads(tc.num_threads)
        self.device = resolve_device(tc.device)
        torch.manual_seed(tc.seed)
        self.seqs = UserSequences.from_interactions(dataset.interactions)
        self.split: Split = make_split(self.seqs, cfg.data.split, **(
            {"valid_frac": cfg.data.valid_frac, "test_frac": cfg.data.test_frac} if cfg.data.split == "temporal" else {}))
        self.model = build_model(cfg.model, dataset.num_items, cfg.data.max_len)
        if GENERATOR not in self.model.kinds:
            raise ConfigError(f"model '{cfg.model['name']}' is not a generator; this trainer trains generators")
        self.model.set_sid_table(sids)
        if getattr(self.model, "needs_item_vectors", False):  # GLASS: SID-Tier prototypes from item content
            from genrec.sid.build import item_embeddings

            emb = item_embeddings(cfg.sid, dataset)
            self.model.set_item_vectors(emb.item_ids, emb.vectors)
        missing = np.setdiff1d(np.unique(self.seqs.items), sids.item_ids)
        if missing.size:
            raise DataError(f"SID table lacks {missing.size} item(s) of the dataset (e.g. {missing[:5].tolist()})")
        self.model.to(self.device)
        self.examples = TrainExamples(self.split)
        if len(self.examples) == 0:
            raise ConfigError("no user has two or more training events; the dataset is too small for this split")
        self.ks = [k for k in cfg.eval.ks if k <= self.opts.beam_size]
        if not self.ks:
            raise ConfigError(f"eval.ks {cfg.eval.ks}: none is within the beam size {self.opts.beam_size}")
        self.stop_metric = early_stop_metric(cfg, f"ndcg@{10 if 10 in self.ks else max(self.ks)}")
        known = ["mrr"] + [f"{name}@{k}" for k in self.ks for name in ("hr", "recall", "ndcg")]
        if self.stop_metric not in known:
            raise ConfigError(f"train.early_stop_metric '{self.stop_metric}' is not computed for a generator "
                              f"with eval.ks <= beam size {self.opts.beam_size} (choose from {known})")
        self.valid_samples = self._valid_subset()
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=tc.lr, betas=tuple(tc.betas),
                                           weight_decay=tc.weight_decay)
        self.state: dict[str, Any] = {"epoch": 0, "step_in_epoch": 0, "global_step": 0, "best_metric": None,
                                      "best_epoch": None, "bad_evals": 0, "finished": False}
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._check_or_write_config()
        self.ckpt_root = self.run_dir / "checkpoints"
        self.resumed_from: Path | None = None
        if resume:
            path = latest_checkpoint(self.ckpt_root)
            if path is not None:
                self.state = load_checkpoint(path, self.model, self.optimizer)
                self.resumed_from = path
        self.logger = MetricLogger(self.run_dir, tensorboard=tc.tensorboard)

    # -- run folder -----------------------------------------------------------------------------------
    def run_record(self) -> dict[str, Any]:
        return {
            "genrec_version": genrec.__version__,
            "model": self.cfg.model["name"],
            "kinds": list(self.model.kinds),
            "num_items": self.dataset.num_items,
            "max_len": self.cfg.data.max_len,
            "data_fingerprint": self.dataset.fingerprint,
            "data_path": str(self.dataset.path) if self.dataset.path else "",
            "sid_fingerprint": self.sids.fingerprint,
            "sid_table": self.sids.meta(),
            "generator": asdict(self.opts),
            "config": self.cfg.to_dict(),
        }

    def _check_or_write_config(self) -> None:
        path = self.run_dir / CONFIG_FILE
        rec = self.run_record()
        if path.exists():
            old = json.loads(path.read_text())
            for key in ("model", "num_items", "max_len", "data_fingerprint", "sid_fingerprint"):
                if old.get(key) != rec.get(key):
                    raise CheckpointError(f"{path}: this run folder holds a run with {key}={old.get(key)!r}, "
                                          f"not {rec.get(key)!r}; use another --out folder")
            if old["config"]["model"] != rec["config"]["model"]:
                raise CheckpointError(f"{path}: the model settings differ from this run folder's; use another folder")
        tmp = path.with_name(CONFIG_FILE + ".tmp")
        tmp.write_text(json.dumps(rec, indent=2, default=str))
        tmp.replace(path)

    def _valid_subset(self) -> EvalSamples:
        v = self.split.valid
        cap = self.opts.valid_max_queries
        if cap <= 0 or len(v) <= cap:
            return v
        keep = np.sort(np.random.default_rng([self.cfg.train.seed, 7]).choice(len(v), cap, replace=False))
        return EvalSamples(v.rows[keep], v.hist_end[keep])

    # -- training -------------------------------------------------------------------------------------
    def _autocast(self):
        if self.device.type == "cuda" and self.cfg.train.bf16:
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return nullcontext()

    def batch(self, idx: np.ndarray) -> tuple[tuple[torch.Tensor, ...], torch.Tensor]:
        """Example indices -> the model's encoder inputs (TIGER: tokens (B, S), mask (B, S)) and target SIDs
        (B, m), on the device. The history read is the model's ``max_len`` (GLASS adds its long window)."""
        rows, ends = self.examples.rows[idx], self.examples.ends[idx]
        hist = torch.from_numpy(history_matrix(self.seqs, rows, ends, self.model.max_len)).to(self.device)
        users = torch.from_numpy(self.seqs.user_ids[rows]).to(self.device)
        targets = torch.from_numpy(self.seqs.items[self.seqs.offsets[rows] + ends]).to(self.device)  # (B,)
        return tuple(self.model.encoder_inputs(hist, users)), self.model.item_sids[targets]

    def _save(self, name: str) -> None:
        save_checkpoint(self.ckpt_root, name, self.model, self.optimizer, self.state)

    def fit(self) -> dict[str, Any]:
        tc, st = self.cfg.train, self.state
        if st.get("finished"):
            return self.summary()
        self.model.train()
        stop = False
        t_start = time.time()
        m = self.model.cfg.sid_length
        while st["epoch"] < tc.epochs and not stop:
            epoch = st["epoch"]
            # Length bucketing: the encoder reads 1 + m * min(j, max_len) tokens, so batching prefixes of similar
            # length removes most padding (same loss, several times fewer FLOPs on short-history datasets).
            lengths = np.minimum(self.examples.ends, self.cfg.data.max_len)
            batches = batch_order(lengths, tc.batch_size, np.random.default_rng([tc.seed, epoch]), tc.length_bucketing)
            loss_sum, loss_n, t_epoch = 0.0, 0, time.time()
            for bi in range(st["step_in_epoch"], len(batches)):
                inputs, target = self.batch(batches[bi])
                lr = lr_at(st["global_step"], tc.lr, self.opts.warmup_steps, self.opts.linear_warmup_steps)
                for g in self.optimizer.param_groups:
                    g["lr"] = lr
                with self._autocast():
                    lsum = self.model.loss(*inputs, target)
                loss = lsum / (target.shape[0] * m)
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if tc.grad_clip > 0:
                    torch.nn.utils.clip_grad_norm_(self.model.parameters(), tc.grad_clip)
                self.optimizer.step()
                st["global_step"] += 1
                st["step_in_epoch"] = bi + 1
                step_loss = float(loss.detach())
                if not math.isfinite(step_loss):
                    raise FloatingPointError(f"training loss is {step_loss} at step {st['global_step']}; lower train.lr")
                loss_sum += step_loss
                loss_n += 1
                self.logger.log(st["global_step"], train_loss=step_loss, lr=lr, epoch=epoch)
                if tc.checkpoint_every and st["global_step"] % tc.checkpoint_every == 0:
                    self._save(f"step-{st['global_step']:09d}")
                if tc.max_steps and st["global_step"] >= tc.max_steps:
                    stop = True
                    break
            if stop:
                self._save(f"step-{st['global_step']:09d}")
                break
            st["epoch"] = epoch + 1
            st["step_in_epoch"] = 0
            rec: dict[str, Any] = {"epoch": epoch + 1, "train_loss_epoch": loss_sum / max(loss_n, 1),
                                   "epoch_seconds": round(time.time() - t_epoch, 3)}
            if len(self.valid_samples) and ((epoch + 1) % tc.eval_every == 0 or epoch + 1 == tc.epochs):
                m_valid = self._evaluate_samples(self.valid_samples).metrics
                metric = m_valid.get(self.stop_metric)
                if metric is None:
                    raise ConfigError(f"train.early_stop_metric '{self.stop_metric}' is not among {sorted(m_valid)}")
                rec.update({f"valid/{k}": v for k, v in m_valid.items() if k != "num_queries"})
                improved = st["best_metric"] is None or metric > st["best_metric"]
                if improved:
                    st["best_metric"], st["best_epoch"], st["bad_evals"] = metric, epoch + 1, 0
                    (self.run_dir / BEST_DIR).mkdir(exist_ok=True)
                    save_weights(self.model, self.run_dir / BEST_DIR / "model.safetensors")
                else:
                    st["bad_evals"] += 1
                stop = bool(tc.patience and st["bad_evals"] >= tc.patience)
                rec["improved"] = improved
            self.logger.log(st["global_step"], **rec)
            if stop or st["epoch"] >= tc.epochs:
                st["finished"] = True
            self._save(f"epoch-{st['epoch']:05d}")
        st["train_seconds"] = st.get("train_seconds", 0.0) + (time.time() - t_start)
        self.logger.close()
        return self.summary()

    def summary(self) -> dict[str, Any]:
        return {k: self.state.get(k) for k in ("epoch", "global_step", "best_metric", "best_epoch", "finished",
                                                "train_seconds")}

    # -- evaluation -----------------------------------------------------------------------------------
    def _evaluate_samples(self, samples: EvalSamples, constrained: bool | None = None) -> GenerationEval:
        con = self.opts.constrained if constrained is None else constrained
        return evaluate_generator(self.model, self.seqs, samples, self.ks, self.opts.beam_size,
                                  self.cfg.eval.batch_size, constrained=con)

    def load_best(self) -> None:
        best = self.run_dir / BEST_DIR / "model.safetensors"
        if best.exists():
            load_weights(self.model, best)

    def evaluate(self, which: str = "test", constrained: bool | None = None) -> dict[str, Any]:
        """Results record for ``which`` (test | valid); ``constrained=False`` measures free decoding."""
        samples = {"test": self.split.test, "valid": self.split.valid}.get(which)
        if samples is None:
            raise ConfigError(f"evaluate: unknown split '{which}' (test or valid)")
        con = self.opts.constrained if constrained is None else constrained
        ev = self._evaluate_samples(samples, con)
        cfg = self.cfg
        return {
            "model": cfg.model["name"],
            "dataset": self.dataset.manifest.get("name", ""),
            "data_fingerprint": self.dataset.fingerprint,
            "sid_fingerprint": self.sids.fingerprint,
            "protocol": {
                "task": "next-item generation",
                "split": self.split.name,
                "evaluated_on": which,
                "candidates": f"beam list (beam {self.opts.beam_size}, "
                              f"{'trie-constrained' if con else 'unconstrained, invalid SIDs dropped'})",
                "exclude_history": False,
                "history_window": cfg.data.max_len,
                "ks": self.ks,
                "early_stopping": f"{self.stop_metric} on validation",
                "best_epoch": self.state.get("best_epoch"),
            },
            "metrics": ev.metrics,
            "config": cfg.to_dict(),
            "generator": asdict(self.opts),
            "genrec_version": genrec.__version__,
            "commit": git_commit(),
            "date": time.strftime("%Y-%m-%d"),
        }


def evaluate_generator_run(run_dir: str | Path, which: str = "test", constrained: bool = True) -> dict[str, Any]:
    """Re-evaluate a finished generator run folder (its best weights and its own SID table)."""
    from genrec.config import config_from_dict
    from genrec.data.schema import load_dataset
    from genrec.sid.build import load_sid_table

    root = Path(run_dir)
    record = json.loads((root / CONFIG_FILE).read_text())
    cfg = config_from_dict(record["config"], str(root / CONFIG_FILE))
    if record.get("data_path"):
        dataset = load_dataset(record["data_path"])
    else:
        from genrec.data.loading import load_data

        dataset = load_data(cfg.data)
    sids = load_sid_table(root / "sid")
    trainer = GeneratorTrainer(cfg, root, dataset, sids, resume=True)
    trainer.load_best()
    return trainer.evaluate(which, constrained=constrained)
