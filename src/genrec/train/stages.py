"""Multi-stage runs: HPGR's structure-aware pre-training, then preference-aware fine-tuning, from one recipe.

``stages: [pretrain, finetune]`` runs both; either one alone works too. Folder layout:

- ``OUT/pretrain/``: the stage-1 artifact of ``genrec.train.pretrain`` (skipped when a complete one with the
  same settings, cut-off and dataset is already there, so a re-run resumes after it);
- ``OUT/finetune/``: the ranker run of ``genrec.train.ranker.train_ranker_run`` with
  ``model.pretrained = OUT/pretrain`` (``OUT`` itself when ``finetune`` runs alone, with the recipe's own
  ``model.pretrained``); its trainer records the artifact's shape in ``model.stage1`` and initialises the fresh
  model from it, so the fine-tuned run (and its export) no longer needs ``OUT/pretrain``;
- ``OUT/stages.json``: both stages' summaries.

Leakage (spec §5.3(b), §6.3): pre-training sees only events strictly before the ranking split's training
cut-off, the start of the validation period ``t_valid`` of the impression temporal split. Validation and test
impressions, and every event at or after ``t_valid``, never reach stage 1.

Retrievers (``hstu``, ``sasrec`` with ``model.pretrained``, spec §6.1 track R) run the same two stages:
stage 1's cut-off is the retrieval :class:`Split` itself, so each user keeps only its training events
(leave-one-out: everything before the validation item; temporal: everything before ``t_valid``), and
fine-tuning is the normal retriever run in ``OUT/finetune``.

Stage 1 runs in the shared training loop with the ``train:`` section's loop knobs: ``train.max_steps`` stops it
(no artifact yet; the next run resumes it exactly from ``OUT/pretrain``'s checkpoints, then fine-tunes), and
``train.checkpoint_every`` checkpoints it mid-epoch. Stage 1 is seeded with
``train.seed`` unless ``pretrain.seed`` is set, so a multi-seed benchmark gets one artifact per seed.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

from genrec.config import STAGES, RunConfig
from genrec.data.loading import load_data
from genrec.data.schema import Dataset
from genrec.data.sequences import UserSequences
from genrec.data.splits import Split, split_from_config
from genrec.errors import ConfigError
from genrec.io import write_json_atomic
from genrec.models.base import RETRIEVER
from genrec.models.pretrained import FORMAT, META_FILE
from genrec.models.registry import check_model_config, get_model_class
from genrec.train.base import resolve_device
from genrec.train.pretrain import PretrainConfig, cutoff_record, parse_pretrain_config, pretrain_run
from genrec.train.trainer import train_retriever_run

PRETRAIN_DIR = "pretrain"
FINETUNE_DIR = "finetune"
STAGES_FILE = "stages.json"
_NOT_COMPARED = ("device", "probe_rows")  # settings that do not change what stage 1 learns from


def training_cutoff(cfg: RunConfig, dataset: Dataset) -> int:
    """``t_valid`` of the ranking split ``cfg.ranking`` builds on ``dataset``: stage 1 keeps ``t < t_valid``."""
    from genrec.train.ranker import build_ranking_data

    return int(build_ranking_data(cfg, dataset).split.params["t_valid"])


def retrieval_cutoff(cfg: RunConfig, dataset: Dataset) -> Split:
    """The retrieval split of ``cfg.data`` on ``dataset``: stage 1 keeps each row's ``[0, train_end)``."""
    return split_from_config(UserSequences.from_interactions(dataset.interactions), cfg.data)


def is_retriever(cfg: RunConfig) -> bool:
    """Whether ``cfg.model`` is a retriever (stage 2 = ``train_run``) rather than a ranker."""
    return RETRIEVER in get_model_class(cfg.model["name"]).kinds


def pretrain_settings(cfg: RunConfig) -> PretrainConfig:
    """The ``pretrain:`` section as a PretrainConfig; device and threads default to the ``train:`` ones.

    For retrievers the seed defaults to ``train.seed`` (one stage-1 artifact per benchmark seed); rankers keep
    the section's own seed so their existing artifacts stay reusable.
    """
    pcfg = parse_pretrain_config(cfg.pretrain)
    if "device" not in cfg.pretrain:
        pcfg.device = str(resolve_device(cfg.train.device))
    if "seed" not in cfg.pretrain and is_retriever(cfg):
        pcfg.seed = cfg.train.seed
    return pcfg


def _comparable(config: dict[str, Any]) -> dict[str, Any]:
    plain = json.loads(json.dumps(config, default=str))  # tuples -> lists, as pretrain.json stores them
    return {k: v for k, v in plain.items() if k not in _NOT_COMPARED}


