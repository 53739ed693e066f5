"""Item vectors for logs without item text: a co-occurrence SVD of the training sessions.

The Taobao sample has no item text, so GAMER's SIDs (and the TIGER baseline's, which must be the same table)
quantize item vectors built from **training events only** (spec §5.3): see :func:`cooccurrence_embeddings`
(a multi-behavior session split) and :func:`genrec.sid.build.loo_cooccurrence_embeddings` (leave-one-out).
The tables themselves are built by :mod:`genrec.sid.build` (:func:`~genrec.sid.build.build_session_sid_table`).
"""

from __future__ import annotations

import numpy as np
import torch

from genrec.data.multibehavior import SessionSplit
from genrec.data.schema import Dataset
from genrec.errors import DataError
from genrec.sid.codebook import tensor_fingerprint
from genrec.sid.embed import ItemEmbeddings


def cooccurrence_embeddings(split: SessionSplit, num_items: int, dim: int = 32,
                            categories: np.ndarray | None = None, category_weight: float = 0.5,
                            jitter: float = 0.15, jitter_dim: int = 8, seed: int = 0) -> ItemEmbeddings:
    """:func:`cooccurrence_vectors` over the training sessions of a multi-behavior session split (GAMER)."""
    mask = split.part_mask("train")
    sess = split.seqs.session_ids[mask] if split.seqs.session_ids is not None else None
    return cooccurrence_vectors(split.seqs.items[mask], sess, num_items, dim, categories, category_weight, jitter,
                                jitter_dim, seed)


def cooccurrence_vectors(items: np.ndarray, sess: np.ndarray | None, num_items: int, dim: int = 32,
                         categories: np.ndarray | None = None, category_weight: float = 0.5,
                         jitter: float = 0.15, jitter_dim: int = 8, seed: int = 0) -> ItemEmbeddings:
    """Item vectors for items ``1..num_items`` from training events only: SVD of item x (session, category).

    ``items`` and ``sess`` (same length) are the training events' item and global session ids; the caller
    decides what "training" means for its split, and nothing else enters.

    Columns are the training sessions (weight ``1/sqrt(session size)``) and, when ``categories`` (``(N+1,)``,
    -1 = unknown) is given, the item's category with ``category_weight``; rows are L2-normalised before a
    rank-``dim`` randomized SVD, and the item vector is its unit-norm projection. Items never seen in training
    keep only their category signal (or nothing), so a small seeded random part (``jitter``, in ``jitter_dim``
    extra dims) spreads items with identical vectors over the deeper codes instead of one huge collision group.
    """
    if sess is None or items.size == 0:
        raise DataError("co-occurrence embeddings: the split has no training events")
    pairs = np.unique(np.stack([items, sess], 1), axis=0)  # (P, 2) distinct (item, session)
    _, col, size = np.unique(pairs[:, 1], return_inverse=True, return_counts=True)
    col = col.reshape(-1)
    rows = [pairs[:, 0]]
    cols = [col]
    vals = [1.0 / np.sqrt(size[col])]
    ncol = int(size.size)
    if categories is not None:
        cat = np.asarray(categories, dtype=np.int64)
        has = np.flatnonzero(cat >= 0)
        _, cinv = np.unique(cat[has], return_inverse=True)
        rows.append(has)
        cols.append(ncol + cinv.reshape(-1))
        vals.append(np.full(has.size, category_weight))
        ncol += int(cinv.max()) + 1 if has.size else 0
    r, c, v = np.concatenate(rows), np.concatenate(cols), np.concatenate(vals).astype(np.float32)
    norm = np.sqrt(np.bincount(r, weights=v * v, minlength=num_items + 1))
    v = v / np.maximum(norm[r], 1e-12)
    x = torch.sparse_coo_tensor(torch.from_numpy(np.stack([r, c])), torch.from_numpy(v.astype(np.float32)),
                                (num_items + 1, ncol), check_invariants=True).coalesce()
    g = torch.Generator().manual_seed(seed)
    q = min(dim, min(x.shape) - 1)
    state = torch.get_rng_state()
    torch.manual_seed(seed)  # svd_lowrank draws its random projection from the global generator
    u, s, _ = torch.svd_lowrank(x, q=q, niter=6)
    torch.set_rng_state(state)
    vec = u * s  # (N+1, q) row projections
    vec = vec / vec.norm(dim=1, keepdim=True).clamp_min(1e-12)
    noise = jitter * torch.randn(num_items + 1, jitter_dim, generator=g)
    out = torch.cat([vec, noise], 1)[1:].contiguous()  # (N, q + jitter_dim), items 1..N
    fp = tensor_fingerprint(out, extra={"dim": dim, "category_weight": category_weight, "jitter": jitter})
    return ItemEmbeddings(np.arange(1, num_items + 1, dtype=np.int64), out, "cooccurrence:train-sessions", fp)


def item_categories(dataset: Dataset) -> np.ndarray | None:
    """(N+1,) category id per item (-1 = unknown) from ``items.parquet``, or None without the column."""
    if "category_id" not in dataset.items.column_names:
        return None
    cat = np.full(dataset.num_items + 1, -1, dtype=np.int64)
    ids = dataset.items.column("item_id").to_numpy()
    vals = dataset.items.column("category_id").to_numpy(zero_copy_only=False)
    ok = ~np.isnan(vals.astype(np.float64)) if vals.dtype.kind == "f" else np.ones(len(vals), bool)
    cat[ids[ok]] = vals[ok].astype(np.int64)
    return cat
