"""Padding share of the token slots the rankers' training epoch and evaluation pass compute, per recipe and dataset.

The sibling of ``benchmarks/padding.py`` for the ranking track: the HSTU ranker, MTGR, HPGR fine-tuning and
HPGR's stage-1 pre-training (the session encoder, SEM). Training batches are the trainers' own (epoch 0 of
``RankerTrainer.epoch_batches`` / ``PretrainTrainer.epoch_batches``, with the recipe's length bucketing);
evaluation batches are ``genrec.eval.ranking.predict_impressions``'s (impressions sorted by history length) on
the validation and test impressions, and stage 1's probe loss (its only evaluation). Nothing is trained: only
batch shapes are counted, so the figures are exact and machine-independent, except HPGR's PGSA-gathered layers,
whose kept columns depend on the relevance table: they are counted with the fresh (untrained) ranker's table.

What a slot is, per model (one candidate per impression, C = 1):

- ``hstu_ranker`` (and ``hpgr`` with ``model.pgsa=false``): every layer runs on (B, N + C), N the batch's longest
  history; real = each row's history plus its candidate.
- ``mtgr``: (B, F + N + C), F profile tokens (always real).
- ``hpgr`` (PGSA, gathered): the token-wise inputs on (B, N + C); the layers on (B, K' + 1), K' the most kept
  columns of the batch; the frozen SEM on its events and session tokens (as stage 1, below).
- ``packed_attention``: ``train.packed`` computes the real tokens only and attention per group of rows of similar
  length (``genrec.nn.jagged``); the share is that of the attention groups' slots.
- stage 1 (SEM): the intra-session encoder on (B, N + M) (events and one [SES] token per kept session, M the
  most sessions of the batch), the inter-session encoder on (B, M); ``sem`` weighs them by their layer counts.
  Packed (``train.packed``), every token-wise layer runs on real tokens only, and attention per group of sessions
  of similar length (``sem_intra_packed_attention``) and of rows with similar session counts (``..._inter_...``).

    python benchmarks/padding_rankers.py --recipe configs/hstu_ranker-ml100k.yaml --data data_cache/ml-100k
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import write_result  # noqa: E402

from genrec.config import RunConfig, load_config  # noqa: E402
from genrec.data.features import user_profile_table  # noqa: E402
from genrec.data.loading import load_data  # noqa: E402
from genrec.data.sequences import SeqBatch, UserSequences, batch_order  # noqa: E402
from genrec.models.hpgr import session_layout, window_sessions  # noqa: E402
from genrec.models.registry import build_model  # noqa: E402
from genrec.nn.jagged import length_groups  # noqa: E402
from genrec.runs.ranking_data import RankingData, build_ranking_data, impression_batch  # noqa: E402
from genrec.train.pretrain import PretrainConfig, pretrain_batch, pretraining_events  # noqa: E402
from genrec.train.stages import pretrain_settings  # noqa: E402


class Tally:
    """(real, computed) slot counts per named part; ``share(part)`` = 1 - real / computed."""

    def __init__(self) -> None:
        self.counts: dict[str, list[int]] = defaultdict(lambda: [0, 0])

    def add(self, part: str, real: int, slots: int) -> None:
        self.counts[part][0] += int(real)
        self.counts[part][1] += int(slots)

    def shares(self, prefix: str) -> dict[str, float]:
        return {f"{prefix}_{part}": 1 - r / s for part, (r, s) in self.counts.items() if s}


def ranker_batches(cfg: RunConfig, data: RankingData) -> dict[str, list[np.ndarray]]:
    """Impression indices of each batch: the training epoch 0 and the validation and test passes."""
    tc, L = cfg.train, cfg.data.max_len
    train_idx = data.part("train")
    lengths = np.minimum(data.imps.history_lengths[train_idx], L)  # RankerTrainer.epoch_batches
    out = {"train": [train_idx[b] for b in batch_order(lengths, tc.batch_size,
                                                       np.random.default_rng([tc.seed, 0]), tc.length_bucketing)]}
    for which in ("valid", "test"):  # predict_impressions: sorted by history length, then chunked
        idx = data.part(which)
        order = np.argsort(data.imps.history_lengths[idx], kind="stable")
        bs = cfg.ranking.eval_batch_size
        out[which] = [idx[order[i : i + bs]] for i in range(0, len(order), bs)]
    return out


def sem_slots(tally: Tally, pcfg: PretrainConfig, timestamps: torch.Tensor, sessions: torch.Tensor,
              lengths: torch.Tensor) -> None:
    """The SEM's slots on one (B, N) batch: intra-session encoder (events + [SES] tokens), inter-session one."""
    sem = pcfg.sem
    B, N = timestamps.shape
    if not sem.use_sessions:
        tally.add("sem", int(lengths.sum()), B * N)
        return
    lay = session_layout(timestamps, sessions, lengths, sem.max_sessions, sem.num_time_buckets)
    m, M = lay.num_sessions, lay.session_valid.shape[1]
    tokens = sem.session_repr == "token"
    intra_real, intra_slots = int(lay.event_valid.sum()) + tokens * int(m.sum()), B * (N + tokens * M)
    tally.add("sem_intra", intra_real, intra_slots)
    tally.add("sem_inter", int(m.sum()), B * M)
    tally.add("sem", sem.intra_layers * intra_real + sem.inter_layers * int(m.sum()),
              sem.intra_layers * intra_slots + sem.inter_layers * B * M)
    if tokens:  # packed (SessionEncoder.packed_events): one sequence per session, then one per row of sessions
        first = (torch.cumsum(m, 0) - m)[:, None] + lay.event_session  # (B, N) global session of each event
        sizes = torch.bincount(first[lay.event_valid], minlength=int(m.sum())).numpy() + 1  # (Ts,) events + [SES]
        attention_groups(tally, sizes, "sem_intra_packed_attention")
        attention_groups(tally, m.numpy(), "sem_inter_packed_attention")


