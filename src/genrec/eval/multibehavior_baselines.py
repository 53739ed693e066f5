"""Baselines for the multi-behavior protocol, behind the ``generate`` interface of :func:`evaluate_behaviors`.

GAMER is only interesting next to models that see the same queries, targets, candidates and metrics. Each
adapter here answers ``generate(items, behaviors, behavior, beam_size, k, candidates, constrained)`` with a
:class:`~genrec.sid.beam.BeamResult` whose ``items`` are a ranked list restricted to ``candidates``, so
:func:`genrec.eval.multibehavior.evaluate_behaviors` scores it exactly as it scores GAMER.
:func:`behavior_ranker` picks the one a model needs by its kind and protocol:

- a multi-behavior model (GAMER, or the registered ``recency`` heuristic: the user's own history items, most
  recent first) answers the interface itself;
- :class:`RetrieverAdapter`: a retriever (SASRec) trained on the item sequence of *all* behaviors; scores
  every item, keeps the candidates of the evaluated behavior, returns the top ``k``. It cannot condition on
  the behavior, so its list is the same for every behavior up to the candidate filter.
- :class:`GeneratorAdapter`: a next-item generator (TIGER) on the same SID table without behavior tokens;
  trie-constrained beam search over the candidates' SIDs (the same constraint GAMER decodes under).
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np
import torch

from genrec.data.sequences import SeqBatch, pad_windows
from genrec.errors import ConfigError, DataError
from genrec.models.base import GENERATOR, MULTI_BEHAVIOR, RETRIEVER, Generator, Model, Retriever
from genrec.models.recency import Recency, as_rows, check_k, ranked_result
from genrec.sid.beam import BeamResult, beam_search, with_known_items
from genrec.sid.trie import SIDTrie


class RecencyBaseline(Recency):
    """The registered ``recency`` heuristic built from its two settings (``max_len``, ``restrict_to_candidates``)."""

    def __init__(self, max_len: int = 100, restrict_to_candidates: bool = True) -> None:
        super().__init__(Recency.Config(restrict_to_candidates), 0, max_len)


class RetrieverAdapter:
    """A retriever (SASRec, HSTU) trained on all behaviors' items, ranked over the behavior's candidates."""

    def __init__(self, model: Retriever) -> None:
        self.model = model
        self.max_len = model.max_len

    def batch(self, items: Any) -> SeqBatch:
        """(B, L) right-padded histories -> a SeqBatch of their last ``max_len`` items (no timestamps)."""
        mat, lengths = pad_windows([r[r > 0] for r in as_rows(items)], self.max_len)  # (B, L), (B,)
        zeros = torch.zeros(mat.shape, dtype=torch.long)
        return SeqBatch(torch.from_numpy(mat), zeros, torch.from_numpy(lengths), torch.zeros(len(mat), dtype=torch.long))

    @torch.no_grad()
    def generate(self, items: Any, behaviors: Any, behavior: int, beam_size: int = 20, k: int | None = None,
                 candidates: np.ndarray | None = None, constrained: bool = True, known: Any = None) -> BeamResult:
        """Top ``k`` candidates by the retriever's score (``behaviors``/``behavior`` unused: no behavior input;
        ``known`` unused: every candidate is scored exactly already)."""
        k = check_k(k, beam_size, "retriever")
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


class GeneratorAdapter:
    """A next-item generator (TIGER: no user token, no behavior tokens) decoding over the candidates' SIDs."""

    def __init__(self, model: Generator) -> None:
        if model.user_token:
            raise ConfigError(f"{model.registry_name} baseline: set model.num_user_buckets=0 (the multi-behavior "
                              "queries carry no user id; GAMER has no user token either)")
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
                raise DataError(f"{self.model.registry_name} baseline: candidates must be items with a SID")
            sizes = tuple(int(s) for s in self.model.code_valid.sum(1).tolist())
            self._tries[key] = SIDTrie.from_codes(sids[ids], torch.from_numpy(ids), sizes).to(
                self.model.item_sids.device)
        return self._tries[key]

    @torch.no_grad()
    def generate(self, items: Any, behaviors: Any, behavior: int, beam_size: int = 20, k: int | None = None,
                 candidates: np.ndarray | None = None, constrained: bool = True,
                 known: torch.Tensor | None = None) -> BeamResult:
        """Beam search over the candidates' SIDs from the item history alone (``behaviors`` unused); ``known``
        items are scored exactly and merged in, as for GAMER."""
        m = self.model
        k = check_k(k, beam_size, m.registry_name)
        was = m.training
        m.eval()
        try:
            hist = m.history_tensor([r[r > 0] for r in as_rows(items)])  # (B, L) left-aligned
            step, state = m.step_fn(*m.encoder_inputs(hist, None))
            res = beam_search(step, self.trie(candidates), hist.shape[0], beam_size, state, constrained,
                              m.reorder_state)
            if known is not None:
                return with_known_items(res, known, m.item_sids, lambda: m.step_fn(*m.encoder_inputs(hist, None)),
                                        k, candidates, m.reorder_state)
        finally:
            m.train(was)
        return res.top(k)



def behavior_ranker(model: Model) -> Any:
    """What :func:`~genrec.eval.multibehavior.evaluate_behaviors` calls for ``model``: a multi-behavior model itself,
    a retriever or next-item generator through its adapter."""
    if GENERATOR in model.kinds and model.protocol == MULTI_BEHAVIOR:
        return model
    if RETRIEVER in model.kinds:
        return RetrieverAdapter(model)  # type: ignore[arg-type]
    if GENERATOR in model.kinds:
        return GeneratorAdapter(model)  # type: ignore[arg-type]
    raise ConfigError(f"model '{model.registry_name}' is not a multi-behavior baseline "
                      "(a retriever, a next-item generator or a multi-behavior generator)")
