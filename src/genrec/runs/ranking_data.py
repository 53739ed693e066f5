"""The ranking (CTR) track's data: impressions and labels derived from the log by ``ranking:``, their global
temporal split, a model's side features, and batches of them (spec §6.1, Track C).

Impressions come from ``ranking.labels`` (ratings: label = rating >= threshold; behaviors: a page view is
positive when the user favs/carts/buys the item later in the same day or session, or, with
``ranking.window: horizon``, a fav/cart is positive when the user buys the item within ``ranking.horizon_hours``,
impressions whose horizon passes the log's end dropped). The split is global and
temporal: test = the last ``ranking.test_frac`` of impressions by time, validation = the last
``ranking.valid_frac`` of the training period. Every sample's history is its user's events strictly before
the impression. The ranker trainer trains on this and :func:`genrec.runs.open.open_run` rebuilds it to evaluate
a finished ranker run, so both read the same impressions.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from genrec.config import RankingConfig, RunConfig
from genrec.data.impressions import (
    ImpressionSamples,
    ImpressionSplit,
    impressions_from_behaviors,
    impressions_from_ratings,
    impressions_within_horizon,
    make_impression_batch,
    observed_end,
    temporal_split,
)
from genrec.data.schema import Dataset, Interactions
from genrec.data.sequences import SeqBatch
from genrec.errors import ConfigError, DataError

LABEL_MODES = ("auto", "ratings", "behaviors")
SAMPLE_SEED = 20_260_101  # ranking.train_sample / eval_sample: fixed, so every run draws the same impressions


@dataclass
class RankingData:
    """Impressions of one dataset with their temporal split (indices into ``imps``)."""

    inter: Interactions
    imps: ImpressionSamples
    split: ImpressionSplit
    labels: str  # the resolved label mode: ratings | behaviors

    def part(self, which: str) -> np.ndarray:
        """Sample indices of ``train``, ``valid`` or ``test``."""
        if which not in ("train", "valid", "test"):
            raise ConfigError(f"unknown impression split '{which}' (train, valid or test)")
        return getattr(self.split, which)

    @property
    def t_test(self) -> int:
        return int(self.split.params["t_test"])

    @property
    def t_valid(self) -> int:
        return int(self.split.params["t_valid"])

    def manifest(self) -> dict[str, Any]:
        """The derivation rule and split parameters, as stamped into run records and results."""
        return {"labels": dict(self.imps.rule), "split": dict(self.split.params)}


def resolve_label_mode(cfg: RunConfig, dataset: Dataset) -> str:
    """``auto`` -> behaviors when the log carries behavior levels, else ratings."""
    mode = cfg.ranking.labels
    if mode not in LABEL_MODES:
        raise ConfigError(f"ranking.labels must be one of {', '.join(LABEL_MODES)}, got {mode!r}")
    inter = dataset.interactions
    if mode == "auto":
        if inter.behavior is not None and dataset.behavior_names:
            return "behaviors"
        if inter.rating is not None:
            return "ratings"
        raise DataError(f"dataset '{dataset.manifest.get('name', '')}' has neither behaviors nor ratings, so no "
                        "CTR labels can be derived; prepare a log with a rating or behavior column")
    return mode


def build_ranking_data(cfg: RunConfig, dataset: Dataset) -> RankingData:
    """Impressions and labels by ``cfg.ranking``, then the global temporal split (valid/test fractions)."""
    rc = cfg.ranking
    inter = dataset.interactions
    mode = resolve_label_mode(cfg, dataset)
    if mode == "ratings":
        imps = impressions_from_ratings(inter, threshold=rc.rating_threshold, min_history=rc.min_history)
    elif inter.behavior is None or not dataset.behavior_names:
        raise DataError("ranking.labels=behaviors but the dataset has no behavior column; "
                        "use ranking.labels=ratings or prepare a multi-behavior log")
    elif rc.window == "horizon":
        imps = _horizon_impressions(rc, dataset)
    else:
        if rc.impression_behaviors is not None or rc.horizon_hours is not None:
            raise ConfigError("ranking.impression_behaviors and ranking.horizon_hours are for ranking.window: "
                              f"horizon, not window: {rc.window}")
        imps = impressions_from_behaviors(  # impressions are page views; days in the logs' UTC+8
            inter, dataset.behavior_names,
            positives=tuple(rc.positive_behaviors),
            window=rc.window,
            session_gap=rc.session_gap,
            min_history=rc.min_history,
        )
    if len(imps) == 0:
        raise DataError(f"no impressions with at least ranking.min_history={rc.min_history} earlier events")
    split = temporal_split(imps, valid_frac=rc.valid_frac, test_frac=rc.test_frac)
    if imps.rule.get("window") == "horizon":
        split.params["label_windows_crossing_a_cut"] = _crossings(imps, split)
    _subsample(split, {"train": rc.train_sample, "valid": rc.eval_sample, "test": rc.eval_sample})
    for which in ("train", "valid", "test"):
        y = imps.label[getattr(split, which)]
        if y.size == 0 or y.min() == y.max():
            raise DataError(f"the {which} impressions ({y.size}) hold a single label class, so AUC is undefined; "
                            "change ranking.valid_frac / ranking.test_frac or the label rule")
    return RankingData(inter, imps, split, mode)


def _subsample(split: ImpressionSplit, sizes: dict[str, int]) -> None:
    """Keep a seeded sample of ``sizes[part]`` impressions of each part (0 or more than it holds = all), in time
    order. Each part draws from its own fixed stream, so every model, seed and ``train_sample`` scores the same
    validation and test impressions; the sizes kept and held are stamped into the split's parameters."""
    for i, (which, n) in enumerate(sizes.items()):
        idx = getattr(split, which)
        if n and n < len(idx):
            keep = np.sort(np.random.default_rng([SAMPLE_SEED, i]).choice(len(idx), size=n, replace=False))
            setattr(split, which, idx[keep])
            split.params[f"{which}_sample"] = {"kept": int(n), "of": int(len(idx)), "seed": SAMPLE_SEED}


