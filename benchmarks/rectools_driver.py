"""RecTools' own SASRec on P5 Beauty with the eSASRec benchmark's "SASRec+SS" settings, for one question: does the
reference implementation reach its published Recall@10 .0921 / NDCG@10 .0531 on this machine's data, and how
does its validation curve compare with genrec's `configs/sasrec-beauty-ss.yaml`?

Runs inside its own virtual environment (RecTools pins its own pandas/lightning), never genrec's:

    python3 -m venv .bench-env/rectools
    .bench-env/rectools/bin/pip install torch==2.13.0 "rectools[torch]==0.13.0"   # the benchmark's pin
    .bench-env/rectools/bin/python benchmarks/rectools_driver.py \
        --sequences PATH/beauty/sequential_data.txt.gz --epochs 30 --out runs/rectools-beauty.json

The data are read the way the benchmark's S3-Rec reader does (one line per user: user, then items oldest first;
the position is the timestamp), split leave-one-out (test: the last item; validation: the one before, excluded
from training, as the benchmark's `get_val_mask_func_all`), scored on the full catalogue with the user's
history excluded (RecTools' `filter_viewed=True`). The model state with the best validation Recall@10 is the
one tested; the per-epoch validation Recall@10 / NDCG@10 and seconds go to ``--out`` after every epoch.

A stopped run resumes: Lightning's ``last.ckpt`` (weights, optimizer, epoch, the curve and the best state so far)
is written to ``OUT.ckpt/`` after every epoch, and the same command continues from it (``resumed_at_epoch`` in the
record). The random streams restart on resume, so a resumed curve is not bit-identical to an uninterrupted one.
"""

from __future__ import annotations

import argparse
import copy
import gzip
import json
import math
import time
from pathlib import Path

import numpy as np
import pandas as pd
import rectools
import torch
from pytorch_lightning import Callback, Trainer
from pytorch_lightning.callbacks import ModelCheckpoint
from rectools import Columns
from rectools.dataset import Dataset
from rectools.models import SASRecModel
from rectools.models.nn.transformers.similarity import DistanceSimilarityModule


def pos_neg_logits_via_catalogue(self, session_embs, item_embs, candidate_item_ids):  # noqa: ANN001, ANN201
    """RecTools' sampled-softmax logits, the same numbers computed as full-catalogue scores then gathered, and only
    at positions that hold a target: its own gather of (B, L, 257, D) candidate vectors made an epoch 3.3x slower
    on the 2-core CPU, and most of a Beauty window is left padding, whose loss weight is 0 (its logits stay 0)."""
    session_embs = session_embs[:, -candidate_item_ids.shape[1]:]  # validation scores the last position only
    real = candidate_item_ids[..., 0] != 0  # (B, L): the positive is padding id 0 exactly where there is no target
    out = session_embs.new_zeros(candidate_item_ids.shape)  # (B, L, N + 1)
    out[real] = (session_embs[real] @ item_embs.T).gather(-1, candidate_item_ids[real])  # (R, N + 1)
    return out


def read_sequences(path: Path) -> pd.DataFrame:
    opener = gzip.open if path.suffix == ".gz" else open
    rows = []
    with opener(path, "rt") as f:
        for line in f:
            user, *items = line.split()
            rows.extend((int(user), int(item), t + 1) for t, item in enumerate(items))
    df = pd.DataFrame(rows, columns=[Columns.User, Columns.Item, Columns.Datetime])
    df[Columns.Weight] = 1.0
    return df


def last_per_user(df: pd.DataFrame) -> np.ndarray:
    """True on each user's last interaction (ties broken by file order, as the benchmark's stable sort)."""
    rank = df.sort_values(Columns.Datetime, ascending=False, kind="stable").groupby(Columns.User, sort=False).cumcount()
    return (rank == 0).reindex(df.index).values


def ranking_metrics(scores: torch.Tensor, history: torch.Tensor, targets: np.ndarray, k: int = 10) -> tuple:
    """Recall@k and NDCG@k of one target per row, history items masked out: scores (B, I), history (B, L) ids
    (0 = padding, an extra token that is never a target)."""
    scores = scores.scatter(1, history.long(), -math.inf)
    top = scores.topk(k, dim=1).indices.numpy()  # (B, k)
    hit = top == targets[:, None]
    rank = hit.argmax(1)
    found = hit.any(1)
    return found.astype(float), np.where(found, 1.0 / np.log2(rank + 2), 0.0)


