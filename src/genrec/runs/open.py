"""Open a trained run folder of any kind: its config, record, dataset, model with weights, and evaluation data.

:func:`open_run` is the one way back into a run folder for evaluation (``genrec evaluate``), recommendation and
export. The model is rebuilt from the recorded config, given what its kind keeps beside the weights (a
generator's SID table from ``sid/``, a multi-behavior generator's ``sids.json`` and behavior levels), loaded
with the best (or latest) weights and put in eval mode. The data a kind is evaluated on is built on first use
(:attr:`LoadedRun.data`), so serving a run never pays for impressions or splits it does not read.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from genrec.config import RunConfig
from genrec.data.multibehavior import BehaviorLevels, session_split
from genrec.data.schema import Dataset
from genrec.data.sequences import UserSequences
from genrec.data.splits import split_from_config
from genrec.errors import CheckpointError
from genrec.models.base import GENERATOR, RANKER
from genrec.models.pretrained import fill_stage1
from genrec.models.registry import build_model
from genrec.runs.checkpoint import latest_checkpoint, load_weights, read_state, trained_weights
from genrec.runs.kinds import MULTI_BEHAVIOR, config_kind
from genrec.runs.layout import SESSION_SID_FILE, SID_DIR, checkpoint_root
from genrec.runs.ranking_data import build_ranking_data, impression_features
from genrec.runs.record import read_record, record_config, run_dataset
from genrec.sid.codebook import SIDTable


@dataclass
class LoadedRun:
    """A run folder opened read-only: nothing is written back to it."""

    cfg: RunConfig
    record: dict[str, Any]  # config.json
    model: nn.Module  # weights loaded, eval mode
    dataset: Dataset
    kind: str  # retriever | ranker | generator | multi_behavior (genrec.runs.kinds)
    run_dir: Path
    state: dict[str, Any] = field(default_factory=dict)  # loop state of the latest checkpoint ({} when none)
    sids: SIDTable | None = None  # generators: the table the run was trained with
    levels: BehaviorLevels | None = None  # multi-behavior generators: the behavior levels

    @cached_property
    def seqs(self) -> UserSequences:
        """Every user's events, oldest first (histories for recommendation and the next-item splits)."""
        return UserSequences.from_interactions(self.dataset.interactions)

    @cached_property
    def data(self) -> Any:
        """What the kind is evaluated on: the recipe's split of :attr:`seqs` (retrievers, generators), the
        impressions and their split (:class:`~genrec.runs.ranking_data.RankingData`, rankers) or the session
        split (:class:`~genrec.data.multibehavior.SessionSplit`, multi-behavior generators)."""
        if self.kind == RANKER:
            return build_ranking_data(self.cfg, self.dataset)
        if self.kind == MULTI_BEHAVIOR:
            assert self.levels is not None
            return session_split(self.dataset.interactions, self.levels, self.cfg.multibehavior.session_gap)
        return split_from_config(self.seqs, self.cfg.data)

    @cached_property
    def features(self) -> dict[str, np.ndarray] | None:
        """A ranker's impression side features when its model asks for them (``needs_features``), else None."""
        if self.kind != RANKER or not self.model.needs_features:
            return None
        return impression_features(self.dataset, self.data)


def open_run(run_dir: str | Path, weights: str = "best", device: str = "cpu") -> LoadedRun:
    """Reopen a trained run folder of any kind with its best (``weights="best"``, falling back to the latest
    checkpoint) or latest (any other value) weights on ``device``."""
    root = Path(run_dir)
    record = read_record(root)
    cfg = record_config(record, root)
    dataset = run_dataset(record, cfg, root)
    kind = config_kind(cfg)
    sids, levels = None, None
    cfg.model = fill_stage1(cfg.model)  # a run recorded before model.stage1 reads it from its artifact, once
    params = dict(cfg.model)
    if kind == MULTI_BEHAVIOR:
        levels = BehaviorLevels.from_manifest(dataset.manifest, cfg.multibehavior.behavior_order or None)
        params.setdefault("num_behaviors", levels.num_behaviors)
    model = build_model(params, dataset.num_items, cfg.data.max_len)
    if kind in (GENERATOR, MULTI_BEHAVIOR):
        sids = _run_sids(root, record, kind)
        model.set_sid_table(sids)
    if levels is not None:
        model.set_behavior_levels(levels.array())
    model = model.to(device)
    load_weights(model, trained_weights(root, weights))
    model.eval()
    ck = latest_checkpoint(checkpoint_root(root))
    state = read_state(ck) if ck is not None else {}
    return LoadedRun(cfg, record, model, dataset, kind, root, state, sids, levels)


def _run_sids(root: Path, record: dict[str, Any], kind: str) -> SIDTable:
    """The SID table a generator run was trained with, checked against the record's fingerprint."""
    from genrec.sid.build import load_sid_table

    # a multi-behavior run keeps its table in one file; so does the TIGER baseline trained on GAMER's split
    session_file = kind == MULTI_BEHAVIOR or (not (root / SID_DIR).exists() and (root / SESSION_SID_FILE).exists())
    sids = SIDTable.load(root / SESSION_SID_FILE) if session_file else load_sid_table(root / SID_DIR)
    if record.get("sid_fingerprint") and sids.fingerprint != record["sid_fingerprint"]:
        raise CheckpointError(f"{root}: its SID table does not match the one the run was trained with")
    return sids
