"""Candidate cross features as embeddings: the one reader MTGR, the HSTU ranker and HPGR share.

The features are :data:`genrec.data.features.CROSS_FEATURES` (user x item and user x category counts and gaps,
engagement rates, item popularity), each a bucket id that :func:`genrec.data.features.impression_features`
computes from events strictly before the impression. One table per feature; a missing feature reads as id 0
("no earlier data"), so a model scored without features (serving, a re-rank) sees every candidate as new.

Why functions over a plain ``nn.ModuleDict`` rather than a module class: the tables keep the state_dict keys
MTGR always had (``cross_emb.<feature>.weight``), and each model re-initialises them in its own order, so a
fixed seed keeps building the weights it built before these helpers existed.
"""

from __future__ import annotations

import torch
from torch import nn

from genrec.data.features import CROSS_FEATURES

Features = dict[str, torch.Tensor] | None


def cross_feature_tables(dim: int) -> nn.ModuleDict:
    """One ``(vocabulary, dim)`` table per cross feature, in ``CROSS_FEATURES`` order, default init."""
    return nn.ModuleDict({name: nn.Embedding(vocab, dim) for name, vocab in CROSS_FEATURES.items()})


def candidate_feature(features: Features, name: str, B: int, C: int, device: torch.device,
                      owner: str) -> torch.Tensor:
    """(B, C) int64 ids of one per-candidate feature; zeros when absent.

    A (B,) array is one candidate per row (C = 1); ``owner`` names the model in the error.
    """
    if not features or name not in features or features[name] is None:
        return torch.zeros(B, C, dtype=torch.long, device=device)
    t = torch.as_tensor(features[name], device=device).long()
    if t.dim() == 1:
        t = t[:, None]
    if t.dim() != 2 or t.shape[0] != B or t.shape[1] != C:
        raise ValueError(f"{owner}: feature '{name}' has shape {tuple(t.shape)}, expected ({B},) or ({B}, {C})")
    return t


def cross_feature_embeddings(tables: nn.ModuleDict, features: Features, B: int, C: int, device: torch.device,
                             owner: str) -> list[torch.Tensor]:
    """The (B, C, dim) embedding of every cross feature, in ``CROSS_FEATURES`` order.

    Ids are clipped into each table; ``features=None`` gives every feature's row 0 (what MTGR's
    ``cross_features=false`` ablation feeds its candidate MLP).
    """
    out = []
    for name, vocab in CROSS_FEATURES.items():
        ids = candidate_feature(features, name, B, C, device, owner).clamp(0, vocab - 1)  # (B, C)
        out.append(tables[name](ids))
    return out


def slice_candidates(features: Features, start: int, stop: int) -> Features:
    """The cross features of candidates ``start:stop`` (for scoring a long candidate list in chunks)."""
    if features is None:
        return None
    return {k: (v[:, start:stop] if k in CROSS_FEATURES and torch.as_tensor(v).dim() == 2 else v)
            for k, v in features.items()}


def per_candidate_rows(features: Features, C: int) -> Features:
    """(B, C) cross features -> (B*C, 1), row b*C + c = candidate c of row b (HPGR's one pass per pair)."""
    if features is None or C == 1:
        return features
    return {k: (torch.as_tensor(v).reshape(-1, 1) if k in CROSS_FEATURES and torch.as_tensor(v).dim() == 2 else v)
            for k, v in features.items()}
