"""Baselines for the multi-behavior protocol, behind the ``generate`` interface of :func:`evaluate_behaviors`.

GAMER is only interesting next to models that see the same queries, targets, candidates and metrics. Each
adapter here answers ``generate(items, behaviors, behavior, beam_size, k, candidates, constrained)`` with a
:class:`~genrec.sid.beam.BeamResult` whose ``items`` are a ranked list restricted to ``candidates``, so
:func:`genrec.eval.multibehavior.evaluate_behaviors` scores it exactly as it scores GAMER:

- :class:`RecencyBaseline`: the user's own history items, most recent first (no training). Purchases on the
  Taobao sample are mostly re-purchases of touched items, so this is the floor a learned model must clear.
- :class:`RetrieverAdapter`: a retriever (SASRec) trained on the item sequence of *all* behaviors; scores
  every item, keeps the candidates of the evaluated behavior, returns the top ``k``. It cannot condition on
  the behavior, so its list is the same for every behavior up to the candidate filter.
- :class:`TigerAdapter`: TIGER on the same SID table without behavior tokens; trie-constrained beam search
  over the candidates' SIDs (the same constraint GAMER decodes under).
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np
import torch

from genrec.data.sequences import SeqBatch, pad_windows
from genrec.errors import ConfigError, DataError
from genrec.models.base import Retriever
from genrec.sid.beam import BeamResult, beam_search
from genrec.sid.trie import SIDTrie


def ranked_result(items: torch.Tensor, scores: torch.Tensor | None = None) -> BeamResult:
    """(B, K) ranked item ids (-1 = empty slot) -> a BeamResult without SIDs (``sids`` is (B, K, 0))."""
    valid = items >= 0
    if scores is None:  # rank order as a descending score
        scores = -torch.arange(items.shape[1], dtype=torch.float32).expand(items.shape).clone()
    scores = torch.where(valid, scores.float(), torch.full_like(scores.float(), float("-inf")))
    return BeamResult(torch.zeros(*items.shape, 0, dtype=torch.long), scores, items.long(), valid)


def _check_k(k: int | None, beam_size: int, who: str) -> int:
    k = beam_size if k is None else k
    if not 1 <= k <= beam_size:
        raise ConfigError(f"{who}.generate: need 1 <= k <= beam_size, got k={k}, beam_size={beam_size}")
    return k


def _as_rows(items: Any) -> np.ndarray:
    """(B, L) right-padded item histories (0 = none), as a tensor or list of lists -> int64 array."""
    if isinstance(items, torch.Tensor):
        return items.detach().cpu().numpy().astype(np.int64)
    return pad_windows(items, None)[0]


class RecencyBaseline:
    """Rank the user's distinct history items by their last occurrence (most recent first).

    ``restrict_to_candidates`` drops history items outside the evaluated behavior's candidate set (so the
    list obeys the same constraint as GAMER's beams); slots beyond the user's distinct items stay empty
    (-1). ``max_len`` is the history window it reads, as for a trained model.
    """

    def __init__(self, max_len: int = 100, restrict_to_candidates: bool = True) -> None:
        if max_len < 1:
            raise ConfigError(f"recency baseline: data.max_len must be >= 1, got {max_len}")
        self.max_len = max_len
        self.restrict = restrict_to_candidates

    def ranked(self, items: Any, candidates: np.ndarray | None, k: int) -> np.ndarray:
        """(B, L) right-padded histories (oldest first) -> (B, k) most recent distinct items, -1 padded."""
        hist = _as_rows(items)
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
                 candidates: np.ndarray | None = None, constrained: bool = True) -> BeamResult:
        """The evaluate_behaviors interface; ``behaviors`` and ``behavior`` are not used (the list is the same)."""
        k = _check_k(k, beam_size, "recency")
        return ranked_result(torch.from_numpy(self.ranked(items, candidates, k)))


class RetrieverAdapter:
    """A retriever (SASRec, HSTU) trained on all behaviors' items, ranked over the behavior's candidates."""

    def __init__(self, model: Retriever) -> None:
        self.model = model
        self.max_len = model.max_len

    def batch(self, items: Any) -> SeqBatch:
        """(B, L) right-padded histories -> a SeqBatch of their last ``max_len`` items (no timestamps)."""
        mat, lengths = pad_windows([r[r > 0] for r in _as_rows(items)], self.max_len)  # (B, L), (B,)
        zeros = torch.zeros(mat.shape, dtype=torch.long)
        return SeqBatch(torch.from_numpy(mat), zeros, torch.from_numpy(lengths), torch.zeros(len(mat), dtype=torch.long))

    @torch.no_grad()
    def generate(self, items: Any, behaviors: Any, behavior: int, beam_size: int = 20, k: int | None = None,
                 candidates: np.ndarray | None = None, constrained: bool = True) -> BeamResult:
        """Top ``k`` candidates by the retriever's score (``behaviors``/``behavior`` unused: no behavior input)."""
        k = _check_k(k, beam_size, "retriever")
        was = self.model.training
        self.model.eval()
        try:
            dev = self.model.device
            states = self.model.encode(self.batch(items).to(dev))  # (B, D)
            scores = states @ self.model.item_table().T  # (B, N+1)
        finally:
            self.model.train(was)
        allowed = torch.zeros(scores.shape[1], dtype=torch.bool, device=scores.device)
        if candidates is None:
            allowed[1:] = True
        else:
            allowed[torch.as_tensor(np.asarray(candidates, np.int64), device=scores.device)] = True
        scores = scores.float().masked_fill(~allowed, float("-inf"))
        top, idx = scores.topk(min(k, int(allowed.sum())), dim=1)  # (B, k')
        idx = torch.where(torch.isfinite(top), idx, torch.full_like(idx, -1))
        if idx.shape[1] < k:
            pad = torch.full((idx.shape[0], k - idx.shape[1]), -1, dtype=idx.dtype, device=idx.device)
            idx, top = torch.cat([idx, pad], 1), torch.cat([top, pad.float()], 1)
        return ranked_result(idx.cpu(), top.cpu())


