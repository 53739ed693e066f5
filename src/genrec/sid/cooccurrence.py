"""Semantic ids for multi-behavior logs without item text: a co-occurrence SVD of the training sessions.

The Taobao sample has no item text, so GAMER's SIDs (and the TIGER baseline's, which must be the same table)
quantize item vectors built from **training events only** (spec §5.3): see :func:`cooccurrence_embeddings`.
:func:`build_sid_table` picks the recipe's source (a saved table, this SVD, a CF run, a ``.npy`` file or text)
and runs RQ-KMeans + the collision level; it is deterministic given ``sid.seed`` and the split, so every
variant and seed of a benchmark gets the same table (its fingerprint is stamped in each record).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from genrec.config import RunConfig
from genrec.data.multibehavior import SessionSplit
from genrec.data.schema import Dataset
from genrec.errors import ConfigError, DataError
from genrec.sid.codebook import SIDTable, tensor_fingerprint
from genrec.sid.embed import ItemEmbeddings
from genrec.sid.rqkmeans import RQKMeans, RQKMeansConfig


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


def build_sid_table(cfg: RunConfig, dataset: Dataset, split: SessionSplit) -> SIDTable:
    """SIDs per ``cfg.sid``: a saved table, or RQ-KMeans + collision level over the chosen item embeddings."""
    sc = cfg.sid
    if sc.table:
        return load_sid_table(Path(sc.table))
    if sc.quantizer != "rqkmeans":
        raise ConfigError(f"sid.quantizer '{sc.quantizer}': the GAMER trainer builds RQ-KMeans SIDs "
                          "(train an RQ-VAE table separately and pass sid.table)")
    if (sc.embeddings == "cf" and not sc.source_run) or sc.embeddings == "cooccurrence":
        emb = cooccurrence_embeddings(split, dataset.num_items, categories=item_categories(dataset), seed=sc.seed)
    elif sc.embeddings == "cf":
        from genrec.sid.embed import run_cf_embeddings

        emb = run_cf_embeddings(sc.source_run)
    elif sc.embeddings == "file":
        arr = np.load(sc.embeddings_file)
        if arr.ndim != 2 or arr.shape[0] != dataset.num_items:
            raise DataError(f"{sc.embeddings_file}: expected ({dataset.num_items}, D) item vectors, got {arr.shape}")
        vec = torch.from_numpy(arr.astype(np.float32))
        emb = ItemEmbeddings(np.arange(1, dataset.num_items + 1), vec, "file", tensor_fingerprint(vec))
    elif sc.embeddings == "text":
        from genrec.sid.embed import text_embeddings

        emb = text_embeddings(dataset.items, sc.cache_dir, sc.text_fields)
    else:
        raise ConfigError(f"sid.embeddings '{sc.embeddings}' is not one of text, cf, file, cooccurrence")
    quant = RQKMeans(RQKMeansConfig(num_levels=sc.levels, codebook_size=sc.codebook_size, seed=sc.seed))
    quant.fit(emb.vectors)
    table = SIDTable.from_quantizer(quant, emb.item_ids, emb.vectors)
    table.quantizer_params = {**table.quantizer_params, "embeddings": emb.source}
    return table


def load_sid_table(path: Path) -> SIDTable:
    """A SID table file, or the first readable ``.json``/``.parquet`` table in a folder."""
    if path.is_dir():
        for cand in sorted(path.glob("*.json")) + sorted(path.glob("*.parquet")):
            try:
                return SIDTable.load(cand)
            except DataError:
                continue
        raise DataError(f"{path}: no SID table (.json or .parquet) in this folder")
    return SIDTable.load(path)