def _horizon_impressions(rc: RankingConfig, dataset: Dataset) -> ImpressionSamples:
    """``ranking.window: horizon``: fav/cart impressions labelled by a buy within ``ranking.horizon_hours``."""
    names = list(dataset.behavior_names or [])
    hours = 72.0 if rc.horizon_hours is None else rc.horizon_hours
    if isinstance(hours, bool) or not isinstance(hours, (int, float)) or not hours > 0:
        raise ConfigError(f"ranking.horizon_hours must be a positive number of hours, got {hours!r}")
    impressions = rc.impression_behaviors
    if impressions is None:
        impressions = [b for b in names if b not in rc.positive_behaviors]
    end, end_source = observed_end(dataset.manifest, dataset.interactions)
    imps = impressions_within_horizon(dataset.interactions, names, impressions=tuple(impressions),
                                      positives=tuple(rc.positive_behaviors), horizon=int(round(hours * 3600)),
                                      log_end=end, min_history=rc.min_history)
    imps.rule.update(horizon_hours=hours, log_end_from=end_source)
    return imps


def _crossings(imps: ImpressionSamples, split: ImpressionSplit) -> dict[str, int]:
    """How many training (validation) labels read a buy window reaching past ``t_valid`` (``t_test``): the
    split cuts impression times, so a late training impression's label may look into the next part's period."""
    horizon = int(imps.rule["horizon_seconds"])
    ends = imps.timestamp + horizon  # (S,) last second each label reads
    return {"train_past_t_valid": int((ends[split.train] >= split.params["t_valid"]).sum()),
            "valid_past_t_test": int((ends[split.valid] >= split.params["t_test"]).sum())}


def impression_features(dataset: Dataset, data: RankingData) -> dict[str, np.ndarray]:
    """The side features of a ``needs_features`` model (cut off at the test period), one row per impression."""
    from genrec.data.features import impression_features as features  # only feature-hungry models need it

    imps = data.imps
    feats = features(dataset, imps, data.t_test)
    for name, arr in feats.items():
        if np.shape(arr)[0] != len(imps):
            raise DataError(f"impression feature '{name}' has {np.shape(arr)[0]} rows for {len(imps)} impressions")
    return {name: np.asarray(arr) for name, arr in feats.items()}


def impression_batch(data: RankingData, idx: np.ndarray, max_len: int, features: dict[str, np.ndarray] | None,
                     device: torch.device | str) -> tuple[SeqBatch, torch.Tensor, torch.Tensor, dict[str, Any]]:
    """Samples ``idx`` -> (history batch, candidates (B, 1), labels (B,), model kwargs), on ``device``."""
    b, cands, labels = make_impression_batch(data.inter, data.imps, idx, max_len)
    kw: dict[str, Any] = {}
    if features is not None:
        kw["features"] = {k: torch.from_numpy(np.ascontiguousarray(v[idx])).to(device) for k, v in features.items()}
    return b.to(device), cands.to(device), labels.to(device), kw
