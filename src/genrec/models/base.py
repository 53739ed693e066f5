"""The three model kinds as base classes. train/, eval/ and serve/ dispatch on ``kinds`` and on the capabilities a
class declares here, never on a model's name.

- :class:`Retriever`: user states scored against an item table, so full-catalogue ranking is one matmul.
- :class:`Ranker`: logits for (history, candidate) pairs (CTR-style).
- :class:`Generator`: next-token logits over semantic-id tokens; recommendations by constrained beam search.

A model subclasses one of them and is registered with ``@register(name)``, which sets ``registry_name``; the
base class sets ``kinds``. Capabilities are class attributes with their defaults here (a model may turn one
into a property when its config decides it), so a trainer reads ``model.needs_features``, never
``getattr(model, "needs_features", False)``.

Training losses follow one convention (the objectives of :mod:`genrec.objectives` implement it): a model
computes scores or logits, an objective turns them into ``(sum of per-position losses, number of positions)``,
and the training loop divides the sum by the global count, so one process and several data-parallel ones
take the same step. Models never import objectives; the trainers in ``train/`` combine the two.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, NamedTuple

import torch
from torch import nn

from genrec.data.sequences import SeqBatch
from genrec.errors import ConfigError

RETRIEVER = "retriever"
RANKER = "ranker"
GENERATOR = "generator"

# How a generator is trained and evaluated (``Generator.protocol``).
NEXT_ITEM = "next_item"  # every training prefix of a leave-one-out / temporal split predicts its next item
MULTI_BEHAVIOR = "multi_behavior"  # behavior-tagged sessions, per-behavior queries and candidates (GAMER)


class Model(nn.Module):
    """What every registered model has: its kinds, its registry name and whether it is trained at all."""

    kinds: ClassVar[tuple[str, ...]] = ()
    registry_name: ClassVar[str] = ""  # set by @register
    trainable: ClassVar[bool] = True  # False: a heuristic with nothing to learn, evaluated as it is

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device


class Retriever(Model):
    """Sequence retrievers (SASRec, HSTU, ...); trained by :mod:`genrec.objectives.next_item`."""

    kinds: ClassVar[tuple[str, ...]] = (RETRIEVER,)
    packs: ClassVar[bool] = False  # has packed_output: trains on packed tokens under train.packed

    def __init__(self, num_items: int, max_len: int) -> None:
        super().__init__()
        self.num_items = num_items
        self.max_len = max_len

    def sequence_output(self, batch: SeqBatch) -> torch.Tensor:
        """(B, L, D) user state after each position (L2-normalised for cosine scoring)."""
        raise NotImplementedError

    def packed_output(self, batch: SeqBatch) -> torch.Tensor:
        """(T, D) ``sequence_output`` at the batch's real positions (row-major, ``batch.mask``), computed without
        padding in the token-wise layers (``packs`` models only)."""
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


class ConfigCapability:
    """A capability that a config switch decides (``model.<key>``): the switch's value on a model, its default
    on the class, so a check that reads the class before building a model (a re-rank's) still gets a bool."""

    def __init__(self, key: str) -> None:
        self.key = key

    def __get__(self, model: Model | None, owner: type) -> bool:
        return bool(getattr(owner.Config if model is None else model.cfg, self.key))


class Ranker(Model):
    """CTR rankers: ``score(batch, candidates) -> (B, C)`` logits; trained with :func:`genrec.objectives.ctr_bce`.

    Capabilities:

    - ``needs_features``: ``score`` / ``score_candidates`` take ``features={name: (B, ...) tensor}`` (the
      impression side features of :func:`genrec.data.features.impression_features`); a
      :class:`ConfigCapability` when a config switch turns them on (the HSTU ranker's ``model.cross_features``);
    - ``accepts_pretrained``: ``model.pretrained`` may name an HPGR stage-1 artifact that initialises the model
      (what a two-stage re-rank over a retriever needs).
    """

    kinds: ClassVar[tuple[str, ...]] = (RANKER,)
    needs_features: ClassVar[bool] = False
    accepts_pretrained: ClassVar[bool] = False
    packs: ClassVar[bool] = False  # has packed_score: trains on packed tokens under train.packed

    def score(self, batch: SeqBatch, candidates: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        """(B, C) logits of candidates (B, C) (0 = padding) after the histories of ``batch``."""
        raise NotImplementedError

    def packed_score(self, batch: SeqBatch, candidates: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        """:meth:`score` computed without padding in the token-wise layers (``packs`` models only)."""
        raise NotImplementedError

    def score_candidates(self, batch: SeqBatch, candidates: torch.Tensor,
                         features: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        """What the serving artifact calls: :meth:`score` with the features only when the model needs them."""
        if self.needs_features:
            return self.score(batch, candidates, features=features)
        return self.score(batch, candidates)


@dataclass
class GeneratorBatch:
    """One training batch as a generator trainer sees it: item ids, before the model's own tokenisation.

    ``next_item`` protocol: ``items`` are the histories and ``targets`` the items to generate. ``multi_behavior``
    protocol: ``items`` and ``behaviors`` are whole interaction windows (every SID token after the first is a
    target) and ``segments``, when given, marks validation branches (0 = shared history, j = branch j).
    """

    items: torch.Tensor  # (B, L) item ids, oldest first, 0 = padding on the right
    users: torch.Tensor | None = None  # (B,) raw user ids
    targets: torch.Tensor | None = None  # (B,) next item ids
    behaviors: torch.Tensor | None = None  # (B, L) behavior ids
    segments: torch.Tensor | None = None  # (B, L) branch id of each interaction


class SIDLogits(NamedTuple):
    """Teacher-forced logits of a generator and the token each row must predict."""

    logits: torch.Tensor  # (..., V) one row of logits per target token
    targets: torch.Tensor  # (...) the token (or code) to predict
    mask: torch.Tensor | None  # (...) bool, the positions that are trained on; None = every position
    aux: torch.Tensor | None = None  # () a regulariser added to the loss sum as is (scaled by the model to its count)


class Generator(Model):
    """Generators over semantic ids (TIGER, GLASS, GAMER); trained with :func:`genrec.objectives.next_sid_loss`.

    A trainer builds a :class:`GeneratorBatch`, the model turns it into its own device inputs
    (:meth:`training_inputs`) and into teacher-forced logits (:meth:`sid_logits`); ``generate`` recommends.

    Capabilities:

    - ``protocol``: :data:`NEXT_ITEM` or :data:`MULTI_BEHAVIOR` (which trainer and evaluation the model runs in);
    - ``needs_item_vectors``: :meth:`set_item_vectors` must receive item content vectors after the SID table;
    - ``needs_behavior_levels``: ``set_behavior_levels`` must receive the dataset's behavior levels;
    - ``user_token``: the model reads a user id (so queries without one would all look like one user).
    """

    kinds: ClassVar[tuple[str, ...]] = (GENERATOR,)
    protocol: ClassVar[str] = NEXT_ITEM
    needs_item_vectors: bool = False
    needs_behavior_levels: ClassVar[bool] = False
    user_token: bool = False

    def set_sid_table(self, table: Any) -> None:
        """Install the item -> SID map (a :class:`~genrec.sid.codebook.SIDTable`) the model is trained on."""
        raise NotImplementedError

    def training_inputs(self, batch: GeneratorBatch) -> Any:
        """The device tensors :meth:`sid_logits` reads for one batch."""
        raise NotImplementedError

    def sid_logits(self, inputs: Any) -> SIDLogits:
        """Teacher-forced logits of every target SID token of ``inputs`` (from :meth:`training_inputs`)."""
        raise NotImplementedError

    def generate(self, *args: Any, **kwargs: Any) -> Any:
        """Top-k items per history by beam search, as a :class:`~genrec.sid.beam.BeamResult`."""
        raise NotImplementedError


def l2norm(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    return x / x.norm(dim=-1, keepdim=True).clamp(min=eps)


SIMILARITIES = ("cosine", "dot")  # a retriever's ``model.similarity``


def check_similarity(similarity: str, model: str) -> None:
    if similarity not in SIMILARITIES:
        raise ConfigError(f"model.similarity: '{similarity}' is not one of {', '.join(SIMILARITIES)} ({model})")


def scoring_space(x: torch.Tensor, similarity: str) -> torch.Tensor:
    """User states and item vectors as a retriever scores them: ``cosine`` L2-normalises both (HSTU's comparisons;
    the objective divides the logits by its temperature), ``dot`` keeps them raw (RecTools' SASRec, the
    eSASRec benchmark's SASRec+SS; temperature 1), so a vector's norm can carry popularity."""
    return l2norm(x) if similarity == "cosine" else x