def existing_pretrain(art: Path, pcfg: PretrainConfig, cutoff: int | Split, dataset: Dataset
                      ) -> dict[str, Any] | None:
    """The metadata of a complete artifact at ``art`` written with these settings, or None when there is none.

    An artifact with other settings is an error rather than silently reused or overwritten.
    """
    path = art / META_FILE
    if not path.exists():  # artifacts are renamed into place, so a folder with its JSON is complete
        return None
    meta = json.loads(path.read_text())
    want = {"format": FORMAT, "config": _comparable(asdict(pcfg)), "cutoff": json.loads(json.dumps(cutoff_record(cutoff), default=str)),
            "data_fingerprint": dataset.fingerprint}
    have = {**{k: meta.get(k) for k in want}, "config": _comparable(meta.get("config") or {})}
    diff = [k for k in want if have[k] != want[k]]
    if diff:
        raise ConfigError(f"{art}: an existing pre-training artifact differs in {diff}; use another output folder "
                          "or train without resume to overwrite it")
    return meta


def _pretrain_summary(art: Path, meta: dict[str, Any], skipped: bool) -> dict[str, Any]:
    keys = ("cutoff", "num_events", "num_users", "num_sessions", "steps", "epoch_losses", "probe_loss", "seconds",
            "events_fingerprint")
    return {"path": str(art), "skipped": skipped, **{k: meta.get(k) for k in keys}}


def run_stages(cfg: RunConfig, out: str | Path, resume: bool = True, dataset: Dataset | None = None
               ) -> dict[str, Any]:
    """Run ``cfg.stages`` (default: ``finetune`` alone) into ``out``.

    Returns ``{"stages", "pretrain": summary, "finetune": {"dir", "summary", "metrics"}}``; when fine-tuning
    ran, the keys of ``train_ranker_run``'s results record (``metrics``, ``protocol``, ``train``, ...) are
    merged in at the top level, so the CLI prints a two-stage run like a plain ranker run.
    """
    stages = list(cfg.stages) or ["finetune"]
    bad = [s for s in stages if s not in STAGES]
    if bad:
        raise ConfigError(f"stages: {bad} unknown; each must be one of {list(STAGES)}")
    root = Path(out)
    art = root / PRETRAIN_DIR
    if "pretrain" in stages and "finetune" in stages:
        fields = {f.name for f in dataclasses.fields(get_model_class(cfg.model["name"]).Config)}
        if "pretrained" not in fields:
            raise ConfigError(f"stages: model '{cfg.model['name']}' has no 'pretrained' setting to fine-tune from; "
                              "use model.name=hpgr, hstu or sasrec, or stages: [pretrain]")
    if "finetune" in stages:  # a bad model key fails now, not after stage 1's hour
        check_model_config({**cfg.model, "pretrained": str(art)} if "pretrain" in stages else cfg.model)
    dataset = dataset if dataset is not None else load_data(cfg.data)
    record: dict[str, Any] = {"stages": stages}
    if "pretrain" in stages:
        pcfg = pretrain_settings(cfg)
        cut = retrieval_cutoff(cfg, dataset) if is_retriever(cfg) else training_cutoff(cfg, dataset)
        meta = existing_pretrain(art, pcfg, cut, dataset) if resume else None
        skipped = meta is not None
        if meta is None:  # train (or resume) stage 1 with the loop knobs of train: (max_steps, checkpoints, ...)
            summary = pretrain_run(dataset, cut, pcfg, art, resume=resume, loop=cfg.train)
            if not summary["finished"]:  # stopped by train.max_steps: the next run resumes stage 1
                return {"stages": stages, "pretrain": {"path": str(art), "summary": summary}, "summary": summary,
                        "stopped_early_by": summary.get("interrupted_by", "train.max_steps")}
            meta = json.loads((art / META_FILE).read_text())
        record["pretrain"] = _pretrain_summary(art, meta, skipped)
    if "finetune" in stages:
        model = dict(cfg.model)
        if "pretrain" in stages:
            model["pretrained"] = str(art)
        ft_out = root / FINETUNE_DIR if "pretrain" in stages else root
        if is_retriever(cfg):  # a plain retriever run (stages=[] in its record)
            res = train_retriever_run(dataclasses.replace(cfg, model=model, stages=[]), ft_out, resume, dataset)
        else:
            from genrec.train.ranker import train_ranker_run

            ft = dataclasses.replace(cfg, model=model, stages=["finetune"])
            res = train_ranker_run(ft, ft_out, resume=resume, dataset=dataset)
        record["finetune"] = {"dir": str(ft_out), "summary": res.get("train", res.get("summary")),
                              "metrics": res.get("metrics")}
        # the fine-tuning results record at the top level, so callers read a stage run like a plain one
        record = {**res, **record}
    write_json_atomic(root / STAGES_FILE, {k: record[k] for k in ("stages", "pretrain", "finetune") if k in record})
    return record


__all__ = ["run_stages", "training_cutoff", "retrieval_cutoff", "pretrain_settings", "existing_pretrain",
           "is_retriever"]
