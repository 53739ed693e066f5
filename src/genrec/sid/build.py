"""Build a dataset's semantic-id table from a recipe's ``sid`` section: embeddings -> quantizer -> SIDs.

A SID folder holds ``sid_table.parquet`` (the versioned table), ``health.json`` (per-level usage, entropy,
collisions, largest prefix group) and ``build.json`` (the settings, the embedding source and fingerprints),
so a table can be audited and reused by every generator trained on the same catalogue.

:func:`item_embeddings` is the one dispatch on ``sid.embeddings``; :func:`build_sid_table` (``genrec sid build``,
TIGER / GLASS runs) and :func:`build_session_sid_table` (multi-behavior runs) quantize what it returns, and
:func:`load_sid_table` reads any table they wrote.
"""

from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from genrec.config import SIDConfig
from genrec.data.multibehavior import SessionSplit
from genrec.data.schema import Dataset
from genrec.errors import ConfigError, DataError
from genrec.io import write_json_atomic
from genrec.nn.precision import torch_threads
from genrec.progress import stage
from genrec.sid.codebook import SIDTable, tensor_fingerprint
from genrec.sid.cooccurrence import cooccurrence_embeddings, cooccurrence_vectors, item_categories
from genrec.sid.embed import CFLoader, ItemEmbeddings, load_npy, text_embeddings

TABLE_FILE = "sid_table.parquet"
HEALTH_FILE = "health.json"
BUILD_FILE = "build.json"
EMBEDDINGS = ("text", "cf", "file", "cooccurrence")
QUANTIZERS = ("rqvae", "rqkmeans")
# The RQ-VAE is fit and encoded on this many torch threads whatever the process uses: its matmuls and loss sums
# split their reductions by thread count, so the weights (and the table) would depend on the machine's setting.
RQVAE_THREADS = 1


def item_embeddings(cfg: SIDConfig, dataset: Dataset, sessions: SessionSplit | None = None,
                    cf_loader: CFLoader | None = None) -> ItemEmbeddings:
    """Content or collaborative vectors for every item ``1..num_items`` of ``dataset``: the one place that reads
    ``sid.embeddings``.

    ``cooccurrence`` uses the training part of ``sessions`` (a multi-behavior session split) when given, else
    of the leave-one-out split; with ``sessions``, ``cf`` without ``source_run`` means the same (the GAMER
    recipes' spelling). ``cf_loader`` reads a retriever run's item table (``sid`` cannot open runs itself).
    """
    kind = cfg.embeddings
    if kind == "cf" and not cfg.source_run and sessions is not None:
        kind = "cooccurrence"
    if kind == "text":
        names = set(dataset.items.column_names)
        fields = [f for f in cfg.text_fields if f in names]
        if not fields:
            raise DataError(f"sid.embeddings=text: the items table has none of the text fields {cfg.text_fields} "
                            "(use sid.embeddings=cf with sid.source_run=RUN_DIR, or sid.embeddings=file)")
        emb = text_embeddings(dataset.items, cfg.cache_dir or None, fields)
    elif kind == "cf":
        if not cfg.source_run:
            raise ConfigError("sid.embeddings=cf needs sid.source_run=RUN_DIR (a trained retriever on this dataset)")
        if cf_loader is None:
            raise ConfigError("sid.embeddings=cf: no run loader was given to read sid.source_run "
                              "(pass cf_loader=genrec.train.run.run_cf_embeddings)")
        emb = cf_loader(cfg.source_run)
    elif kind == "file":
        emb = file_embeddings(Path(cfg.embeddings_file), dataset.num_items)
    elif kind == "cooccurrence":
        emb = (loo_cooccurrence_embeddings(dataset, cfg.seed) if sessions is None else
               cooccurrence_embeddings(sessions, dataset.num_items, categories=item_categories(dataset),
                                       seed=cfg.seed))
    else:
        raise ConfigError(f"sid.embeddings '{cfg.embeddings}' is not one of {list(EMBEDDINGS)}")
    keep = (emb.item_ids >= 1) & (emb.item_ids <= dataset.num_items)
    ids, vec = emb.item_ids[keep], emb.vectors[torch.from_numpy(keep)]
    missing = np.setdiff1d(np.arange(1, dataset.num_items + 1), ids)
    if missing.size:
        raise DataError(f"item embeddings lack {missing.size} item(s) of the dataset (e.g. {missing[:5].tolist()})")
    if not torch.isfinite(vec).all():
        raise DataError("item embeddings contain NaN or infinite values")
    return ItemEmbeddings(ids, vec, emb.source, emb.fingerprint)