def attention_groups(tally: Tally, tokens: np.ndarray, part: str = "packed_attention") -> None:
    """Attention slots of the packed path (``train.packed``): rows of similar length grouped, as ``Packing``."""
    tally.add(part, int(tokens.sum()), sum(len(g) * int(tokens[g[0]]) for g in length_groups(tokens)))


def count_batch(tally: Tally, cfg: RunConfig, model: Any, batch: SeqBatch, cands: torch.Tensor,
                pcfg: PretrainConfig | None, profile_fields: int) -> None:
    """Add one impression batch's slots to ``tally``, by the model's layout (module docstring)."""
    name, mc = cfg.model["name"], cfg.model
    n = batch.lengths.numpy()  # (B,)
    B, N = batch.items.shape
    C = cands.shape[1]
    if name == "mtgr":
        tally.add("tokens", n.sum() + B * (profile_fields + C), B * (profile_fields + N + C))
        attention_groups(tally, n + profile_fields + C)
        return
    tally.add("tokens", n.sum() + B * C, B * (N + C))
    if name != "hpgr" or not mc.get("pgsa", True):
        attention_groups(tally, n + C)
        return
    if mc.get("impl", "gather") == "gather" and mc.get("rows", "all") == "all":
        with torch.no_grad():
            kept = (model.column_weights(batch, cands[:, 0]) > 0).sum(1).numpy()  # (B,)
        tally.add("layers", kept.sum() + B, B * (int(kept.max()) + 1))
        attention_groups(tally, kept + 1)
    if pcfg is not None and mc.get("use_sem", True):
        sids = window_sessions(batch.timestamps, batch.lengths, pcfg.session_gap, pcfg.max_session_len)
        sem_slots(tally, pcfg, batch.timestamps, sids, batch.lengths)


