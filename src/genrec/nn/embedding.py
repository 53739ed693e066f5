"""The item-id embedding table every ID-based model starts from, and its per-step dropout."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from genrec.errors import ConfigError


def item_embedding(num_items: int, d: int, std: float = 0.02) -> nn.Embedding:
    """(num_items + 1, d) table, row 0 the padding: truncated normal (``std``, 0.02 by default), row 0 zero.

    One function because every ID-based model (SASRec, HSTU, the HSTU ranker, HPGR's session encoder) initialises
    its table this way, and the draws must stay in this order (the default init at construction, then the
    truncated normal) so that a fixed seed keeps building the same weights.
    """
    emb = nn.Embedding(num_items + 1, d, padding_idx=0)
    nn.init.trunc_normal_(emb.weight, std=std)  # cut at +-2 (absolute)
    with torch.no_grad():
        emb.weight[0].zero_()
    return emb


class StepItemDropout:
    """Dropout on a whole item table, drawn once per training step (RecTools 0.13's item network, which the eSASRec
    benchmark pins): the inputs (:meth:`inputs`, called first in a forward) and every item the loss then scores
    (:meth:`scored`) read the same dropped table, so a dropped coordinate is dropped on both sides. Outside
    training, or at p = 0, both read the table as it is."""

    def __init__(self, p: float, model: str) -> None:
        if not 0.0 <= p < 1.0:
            raise ConfigError(f"model.item_dropout must be in [0, 1), got {p!r} ({model})")
        self.p = p
        self.table: torch.Tensor | None = None  # (I+1, D) of the current training step

    def inputs(self, emb: nn.Embedding, ids: torch.Tensor) -> torch.Tensor:
        if emb.training and self.p > 0:
            self.table = F.dropout(emb.weight, self.p, training=True)
            return self.table[ids]
        self.table = None
        return emb(ids)

    def scored(self, emb: nn.Embedding, ids: torch.Tensor) -> torch.Tensor:
        if emb.training and self.table is not None:
            return self.table[ids]
        return emb(ids)
