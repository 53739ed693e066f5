"""Losses over a ranker's candidate logits: pointwise CTR BCE and the re-ranker's listwise softmax.

Both return ``(sum of per-candidate or per-row losses, count)``, the convention of every objective; candidates
``0`` are padding and never count.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def ctr_bce(logits: torch.Tensor, candidates: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Binary cross-entropy of (B, C) logits against 0/1 labels: (sum over real candidates, their number)."""
    if candidates.dim() == 1:
        candidates = candidates[:, None]
    labels = labels.reshape(candidates.shape).to(torch.float32)
    w = (candidates > 0).to(logits.dtype)  # (B, C)
    per = F.binary_cross_entropy_with_logits(logits.float(), labels, reduction="none")
    return (per * w).sum(), w.sum()


def listwise_softmax(logits: torch.Tensor, candidates: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Softmax cross-entropy of the positive (column 0) against the other candidates of its row: (sum, rows).

    Padding candidates are pushed out of the softmax. Used by the two-stage re-ranker, whose job is to order one
    user's candidates, not to calibrate a probability.
    """
    logits = logits.float().masked_fill(candidates == 0, -torch.inf)  # (B, 1+n)
    target = torch.zeros(logits.shape[0], dtype=torch.long, device=logits.device)
    return F.cross_entropy(logits, target, reduction="sum"), logits.shape[0]
