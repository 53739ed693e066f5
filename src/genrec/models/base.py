"""Model kinds. A model says which kinds it implements; train/ and eval/ dispatch on them.

- Retriever: user states scored against an item table, so full-catalogue ranking is one matmul.
- Ranker: logits for (history, candidate) pairs (CTR-style).
- Generator: next-token logits over semantic-id tokens; recommendations by constrained beam search.
"""

from __future__ import annotations

import torch
from torch import nn

from genrec.data.sequences import SeqBatch

RETRIEVER = "retriever"
RANKER = "ranker"
GENERATOR = "generator"


class Retriever(nn.Module):
    """Base class of sequence retrievers (SASRec, HSTU, ...)."""

    kinds: tuple[str, ...] = (RETRIEVER,)
    registry_name: str = ""

    def __init__(self, num_items: int, max_len: int) -> None:
        super().__init__()
        self.num_items = num_items
        self.max_len = max_len

    def sequence_output(self, batch: SeqBatch) -> torch.Tensor:
        """(B, L, D) user state after each position (L2-normalised for cosine scoring)."""
        raise NotImplementedError

    def encode(self, batch: SeqBatch) -> torch.Tensor:
        """(B, D) user state after the last real position of each history."""
        out = self.sequence_output(batch)  # (B, L, D)
        idx = (batch.lengths - 1).clamp(min=0)
        return out[torch.arange(out.shape[0], device=out.device), idx]

    def item_vectors(self, ids: torch.Tensor) -> torch.Tensor:
        """(..., D) scoring vectors of the given item ids."""
        raise NotImplementedError

    def item_table(self) -> torch.Tensor:
        """(N+1, D) scoring vectors of every item; row 0 is padding and must never be recommended."""
        return self.item_vectors(torch.arange(self.num_items + 1, device=self.device))

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device


def l2norm(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    return x / x.norm(dim=-1, keepdim=True).clamp(min=eps)
