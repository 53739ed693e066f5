"""Packed (``train.packed``) against padded training steps, measured in one run: ms per step, the ratio.

For each recipe (a retriever, or a ranker: ``hstu_ranker``, ``mtgr``, ``hpgr``) two trainers start from the same weights
(same seed), one padded (the default) and one with ``train.packed=true``; they take the real loop step
(``TrainerBase._train_step``: forward, loss, backward, AdamW) on the same batches of epoch 0, interleaved (padded
first on even steps, packed first on odd ones), after ``--warmup`` untimed steps each; wall and process-CPU time
are both kept. Before any step both compute the first batch's loss with dropout off, which must agree to float
rounding; the timed batches' padding shares (token-wise layers and attention slots) are counted. A two-stage HPGR
recipe is timed as its fine-tuning stage without a stage-1 artifact (no frozen SEM, relevance from the ranker's
own table): the SEM would run padded, and the same, on both sides.

    python benchmarks/packed_speed.py --recipe configs/sasrec-ml100k.yaml --data data_cache/ml-100k --threads 1
    python benchmarks/packed_speed.py --recipe configs/hstu_ranker-ml1m.yaml --data data_cache/ml-1m --steps 12
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import interleaved_steps, write_result  # noqa: E402
from padding_rankers import Tally, sem_slots  # noqa: E402

from genrec.config import load_config  # noqa: E402
from genrec.data.loading import load_data  # noqa: E402
from genrec.data.sequences import UserSequences  # noqa: E402
from genrec.models.base import RANKER  # noqa: E402
from genrec.models.hpgr import HPGRRanker  # noqa: E402
from genrec.models.mtgr import MTGR  # noqa: E402
from genrec.models.registry import get_model_class  # noqa: E402
from genrec.nn.jagged import Packing  # noqa: E402
from genrec.train.pretrain import PretrainTrainer, pretrain_batch, pretraining_events  # noqa: E402
from genrec.train.ranker import RankerTrainer  # noqa: E402
from genrec.train.stages import pretrain_settings, training_cutoff  # noqa: E402
from genrec.train.trainer import Trainer  # noqa: E402

SIDES = ("padded", "packed")


def trainers(recipe: str, data: str, overrides: list[str], dataset: Any = None) -> dict[str, Any]:
    """A padded and a packed trainer of ``recipe``, same seed, so the same initial weights and batches."""
    out = {}
    for side in SIDES:
        cfg = load_config(recipe, [*overrides, f"data.path={data or repr('')}", "train.progress=false",
                                   "train.tensorboard=false", f"train.packed={side == 'packed'}"])
        dataset = dataset if dataset is not None else load_data(cfg.data)
        cls = RankerTrainer if RANKER in get_model_class(cfg.model["name"]).kinds else Trainer
        out[side] = cls(cfg, tempfile.mkdtemp(prefix=f"genrec-{side}-"), dataset, resume=False)
    return out


def packed_lengths(tr: Any, rows: Any) -> tuple[Any, int]:
    """(tokens per row of the batch ``rows`` (B,), the padded width the layers compute): a retriever's history;
    a ranker's history and candidates; HPGR's PGSA-gathered kept columns and candidate."""
    if not isinstance(tr, RankerTrainer):
        b = tr.train_batch(rows)
        return b.lengths, b.items.shape[1]
    batch, cands, _, kw = tr.batch(tr.train_idx[rows])
    model, (B, N), C = tr.model, batch.items.shape, cands.shape[1]
    if isinstance(model, HPGRRanker) and model.cfg.pgsa:
        with torch.no_grad():
            kept = (model.column_weights(batch, cands[:, 0]) > 0).sum(1)  # (B,)
        return kept + 1, int(kept.max()) + 1
    F = 0
    if isinstance(model, MTGR):  # its profile tokens (one all-missing token without a profile)
        profile = (kw.get("features") or {}).get("profile")
        F = 1 if profile is None else torch.as_tensor(profile).reshape(B, -1).shape[1]
    return batch.lengths + F + C, N + F + C


def loss_gap(trs: dict[str, Any], rows: Any) -> float:
    """|packed - padded| of a batch's mean loss with dropout off (eval mode), before either trainer steps."""
    values = []
    for side in SIDES:
        tr = trs[side]
        tr.model.eval()
        with torch.no_grad():
            total, count = tr.step_loss(rows)
        values.append(float(total) / float(count))
        tr.model.train()
    return abs(values[1] - values[0])


def shares(tr: Any, batches: list[Any]) -> dict[str, float]:
    """Padding shares of ``batches``: the padded path's (every layer), the packed path's attention slots."""
    real = padded = grouped = 0
    for rows in batches:
        lengths, width = packed_lengths(tr, rows)
        pk = Packing.of(lengths, width)
        real += pk.num_tokens
        padded += len(lengths) * width
        grouped += len(pk.gather)
    return {"padded_padding_share": 1 - real / padded, "packed_padding_share_tokenwise": 0.0,
            "packed_padding_share_attention": 1 - real / grouped}


def stage1_trainers(recipe: str, data: str, overrides: list[str]) -> tuple[dict[str, PretrainTrainer], Any]:
    """A padded and a packed HPGR stage-1 trainer of a two-stage recipe (same seed, events and batches), and the
    dataset."""
    out, dataset = {}, None
    for side in SIDES:
        cfg = load_config(recipe, [*overrides, f"data.path={data or repr('')}", "train.progress=false",
                                   "train.tensorboard=false", f"train.packed={side == 'packed'}"])
        dataset = dataset if dataset is not None else load_data(cfg.data)
        pcfg = pretrain_settings(cfg)
        ev = pretraining_events(UserSequences.from_interactions(dataset.interactions), training_cutoff(cfg, dataset),
                                pcfg.session_gap, pcfg.max_session_len)
        out[side] = PretrainTrainer(ev, np.flatnonzero(ev.lengths >= 2), pcfg, dataset.num_items, {"kind": "speed"},
                                    None, tempfile.mkdtemp(prefix=f"genrec-{side}-"), resume=False, loop=cfg.train)
    return out, dataset