def ranker_row(cfg: RunConfig, ds: Any) -> dict[str, Any]:
    """One recipe's shares (training epoch 0, validation and test passes; stage 1 for two-stage recipes)."""
    data = build_ranking_data(cfg, ds)
    pcfg = pretrain_settings(cfg) if cfg.model["name"] == "hpgr" and (cfg.pretrain or cfg.stages) else None
    model = build_model({k: v for k, v in cfg.model.items() if k != "pretrained"}, ds.num_items, cfg.data.max_len)
    profile = user_profile_table(ds)[0].shape[1] if cfg.model["name"] == "mtgr" else 0  # F profile tokens
    row: dict[str, Any] = {"model": cfg.model["name"], "dataset": ds.manifest.get("name"),
                           "max_len": cfg.data.max_len, "batch_size": cfg.train.batch_size,
                           "length_bucketing": cfg.train.length_bucketing}
    torch.manual_seed(cfg.train.seed)
    for which, batches in ranker_batches(cfg, data).items():
        tally = Tally()
        for idx in batches:
            batch, cands, _, _ = impression_batch(data, idx, cfg.data.max_len, None, "cpu")
            count_batch(tally, cfg, model, batch, cands, pcfg, profile)
        row.update(tally.shares(which))
    if pcfg is not None and "pretrain" in (cfg.stages or []):
        row.update(pretrain_shares(ds, data.t_valid, pcfg))
    return row


def pretrain_shares(ds: Any, cutoff: int, pcfg: PretrainConfig) -> dict[str, float]:
    """Stage 1's SEM slots: its training epoch 0 (``PretrainTrainer.epoch_batches``) and its probe pass."""
    ev = pretraining_events(UserSequences.from_interactions(ds.interactions), cutoff, pcfg.session_gap,
                            pcfg.max_session_len)
    rows = np.flatnonzero(ev.lengths >= 2)
    out = {}
    probe = rows[: pcfg.probe_rows]
    passes = {"pretrain": [rows[b] for b in batch_order(ev.lengths[rows], pcfg.batch_size,
                                                        np.random.default_rng(pcfg.seed))],
              "pretrain_probe": [probe[i : i + pcfg.batch_size] for i in range(0, len(probe), pcfg.batch_size)]}
    for which, batches in passes.items():
        tally = Tally()
        for r in batches:
            b = pretrain_batch(ev, r, pcfg.max_len, pcfg.sem.max_sessions)
            sem_slots(tally, pcfg, b.timestamps, b.session_ids, b.lengths)
        out.update(tally.shares(which))
    return out


def describe(row: dict[str, Any]) -> str:
    """One line per recipe: every share, in percent."""
    shares = ", ".join(f"{k} {v:.1%}" for k, v in row.items() if isinstance(v, float))
    return f"{Path(row['recipe']).stem} on {row['dataset']} (window {row['max_len']}): {shares}"


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recipe", action="append", required=True, help="repeatable")
    ap.add_argument("--data", action="append", required=True, help="one per --recipe")
    ap.add_argument("--set", nargs="*", default=[], help="config overrides for every recipe (section.key=value)")
    ap.add_argument("--name", default="padding-rankers")
    args = ap.parse_args(argv)
    if len(args.recipe) != len(args.data):
        ap.error("give one --data per --recipe")
    torch.set_num_threads(1)
    rows = []
    for recipe, data in zip(args.recipe, args.data):
        cfg = load_config(recipe, [*args.set, f"data.path={data}"])
        row = {"recipe": recipe, **ranker_row(cfg, load_data(cfg.data))}
        rows.append(row)
        print(describe(row))
    rec = {"dataset": [r["dataset"] for r in rows], "model": "rankers and HPGR stage 1 (batch shapes only)",
           "recipe": args.recipe, "protocol": {"what": "padding share of computed token slots: training epoch 0, "
                                               "validation and test passes, stage-1 epoch 0 and probe",
                                               "overrides": args.set}, "seeds": None, "metrics": {"rows": rows}}
    print(f"wrote {write_result(args.name, rec)}")
    return rec


if __name__ == "__main__":
    main()
