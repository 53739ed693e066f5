"""``recency``: the user's own history items, most recent first. Not learned (``trainable = False``).

The floor a multi-behavior model must clear: purchases on the Taobao sample are mostly re-purchases of touched
items. It answers the multi-behavior ``generate`` interface of :func:`genrec.eval.multibehavior.evaluate_behaviors`
(the same queries, targets, candidates and metrics as GAMER) with ranked lists as a
:class:`~genrec.sid.beam.BeamResult` without SIDs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from genrec.data.sequences import pad_windows
from genrec.errors import ConfigError
from genrec.models.base import MULTI_BEHAVIOR, Generator
from genrec.models.registry import register
from genrec.sid.beam import BeamResult, list_length


def ranked_result(items: torch.Tensor, scores: torch.Tensor | None = None) -> BeamResult:
    """(B, K) ranked item ids (-1 = empty slot) -> a BeamResult without SIDs (``sids`` is (B, K, 0))."""
    valid = items >= 0
    if scores is None:  # rank order as a descending score
        scores = -torch.arange(items.shape[1], dtype=torch.float32).expand(items.shape).clone()
    scores = torch.where(valid, scores.float(), torch.full_like(scores.float(), float("-inf")))
    return BeamResult(torch.zeros(*items.shape, 0, dtype=torch.long), scores, items.long(), valid)


def check_k(k: int | None, beam_size: int, who: str) -> int:
    """``k`` (default: the beam size) checked to lie in ``1..beam_size``."""
    return list_length(k, beam_size, f"{who}.generate")


def as_rows(items: Any) -> np.ndarray:
    """(B, L) right-padded item histories (0 = none), as a tensor or list of lists -> int64 array."""
    if isinstance(items, torch.Tensor):
        return items.detach().cpu().numpy().astype(np.int64)
    return pad_windows(items, None)[0]


@register("recency")
class Recency(Generator):
    """Rank the user's distinct history items by their last occurrence (most recent first).

    ``restrict_to_candidates`` drops history items outside the evaluated behavior's candidate set (so the list
    obeys the same constraint as GAMER's beams); slots beyond the user's distinct items stay empty (-1).
    ``max_len`` is the history window it reads, as for a trained model.
    """

    trainable = False
    protocol = MULTI_BEHAVIOR

    @dataclass
    class Config:
        restrict_to_candidates: bool = True

    def __init__(self, cfg: Config, num_items: int, max_len: int = 100) -> None:
        super().__init__()
        if max_len < 1:
            raise ConfigError(f"recency baseline: data.max_len must be >= 1, got {max_len}")
        self.cfg, self.num_items, self.max_len = cfg, num_items, max_len
        self.restrict = cfg.restrict_to_candidates

    @property
    def ranked_by(self) -> str:
        """How the lists are ranked, for the results record's protocol."""
        return "most recent distinct history items" + (", filtered to the candidates" if self.restrict else "")

    def ranked(self, items: Any, candidates: np.ndarray | None, k: int) -> np.ndarray:
        """(B, L) right-padded histories (oldest first) -> (B, k) most recent distinct items, -1 padded."""
        hist = as_rows(items)
        cand = None if candidates is None or not self.restrict else np.asarray(candidates, np.int64)
        win, lens = pad_windows([r[r > 0] for r in hist], self.max_len)  # (B, L) the last max_len items
        out = np.full((hist.shape[0], k), -1, np.int64)
        for i in range(hist.shape[0]):
            row = win[i, :lens[i]][::-1]  # newest first
            _, first = np.unique(row, return_index=True)  # index of each item's most recent occurrence
            seen = row[np.sort(first)]
            if cand is not None:
                seen = seen[np.isin(seen, cand)]
            out[i, :min(k, len(seen))] = seen[:k]
        return out

    def generate(self, items: Any, behaviors: Any, behavior: int, beam_size: int = 20, k: int | None = None,
                 candidates: np.ndarray | None = None, constrained: bool = True, known: Any = None) -> BeamResult:
        """The evaluate_behaviors interface; ``behaviors`` and ``behavior`` are not used (the list is the same),
        nor ``known`` (the list is the user's own items already)."""
        k = check_k(k, beam_size, self.registry_name)
        return ranked_result(torch.from_numpy(self.ranked(items, candidates, k)))
