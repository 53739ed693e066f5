"""RecBole SASRec on the atomic files of recbole_files.py, timed per epoch and per validation: one JSON record.

Runs INSIDE the RecBole virtual environment that ``python benchmarks/peer_recbole.py --setup`` makes; genrec is
never imported here and RecBole never in genrec. benchmarks/peer_recbole.py starts it; by hand:

    .bench-env/recbole/bin/python benchmarks/recbole_driver.py --data-dir WORK --dataset beauty \
        --settings settings.json --result recbole.json

Compatibility shims, applied in this process only (RecBole's installed files are left as they are):
- numpy 2 removed ``np.float_``, ``np.complex_`` and ``np.unicode_``; RecBole 1.2.1's ``Config`` aliases the
  old names through them (``compatibility_settings``), so the three are restored before ``Config`` is built.
- torch >= 2.6 loads checkpoints with ``weights_only=True`` and RecBole's best-model reload unpickles its own
  config: not used here, the best weights are copied in memory when RecBole saves them and the test set is
  evaluated with those.
- ray, which only RecBole's hyper-parameter tuning uses (``recbole.quick_start`` imports it), is not installed:
  this driver builds the config, data, model and trainer itself instead of calling ``quick_start``.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import resource
import sys
import time
from pathlib import Path

import numpy as np

for _old, _new in (("float_", np.float64), ("complex_", np.complex128), ("unicode_", np.str_)):
    if not hasattr(np, _old):
        setattr(np, _old, _new)

import torch  # noqa: E402
from recbole.config import Config  # noqa: E402
from recbole.data import create_dataset, data_preparation  # noqa: E402
from recbole.trainer import Trainer  # noqa: E402
from recbole.utils import get_model, init_logger, init_seed  # noqa: E402


class _Stop(Exception):
    """Raised from RecBole's epoch callback to end ``fit`` once the target or the time budget is reached."""


class TimedTrainer(Trainer):
    """RecBole's own Trainer and ``fit`` loop, with wall seconds of each training epoch and validation recorded
    and the best weights kept in memory."""

    def __init__(self, config, model) -> None:
        super().__init__(config, model)
        self.train_seconds: list[float] = []
        self.valid_seconds: list[float] = []
        self.valid_results: list[dict] = []
        self.best_state: dict | None = None

    def _train_epoch(self, train_data, epoch_idx, loss_func=None, show_progress=False):
        t0 = time.perf_counter()
        out = super()._train_epoch(train_data, epoch_idx, loss_func=loss_func, show_progress=show_progress)
        self.train_seconds.append(time.perf_counter() - t0)
        return out

    def _valid_epoch(self, valid_data, show_progress=False):
        t0 = time.perf_counter()
        score, result = super()._valid_epoch(valid_data, show_progress=show_progress)
        self.valid_seconds.append(time.perf_counter() - t0)
        self.valid_results.append({k: float(v) for k, v in result.items()})
        return score, result

    def _save_checkpoint(self, epoch, verbose=True, **kwargs):
        super()._save_checkpoint(epoch, verbose=verbose, **kwargs)
        self.best_state = copy.deepcopy(self.model.state_dict())


def recbole_config(args: argparse.Namespace, settings: dict) -> dict:
    """RecBole's settings: the benchmark files, SASRec's size from the genrec recipe, full-catalogue evaluation."""
    return {
        "data_path": args.data_dir, "benchmark_filename": ["train", "valid", "test"],
        "alias_of_item_id": ["item_id_list"], "load_col": {"inter": ["user_id", "item_id_list", "item_id"]},
        "USER_ID_FIELD": "user_id", "ITEM_ID_FIELD": "item_id", "TIME_FIELD": None,
        "MAX_ITEM_LIST_LENGTH": settings["max_len"],
        "n_layers": settings["num_layers"], "n_heads": settings["num_heads"], "hidden_size": settings["d_model"],
        "inner_size": settings["d_ff"], "hidden_dropout_prob": settings["dropout"],
        "attn_dropout_prob": settings["dropout"], "hidden_act": "relu", "layer_norm_eps": 1e-8,
        "loss_type": "CE", "train_neg_sample_args": None, "learning_rate": settings["lr"],
        "train_batch_size": settings["train_batch_size"], "epochs": args.epochs, "eval_step": 1,
        "stopping_step": settings["patience"], "metrics": ["Hit", "NDCG", "MRR"], "topk": [5, 10],
        "valid_metric": "NDCG@10", "eval_batch_size": settings["eval_batch_size"], "metric_decimal_place": 6,
        "eval_args": {"split": {"LS": "valid_and_test"}, "order": "TO", "group_by": "user", "mode": "full"},
        "use_gpu": False, "seed": settings["seed"], "reproducibility": True, "show_progress": False,
        "checkpoint_dir": str(Path(args.data_dir) / "saved"), "log_wandb": False, "state": "WARNING",
    }


