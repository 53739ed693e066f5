"""The item-id embedding table every ID-based model starts from."""

from __future__ import annotations

import torch
from torch import nn


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