def file_embeddings(path: Path, num_items: int) -> ItemEmbeddings:
    """A ``.npy`` array of shape (num_items, D): row ``i`` is item ``i + 1``."""
    if not path.is_file():
        raise DataError(f"sid.embeddings_file '{path}' not found (a .npy array of shape (num_items, D))")
    vec = load_npy(path)
    if vec.ndim != 2 or vec.shape[0] != num_items:
        raise DataError(f"{path}: expected shape ({num_items}, D) for items 1..{num_items}, got {vec.shape}")
    t = torch.from_numpy(np.ascontiguousarray(vec, dtype=np.float32))
    return ItemEmbeddings(np.arange(1, num_items + 1, dtype=np.int64), t, f"file:{path.name}", tensor_fingerprint(t))


def loo_cooccurrence_embeddings(dataset: Dataset, seed: int = 0) -> ItemEmbeddings:
    """Co-occurrence + category vectors (:func:`genrec.sid.cooccurrence.cooccurrence_vectors`) from the training
    part of the leave-one-out split only: every user's events except the last two (the validation and test
    targets), grouped by the dataset's sessions. For logs without item text where most items are rare (the
    Taobao sample), where a retriever's item table is close to random."""
    from genrec.data.sequences import UserSequences
    from genrec.data.splits import leave_one_out

    seqs = UserSequences.from_interactions(dataset.interactions)
    if seqs.session_ids is None:
        raise DataError("sid.embeddings=cooccurrence needs sessions: prepare the data with a --session-gap")
    split = leave_one_out(seqs)
    rel = np.arange(len(seqs.items)) - np.repeat(seqs.offsets[:-1], seqs.lengths)
    train = rel < np.repeat(split.train_end, seqs.lengths)
    return cooccurrence_vectors(seqs.items[train], seqs.session_ids[train], dataset.num_items,
                                categories=item_categories(dataset), seed=seed)


def fit_quantizer(cfg: SIDConfig, x: torch.Tensor) -> tuple[Any, dict[str, Any]]:
    """Fit the configured residual quantizer on ``x`` (N, D); returns it and a short training log."""
    if cfg.levels < 1 or cfg.codebook_size < 2:
        raise ConfigError("sid.levels must be >= 1 and sid.codebook_size >= 2")
    if cfg.first_codebook_size and cfg.quantizer != "rqkmeans":
        raise ConfigError("sid.first_codebook_size (a smaller level-1 codebook) needs sid.quantizer: rqkmeans")
    if cfg.quantizer == "rqvae":
        from genrec.sid.rqvae import RQVAE, RQVAEConfig

        torch.manual_seed(cfg.seed)
        q = RQVAE(RQVAEConfig(input_dim=int(x.shape[1]), num_levels=cfg.levels, codebook_size=cfg.codebook_size))
        hist = q.fit(x, epochs=cfg.rqvae_epochs, seed=cfg.seed, log_every=0, progress=True)
        last = hist[-1]
        return q, {"epochs": len(hist), "final_loss": last.loss, "final_recon_loss": last.recon_loss,
                   "final_epoch_usage": list(last.usage)}
    if cfg.quantizer == "rqkmeans":
        from genrec.sid.rqkmeans import RQKMeans, RQKMeansConfig

        q = RQKMeans(RQKMeansConfig(num_levels=cfg.levels, codebook_size=cfg.codebook_size, seed=cfg.seed,
                                    first_codebook_size=cfg.first_codebook_size))
        fits = q.fit(x)
        return q, {"levels": [f._asdict() for f in fits]}
    raise ConfigError(f"sid.quantizer '{cfg.quantizer}' is not one of {list(QUANTIZERS)}")