def _read_pairs(path: Path) -> dict[str, tuple[list[str], str]]:
    """user token -> (history tokens, target token) of one atomic file."""
    out = {}
    for line in path.read_text().splitlines()[1:]:
        u, h, t = line.split("\t")
        out[u] = (h.split(), t)
    return out


def check_loaded(dataset, part_data, path: Path) -> dict:
    """Do RecBole's loaded examples (ids mapped back to tokens) equal the file's, user by user?"""
    feat = part_data.dataset.inter_feat
    users = dataset.id2token("user_id", feat["user_id"].numpy())
    targets = dataset.id2token("item_id", feat["item_id"].numpy())
    lists, lens = feat["item_id_list"].numpy(), feat["item_length"].numpy()
    got = {str(u): ([str(x) for x in dataset.id2token("item_id", ids[:n])], str(t))
           for u, t, ids, n in zip(users, targets, lists, lens)}
    want = _read_pairs(path)
    return {"rows": len(feat), "targets_identical": {u: t for u, (_, t) in got.items()} == {u: t for u, (_, t)
                                                                                            in want.items()},
            "histories_identical": got == want}


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", required=True, help="folder holding DATASET/DATASET.{train,valid,test}.inter")
    ap.add_argument("--dataset", required=True)
    ap.add_argument("--settings", required=True, help="JSON file: model size, lr, batch sizes, seed, threads")
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--target", type=float, default=0.0399, help="stop once validation NDCG@10 reaches this")
    ap.add_argument("--max-seconds", type=float, default=0.0, help="stop after the epoch that passes this (0 = none)")
    ap.add_argument("--result", required=True)
    args = ap.parse_args()
    sys.argv = sys.argv[:1]  # RecBole's Config also reads --key=value arguments from the command line
    settings = json.loads(Path(args.settings).read_text())
    os.chdir(args.data_dir)  # RecBole writes log/ and log_tensorboard/ into the working folder
    torch.set_num_threads(settings["threads"])
    t_load = time.perf_counter()
    config = Config(model="SASRec", dataset=args.dataset, config_dict=recbole_config(args, settings))
    init_seed(config["seed"], config["reproducibility"])
    torch.set_num_threads(settings["threads"])  # after init_seed, which may touch torch's settings
    init_logger(config)
    dataset = create_dataset(config)
    train_data, valid_data, test_data = data_preparation(config, dataset)
    folder = Path(args.data_dir) / args.dataset
    check = {"users": dataset.user_num - 1, "items": dataset.item_num - 1,
             "valid": check_loaded(dataset, valid_data, folder / f"{args.dataset}.valid.inter"),
             "test": check_loaded(dataset, test_data, folder / f"{args.dataset}.test.inter")}
    init_seed(config["seed"] + config["local_rank"], config["reproducibility"])
    model = get_model(config["model"])(config, train_data.dataset).to(config["device"])
    trainer = TimedTrainer(config, model)
    load_s = time.perf_counter() - t_load
    curve: list[tuple[float, float, float]] = []  # (wall s, cpu s since fit began, valid ndcg@10)
    t0, cpu0 = time.perf_counter(), time.process_time()

    def after_validation(epoch_idx: int, valid_score: float) -> None:
        curve.append((time.perf_counter() - t0, time.process_time() - cpu0, float(valid_score)))
        print(f"recbole epoch {epoch_idx + 1}: train {trainer.train_seconds[-1]:.1f} s, validation "
              f"{trainer.valid_seconds[-1]:.1f} s, valid ndcg@10 {valid_score:.4f}, {curve[-1][0]:.0f} s so far",
              flush=True)
        if (args.target and valid_score >= args.target) or (args.max_seconds and curve[-1][0] >= args.max_seconds):
            raise _Stop

    try:
        trainer.fit(train_data, valid_data, verbose=False, saved=True, show_progress=False,
                    callback_fn=after_validation)
    except _Stop:
        pass
    fit_s = time.perf_counter() - t0
    if trainer.best_state is not None:
        model.load_state_dict(trainer.best_state)
    t_test = time.perf_counter()
    test = trainer.evaluate(test_data, load_best_model=False, show_progress=False)
    rec = {"framework": f"RecBole {sys.modules['recbole'].__version__}", "torch": torch.__version__,
           "threads": torch.get_num_threads(), "config": {k: v for k, v in recbole_config(args, settings).items()
                                                           if k not in ("data_path", "checkpoint_dir")},
           "check": check, "load_seconds": load_s, "fit_seconds": fit_s, "train_seconds": trainer.train_seconds,
           "valid_seconds": trainer.valid_seconds, "valid": trainer.valid_results, "curve": curve,
           "test": {k: float(v) for k, v in test.items()}, "test_seconds": time.perf_counter() - t_test,
           "n_parameters": sum(p.numel() for p in model.parameters()), "peak_rss_mib": peak_rss_mib()}
    Path(args.result).write_text(json.dumps(rec, indent=2) + "\n")


if __name__ == "__main__":
    main()