class ValidationCurve(Callback):
    """Full-catalogue validation Recall@10 / NDCG@10 after every epoch; keeps the best state (by Recall@10)."""

    def __init__(self, out: Path, log: dict, patience: int = 0) -> None:
        self.out, self.record, self.patience = out, log, patience
        self.best, self.best_state = -1.0, None
        self.hits: list[np.ndarray] = []
        self.gains: list[np.ndarray] = []
        self.t0 = time.time()

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):  # noqa: ANN001
        with torch.no_grad():
            item_embs = pl_module.item_embs  # (I, D), set by RecTools before validation
            state = pl_module.torch_model.encode_sessions(batch, item_embs)[:, -1, :]  # (B, D)
            scores = state @ item_embs.T  # (B, I): the dot-product similarity RecTools' SASRec uses
        hit, gain = ranking_metrics(scores, batch["x"], batch["y"][:, 0].numpy())
        self.hits.append(hit)
        self.gains.append(gain)

    def on_validation_epoch_end(self, trainer, pl_module):  # noqa: ANN001
        if not self.hits:
            return
        recall, ndcg = float(np.concatenate(self.hits).mean()), float(np.concatenate(self.gains).mean())
        self.hits, self.gains = [], []
        if trainer.sanity_checking:
            return
        self.record["curve"].append({"epoch": trainer.current_epoch + 1, "valid_recall@10": recall,
                                  "valid_ndcg@10": ndcg, "seconds": round(time.time() - self.t0, 1)})
        if recall > self.best:
            self.best, self.best_state = recall, copy.deepcopy(pl_module.torch_model.state_dict())
            self.record["best_epoch"] = trainer.current_epoch + 1
        print(json.dumps(self.record["curve"][-1]), flush=True)
        self.out.write_text(json.dumps(self.record, indent=1))
        if self.patience and trainer.current_epoch + 1 - self.record["best_epoch"] >= self.patience:
            trainer.should_stop = True  # the benchmark's early stopping: no better validation Recall@10 in N epochs

    def on_fit_end(self, trainer, pl_module):  # noqa: ANN001
        if self.best_state is not None:
            pl_module.torch_model.load_state_dict(self.best_state)

    def state_dict(self) -> dict:  # saved in Lightning's checkpoint, so a resumed run keeps its curve and best state
        return {"record": self.record, "best": self.best, "best_state": self.best_state,
                "elapsed": time.time() - self.t0}

    def load_state_dict(self, state: dict) -> None:
        self.record.clear()
        self.record.update(state["record"])
        self.record.setdefault("resumed_at_epoch", []).append(len(self.record["curve"]) + 1)
        self.best, self.best_state = state["best"], state["best_state"]
        self.t0 = time.time() - state["elapsed"]


class ResumingTrainer(Trainer):
    """Starts from ``last.ckpt`` of its checkpoint folder when there is one (RecTools calls ``fit`` itself)."""

    resume_from: Path | None = None

    def fit(self, model, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN201
        if self.resume_from is not None and self.resume_from.exists():
            kwargs["ckpt_path"] = str(self.resume_from)
            # RecTools redraws every weight matrix (Xavier) in on_train_start, which Lightning calls after
            # restoring the checkpoint: without this the resumed run would start from random weights again
            model._xavier_normal_init = lambda: None
        return super().fit(model, *args, **kwargs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sequences", type=Path, required=True, help="P5/S3-Rec sequence file (user item item ...)")
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--patience", type=int, default=50, help="stop after N epochs without a better validation "
                    "Recall@10 (the benchmark's 50); 0 = never")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--key-padding-mask", action="store_true", help="RecTools' use_key_padding_mask (default off)")
    ap.add_argument("--users", type=int, default=0, help="only the first N users (a quick check)")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    DistanceSimilarityModule._get_pos_neg_logits = pos_neg_logits_via_catalogue
    torch.manual_seed(args.seed)
    np.random.seed(args.seed)

    df = read_sequences(args.sequences)
    if args.users:
        df = df[df[Columns.User].isin(df[Columns.User].unique()[: args.users])].reset_index(drop=True)
    test_mask = last_per_user(df)
    train, test = df[~test_mask].reset_index(drop=True), df[test_mask]
    log: dict = {"tool": f"rectools {rectools.__version__}", "model": "SASRecModel", "settings": {
        "n_factors": 256, "n_blocks": 1, "n_heads": 1, "dropout_rate": 0.2, "session_max_len": 50,
        "loss": "sampled_softmax", "n_negatives": 256, "lr": 1e-3, "batch_size": 128,
        "use_key_padding_mask": args.key_padding_mask}, "epochs": args.epochs, "seed": args.seed,
        "users": int(df[Columns.User].nunique()), "interactions": len(df), "curve": []}
    callback = ValidationCurve(args.out, log, args.patience)

    ckpt_dir = args.out.with_suffix(".ckpt")

    def trainer() -> Trainer:
        last = ModelCheckpoint(dirpath=ckpt_dir, save_last=True, save_top_k=0)  # last.ckpt after every epoch
        t = ResumingTrainer(max_epochs=args.epochs, accelerator="cpu", deterministic=True, logger=False,
                            enable_checkpointing=True, enable_progress_bar=False, enable_model_summary=False,
                            callbacks=[callback, last])
        t.resume_from = ckpt_dir / "last.ckpt"
        return t

    model = SASRecModel(
        n_factors=256, n_blocks=1, n_heads=1, dropout_rate=0.2, session_max_len=50, loss="sampled_softmax",
        n_negatives=256, lr=1e-3, batch_size=128, epochs=args.epochs, deterministic=True,
        use_key_padding_mask=args.key_padding_mask, get_val_mask_func=last_per_user,
        get_trainer_func=trainer, recommend_torch_device="cpu")
    t0 = time.time()
    model.fit(Dataset.construct(train))
    # RecTools trains a deep copy of the trainer: the curve lives in the copy's callback
    log = next(c for c in model.fit_trainer.callbacks if isinstance(c, ValidationCurve)).record
    log["train_seconds"] = round(time.time() - t0, 1)

    users = test[Columns.User].unique()
    reco = model.recommend(users=users, dataset=Dataset.construct(train), k=10, filter_viewed=True)
    target = dict(zip(test[Columns.User], test[Columns.Item]))
    reco["hit"] = reco[Columns.Item].values == reco[Columns.User].map(target).values
    hits = reco[reco["hit"]].set_index(Columns.User)[Columns.Rank]
    recall = len(hits) / len(users)
    ndcg = float((1.0 / np.log2(hits.values + 1)).sum() / len(users))
    log["test"] = {"recall@10": recall, "ndcg@10": ndcg, "users": len(users)}
    print(json.dumps(log["test"]), flush=True)
    args.out.write_text(json.dumps(log, indent=1))


if __name__ == "__main__":
    main()
