"""Next-SID cross-entropy, the training loss of every generator (TIGER, GLASS, GAMER).

The model gives teacher-forced logits and the token each row must predict (:class:`~genrec.models.base.SIDLogits`);
this turns them into ``(sum of per-token cross-entropies, number of target tokens)``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from genrec.models.base import SIDLogits


def next_sid_loss(out: SIDLogits) -> tuple[torch.Tensor, torch.Tensor | int]:
    """(sum, count) over the target tokens of ``out`` (every one, or those of ``out.mask``), plus ``out.aux``
    when the model adds a regulariser (already scaled to the count, so the trainer's mean carries it once)."""
    if out.mask is None:
        logits = out.logits.reshape(-1, out.logits.shape[-1])  # (N, V)
        loss = F.cross_entropy(logits.float(), out.targets.reshape(-1), reduction="sum")
        count: torch.Tensor | int = out.targets.numel()
    else:
        loss, count = F.cross_entropy(out.logits[out.mask].float(), out.targets[out.mask], reduction="sum"), out.mask.sum()
    return (loss if out.aux is None else loss + out.aux), count
