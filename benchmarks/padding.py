"""Padding share of the tokens a retriever's training epoch and evaluation pass compute, per recipe and dataset.

Training batches are the trainer's own (``batch_order`` with the recipe's length bucketing, one epoch);
evaluation batches are those of ``genrec.eval.retrieval.query_batches`` (queries batched by history length) and,
for comparison, the evaluation before it (queries in their own order); packed training (``train.packed``) is
counted too, token-wise layers and attention apart. Nothing is trained: only batch shapes
are counted, so the figures are exact and machine-independent. The rankers' and HPGR's stage-1 batches are counted
by ``benchmarks/padding_rankers.py``.

    python benchmarks/padding.py --recipe configs/sasrec-beauty.yaml --data data_cache/beauty
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import write_result  # noqa: E402

from genrec.config import load_config  # noqa: E402
from genrec.data.loading import load_data  # noqa: E402
from genrec.data.sequences import UserSequences, batch_order  # noqa: E402
from genrec.data.splits import split_from_config  # noqa: E402
from genrec.eval.retrieval import query_batches  # noqa: E402
from genrec.nn.jagged import length_groups  # noqa: E402


def train_share(split, max_len: int, batch_size: int, bucketing: bool, seed: int) -> tuple[float, int, dict]:
    """(padding share, tokens, packed shares) of one training epoch: each row contributes its last ``max_len``
    inputs. Packed (``train.packed``), the token-wise layers compute the real tokens only and attention runs
    over the length groups of ``genrec.nn.jagged``; ``*_pairs`` count the (query, key) slots attention computes
    (each row's L x L block against its own l x l), the measure of attention's work."""
    rows = split.train_rows()
    n = np.minimum(np.maximum(split.train_end[rows] - 1, 0), max_len)  # (R,) input tokens of each row
    real = padded = grouped = real_pairs = padded_pairs = grouped_pairs = 0
    for b in batch_order(split.train_end[rows], batch_size, np.random.default_rng([seed, 0]), bucketing):
        nb, width = n[b], max(int(n[b].max()), 1)
        groups = length_groups(nb)
        real += int(nb.sum())
        padded += len(b) * width
        grouped += sum(len(g) * int(nb[g[0]]) for g in groups)
        real_pairs += int((nb**2).sum())
        padded_pairs += len(b) * width**2
        grouped_pairs += sum(len(g) * int(nb[g[0]]) ** 2 for g in groups)
    packed = {"train_padding_share_packed_tokenwise": 0.0, "train_padding_share_packed_attention": 1 - real / grouped,
              "train_padding_share_attention_pairs": 1 - real_pairs / padded_pairs,
              "train_padding_share_packed_attention_pairs": 1 - real_pairs / grouped_pairs}
    return 1 - real / padded, padded, packed


def eval_shares(seqs: UserSequences, samples, max_len: int, batch_size: int) -> dict[str, float]:
    win = np.minimum(samples.hist_end, max_len)
    own = sum(len(win[a : a + batch_size]) * max(int(win[a : a + batch_size].max()), 1)
              for a in range(0, len(win), batch_size))
    fast = sum(qb.batch.items.numel() for qb in query_batches(seqs, samples, max_len, batch_size))
    return {"eval_padding_share": 1 - win.sum() / fast, "eval_padding_share_own_order": 1 - win.sum() / own}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recipe", action="append", required=True, help="repeatable")
    ap.add_argument("--data", action="append", required=True, help="one per --recipe")
    ap.add_argument("--name", default="padding")
    args = ap.parse_args(argv)
    if len(args.recipe) != len(args.data):
        ap.error("give one --data per --recipe")
    rows = []
    for recipe, data in zip(args.recipe, args.data):
        cfg = load_config(recipe, [f"data.path={data}"])
        ds = load_data(cfg.data)
        seqs = UserSequences.from_interactions(ds.interactions)
        split = split_from_config(seqs, cfg.data)
        tc, L = cfg.train, cfg.data.max_len
        share, tokens, packed = train_share(split, L, tc.batch_size, tc.length_bucketing, tc.seed)
        row = {"recipe": recipe, "dataset": ds.manifest.get("name"), "max_len": L, "batch_size": tc.batch_size,
               "train_padding_share": share, "train_tokens_per_epoch": tokens,
               **eval_shares(seqs, split.valid, L, cfg.eval.batch_size), **packed}
        rows.append(row)
        print(f"{Path(recipe).stem} on {row['dataset']} (window {L}): training {share:.1%} padding "
              f"({tokens} tokens per epoch; packed: {packed['train_padding_share_packed_tokenwise']:.1%} in the "
              f"token-wise layers, {packed['train_padding_share_packed_attention']:.1%} in attention; attention "
              f"(query, key) pairs {packed['train_padding_share_attention_pairs']:.1%} padded, "
              f"{packed['train_padding_share_packed_attention_pairs']:.1%} packed), evaluation "
              f"{row['eval_padding_share']:.1%} (queries in their own order: {row['eval_padding_share_own_order']:.1%})")
    rec = {"dataset": [r["dataset"] for r in rows], "model": "retrievers (batch shapes only)",
           "recipe": args.recipe, "protocol": {"what": "padding share of computed tokens, training epoch (padded and "
                                               "packed) and validation pass"}, "seeds": None, "metrics": {"rows": rows}}
    print(f"wrote {write_result(args.name, rec)}")
    return rec


if __name__ == "__main__":
    main()