def build_sid_table(cfg: SIDConfig, dataset: Dataset, out_dir: str | Path | None = None,
                    cf_loader: CFLoader | None = None) -> SIDTable:
    """Embed, quantize and make unique; writes the SID folder when ``out_dir`` is given. The torch threads the
    quantizer ran on are recorded in the table's ``quantizer_params`` and ``build.json``."""
    t0 = time.time()
    with stage(f"sid build: item embeddings ({cfg.embeddings})"):
        emb = item_embeddings(cfg, dataset, cf_loader=cf_loader)
    t_embed = time.time() - t0
    n, dim = emb.vectors.shape
    # the RQ-VAE on RQVAE_THREADS: the same seed gives the same table on any machine; RQ-KMeans on the process's
    with torch_threads(RQVAE_THREADS if cfg.quantizer == "rqvae" else 0) as threads:
        with stage(f"sid build: {cfg.quantizer} on {n:,} x {dim} ({cfg.levels} levels x {cfg.codebook_size} codes)"):
            q, fit_log = fit_quantizer(cfg, emb.vectors)
        with stage("sid build: unique SIDs"):
            table = SIDTable.from_quantizer(q, emb.item_ids, emb.vectors)
    table.quantizer_params = {**table.quantizer_params, "threads": threads}
    fit_log["threads"] = threads
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        health = table.health()
        write_json_atomic(out / HEALTH_FILE, health.as_dict())
        write_json_atomic(out / BUILD_FILE, {
            "sid": asdict(cfg), "embeddings": {"source": emb.source, "fingerprint": emb.fingerprint,
                                               "dim": int(emb.vectors.shape[1]), "seconds": round(t_embed, 1)},
            "dataset": dataset.manifest.get("name", ""), "data_fingerprint": dataset.fingerprint,
            "quantizer_log": fit_log, "seconds": round(time.time() - t0, 1), "table": table.meta()})
        table.save(out / TABLE_FILE)  # last: its presence marks a complete folder
    return table


def build_session_sid_table(cfg: SIDConfig, dataset: Dataset, split: SessionSplit,
                            cf_loader: CFLoader | None = None) -> SIDTable:
    """The table of a multi-behavior run (GAMER and its baselines): ``sid.table`` when set, else RQ-KMeans over
    :func:`item_embeddings` with ``sessions=split`` (co-occurrence from the split's training sessions).

    Deterministic given ``sid.seed`` and the split, whatever the caller's thread count (built on one thread), so
    every variant and seed of a benchmark gets the same table; the embedding source is stamped into the table's
    ``quantizer_params``.
    """
    if cfg.table:
        return load_sid_table(cfg.table)
    if cfg.quantizer != "rqkmeans":
        raise ConfigError(f"sid.quantizer '{cfg.quantizer}': the GAMER trainer builds RQ-KMeans SIDs "
                          "(train an RQ-VAE table separately and pass sid.table)")
    # one thread whatever the caller's setting: GAMER and its TIGER baseline must decode one table, and the sparse
    # SVD and K-means round differently on two threads (74% of the Tmall items got other codes)
    with torch_threads(1):
        emb = item_embeddings(cfg, dataset, sessions=split, cf_loader=cf_loader)
        quant, _ = fit_quantizer(cfg, emb.vectors)
        table = SIDTable.from_quantizer(quant, emb.item_ids, emb.vectors)
    table.quantizer_params = {**table.quantizer_params, "embeddings": emb.source}
    return table


def load_sid_table(path: str | Path) -> SIDTable:
    """A SID folder (its ``sid_table.parquet``, else the first readable ``.json`` / ``.parquet`` table in it) or
    a table file (.parquet / .json)."""
    p = Path(path)
    if not p.is_dir():
        return SIDTable.load(p)
    if (p / TABLE_FILE).exists():
        return SIDTable.load(p / TABLE_FILE)
    for cand in sorted(p.glob("*.json")) + sorted(p.glob("*.parquet")):
        try:
            return SIDTable.load(cand)
        except DataError:
            continue
    raise DataError(f"{path}: no {TABLE_FILE} (or other SID table) here (build one with: genrec sid build)")


def sid_table_for(cfg: SIDConfig, dataset: Dataset, run_sid_dir: str | Path,
                  cf_loader: CFLoader | None = None) -> SIDTable:
    """The table a generator run uses: ``sid.table`` when set, else the run's own folder (built once)."""
    if cfg.table:
        table = load_sid_table(cfg.table)
    elif (Path(run_sid_dir) / TABLE_FILE).exists():
        return load_sid_table(run_sid_dir)
    else:
        return build_sid_table(cfg, dataset, run_sid_dir, cf_loader)
    Path(run_sid_dir).mkdir(parents=True, exist_ok=True)
    table.save(Path(run_sid_dir) / TABLE_FILE)  # the run folder keeps the exact table it was trained on
    return table