class TigerAdapter:
    """TIGER (no user token, no behavior tokens) decoding over the SIDs of the behavior's candidates."""

    def __init__(self, model: Any) -> None:
        if model.cfg.num_user_buckets:
            raise ConfigError("tiger baseline: set model.num_user_buckets=0 (the multi-behavior queries carry "
                              "no user id; GAMER has no user token either)")
        self.model = model
        self.max_len = model.max_len
        self._tries: dict[str, SIDTrie] = {}

    def trie(self, candidates: np.ndarray | None) -> SIDTrie:
        """Prefix trie over the candidates' SIDs (all items when None), cached per candidate set."""
        if candidates is None:
            return self.model.trie()
        ids = np.unique(np.asarray(candidates, np.int64))
        key = hashlib.sha1(ids.tobytes()).hexdigest()
        if key not in self._tries:
            sids = self.model.item_sids.cpu()
            if ids.size == 0 or ids.min() < 1 or ids.max() > self.model.num_items or (sids[ids] < 0).any():
                raise DataError("tiger baseline: candidates must be items with a SID")
            sizes = tuple(int(s) for s in self.model.code_valid.sum(1).tolist())
            self._tries[key] = SIDTrie.from_codes(sids[ids], torch.from_numpy(ids), sizes).to(
                self.model.item_sids.device)
        return self._tries[key]

    @torch.no_grad()
    def generate(self, items: Any, behaviors: Any, behavior: int, beam_size: int = 20, k: int | None = None,
                 candidates: np.ndarray | None = None, constrained: bool = True) -> BeamResult:
        """Beam search over the candidates' SIDs from the item history alone (``behaviors`` unused)."""
        k = _check_k(k, beam_size, "tiger")
        m = self.model
        was = m.training
        m.eval()
        try:
            hist = m.history_tensor([r[r > 0] for r in _as_rows(items)])  # (B, L) left-aligned
            enc_tokens, enc_mask = m.encoder_inputs(hist, None)
            step, state = m.step_fn(enc_tokens, enc_mask)
            res = beam_search(step, self.trie(candidates), hist.shape[0], beam_size, state, constrained)
        finally:
            m.train(was)
        return BeamResult(res.sids[:, :k], res.scores[:, :k], res.items[:, :k], res.valid[:, :k])