def stage1_shares(tr: PretrainTrainer, batches: list[Any]) -> dict[str, float]:
    """The session encoder's padding shares of ``batches`` (``benchmarks/padding_rankers.py``'s count)."""
    tally, pcfg = Tally(), tr.pcfg
    for rows in batches:
        b = pretrain_batch(tr.ev, tr.rows[rows], pcfg.max_len, pcfg.sem.max_sessions)
        sem_slots(tally, pcfg, b.timestamps, b.session_ids, b.lengths)
    got = tally.shares("stage1")
    return {"padded_padding_share": got["stage1_sem"], "packed_padding_share_tokenwise": 0.0,
            "packed_padding_share_attention": got.get("stage1_sem_intra_packed_attention", 0.0), **got}


def measure(recipe: str, data: str, overrides: list[str], steps: int, warmup: int,
            stage1: bool = False) -> dict[str, Any]:
    """One recipe's row: ms per step of each side (median and mean), the speed-ups (of the median step, of the mean
    step, and in process-CPU time of the median step and of all timed steps together: an epoch's ratio), the loss
    check, the shares. ``stage1``: HPGR's stage-1 (session MIM) steps of a two-stage recipe instead."""
    if stage1:
        trs, dataset = stage1_trainers(recipe, data, overrides)
    else:
        trs = trainers(recipe, data, overrides)
        dataset = trs["padded"].dataset
    gap = loss_gap(trs, trs["padded"].epoch_batches(0)[0])
    times, batches = interleaved_steps(trs, steps, warmup)
    ms = {s: 1000 * statistics.median(t) for s, t in times.items()}
    mean = {s: 1000 * statistics.fmean(t) for s, t in times.items()}
    first = trs["padded"]
    return {"recipe": recipe, "stage": "pretrain" if stage1 else "train", "dataset": dataset.manifest.get("name"),
            "steps": steps, "batch_size": first.cfg.train.batch_size,
            "max_len": first.pcfg.max_len if stage1 else first.cfg.data.max_len,
            "ms_per_step_padded": ms["padded"], "ms_per_step_packed": ms["packed"],
            "speedup_median": ms["padded"] / ms["packed"], "speedup_mean": mean["padded"] / mean["packed"],
            "cpu_ms_per_step_padded": ms["cpu_padded"], "cpu_ms_per_step_packed": ms["cpu_packed"],
            "cpu_speedup_median": ms["cpu_padded"] / ms["cpu_packed"],
            "cpu_speedup_total": sum(times["cpu_padded"]) / sum(times["cpu_packed"]),
            "first_batch_loss_gap": gap, **(stage1_shares(first, batches) if stage1 else shares(first, batches))}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recipe", action="append", required=True, help="repeatable")
    ap.add_argument("--data", action="append", required=True, help="one per --recipe ('' = the recipe's own)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads; 0 = torch's default")
    ap.add_argument("--steps", type=int, default=24, help="timed steps per side")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--set", nargs="*", default=[], help="config overrides for both sides (section.key=value)")
    ap.add_argument("--quick", action="store_true", help="3 timed steps, 1 warm-up (a smoke test)")
    ap.add_argument("--stage1", action="store_true", help="also time stage 1 of two-stage (HPGR) recipes")
    ap.add_argument("--name", default="packed-speed")
    args = ap.parse_args(argv)
    if len(args.recipe) != len(args.data):
        ap.error("give one --data per --recipe")
    if args.threads:
        torch.set_num_threads(args.threads)
    steps, warmup = (3, 1) if args.quick else (args.steps, args.warmup)
    rows = []
    runs = [(r, d, False) for r, d in zip(args.recipe, args.data)]
    if args.stage1:
        runs += [(r, d, True) for r, d in zip(args.recipe, args.data) if "pretrain" in load_config(r).stages]
    for recipe, data, stage1 in runs:
        row = measure(recipe, data, args.set, steps, warmup, stage1)
        rows.append(row)
        print(f"{Path(recipe).stem}{' stage 1' if stage1 else ''} on {row['dataset']}: padded {row['ms_per_step_padded']:.1f} ms, packed "
              f"{row['ms_per_step_packed']:.1f} ms per step ({row['speedup_median']:.2f}x median, "
              f"{row['speedup_mean']:.2f}x mean, CPU time {row['cpu_speedup_median']:.2f}x median / "
              f"{row['cpu_speedup_total']:.2f}x in all, {steps} steps, "
              f"{torch.get_num_threads()} thread(s)); padding "
              f"{row['padded_padding_share']:.1%} padded, packed {row['packed_padding_share_tokenwise']:.1%} "
              f"token-wise / {row['packed_padding_share_attention']:.1%} attention; first-batch loss gap "
              f"{row['first_batch_loss_gap']:.1e}")
    rec = {"dataset": [r["dataset"] for r in rows], "model": "retrievers and rankers, padded vs packed training",
           "recipe": args.recipe, "protocol": {"what": "ms per training step (forward, loss, backward, AdamW), "
                                               "padded and packed interleaved on the same batches of epoch 0",
                                               "threads": torch.get_num_threads(), "overrides": args.set},
           "seeds": None, "metrics": {"rows": rows}}
    print(f"wrote {write_result(args.name, rec)}")
    return rec


if __name__ == "__main__":
    main()
