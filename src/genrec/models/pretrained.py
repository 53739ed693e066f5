"""The HPGR stage-1 artifact: its format, and what a model fine-tuned from it records about it.

An artifact is a folder: ``item_table.safetensors`` (``item_emb`` (I+1, D)), ``sem.safetensors`` (the SEM without
its item table) and ``pretrain.json`` (format, stage-1 settings, cut-off, data fingerprint, events used, losses).
Stage-1 training (``genrec.train.pretrain``) writes it with :func:`write_artifact`, under a temporary name renamed
into place, so a folder is a complete artifact exactly when its ``pretrain.json`` exists. :func:`load_pretrained`
rebuilds the SEM from the JSON, checks every tensor's shape and never unpickles.

A model fine-tuned from an artifact (``model.pretrained``: ``hpgr``, ``hstu``, ``sasrec``) never reads it while
being built, so a run rebuilt for evaluation, export or serving needs nothing outside its own folder:

- its structure follows from ``model.stage1`` (:func:`stage1_record`: the artifact's catalogue size, the SEM's
  architecture and session rule), which the trainer records from the artifact (:func:`fill_stage1`), as a
  generator's ``sid_length`` is recorded from its SID table; HPGR's frozen SEM and relevance table are parts of
  the model's weights;
- its values come from the artifact once, when a run starts fresh: the trainer calls the model's
  ``init_from_pretrained(pre)`` (:func:`apply_pretrained`). Evaluation and serving load the model's own weights.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from genrec.config import dataclass_from_dict
from genrec.errors import CheckpointError, ConfigError
from genrec.models.hpgr_sem import SessionEncoder

ITEM_TABLE_FILE = "item_table.safetensors"
SEM_FILE = "sem.safetensors"
META_FILE = "pretrain.json"
ITEM_KEY = "item_emb"
FORMAT = "hpgr-pretrain/1"
STAGE1_KEY = "stage1"  # the model-config key that records an artifact's shape


@dataclass
class PretrainedSettings:
    """The ``model:`` keys of a model that can start from a stage-1 artifact (a base of its ``Config``)."""

    pretrained: str = ""  # stage-1 artifact folder whose item table (and SEM) initialise the model; "" = random init
    stage1: dict[str, Any] = field(default_factory=dict)  # the artifact's shape, recorded by the trainer


@dataclass
class Pretrained:
    """A loaded stage-1 artifact."""

    item_table: torch.Tensor  # (I+1, D), row 0 = padding
    sem: SessionEncoder  # carries the same item table in ``sem.item_emb``
    meta: dict[str, Any]


@dataclass
class Stage1:
    """What a model built on a stage-1 artifact knows about it without reading it (``model.stage1``)."""

    num_items: int  # the artifact's catalogue (its item table has num_items + 1 rows)
    sem: SessionEncoder.Config  # the SEM's architecture; its width is the item table's
    max_len: int  # events per row the SEM was built for
    session_gap: int | None  # stage 1's session rule, which the frozen SEM is fed with
    max_session_len: int | None


def write_artifact(out_dir: Path, sem: SessionEncoder, meta: dict[str, Any]) -> None:
    """Write ``sem`` (its item table apart) and ``meta`` as the artifact ``out_dir``, renamed into place."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.parent / f".tmp-{out_dir.name}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    state = {k: v.detach().cpu().contiguous() for k, v in sem.state_dict().items()}
    save_file({ITEM_KEY: state.pop("item_emb.weight")}, str(tmp / ITEM_TABLE_FILE))
    save_file(state, str(tmp / SEM_FILE))
    (tmp / META_FILE).write_text(json.dumps(meta, indent=1, default=str))
    for f in tmp.iterdir():
        with open(f, "rb") as fh:
            os.fsync(fh.fileno())
    old = None
    if out_dir.exists():  # move the old artifact aside first: a crash leaves one complete folder
        old = out_dir.parent / f".old-{out_dir.name}-{os.getpid()}"
        os.replace(out_dir, old)
    os.replace(tmp, out_dir)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def read_meta(path: str | Path) -> dict[str, Any]:
    """An artifact's ``pretrain.json``, format checked."""
    root = Path(path)
    try:
        meta = json.loads((root / META_FILE).read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{root / META_FILE}: not found; is {root} a pretrain artifact?") from None
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{root / META_FILE}: not valid JSON ({exc.msg})") from None
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{root}: format {meta.get('format')!r}, expected {FORMAT!r}")
    return meta


def load_pretrained(path: str | Path, num_items: int | None = None, device: str = "cpu") -> Pretrained:
    """Load a stage-1 artifact; shapes are checked against the config it was written with (and ``num_items``).

    Draws no random numbers (the SEM is built under a forked RNG), so a trainer that initialises a fresh
    model from it leaves the run's random stream where a model built without it would.
    """
    root = Path(path)
    meta = read_meta(root)
    s1 = parse_stage1(stage1_record(meta, root), str(root / META_FILE), CheckpointError)
    if num_items is not None and num_items != s1.num_items:
        raise CheckpointError(f"{root}: pre-trained on {s1.num_items} items, the dataset has {num_items}")
    with torch.random.fork_rng(devices=[]):
        sem = SessionEncoder(s1.sem, num_items=s1.num_items, max_len=s1.max_len)
    try:
        table = load_file(str(root / ITEM_TABLE_FILE))[ITEM_KEY]
        state = load_file(str(root / SEM_FILE))
    except (FileNotFoundError, KeyError) as exc:
        raise CheckpointError(f"{root}: missing weights ({exc})") from None
    except Exception as exc:  # safetensors raises several types on corrupt files
        raise CheckpointError(f"{root}: unreadable safetensors ({exc})") from None
    state["item_emb.weight"] = table
    own = sem.state_dict()
    if set(own) != set(state):
        raise CheckpointError(f"{root}: weights do not match the SEM config (missing "
                              f"{sorted(set(own) - set(state))[:3]}, unexpected {sorted(set(state) - set(own))[:3]})")
    for k, v in state.items():
        if own[k].shape != v.shape:
            raise CheckpointError(f"{root}: '{k}' has shape {tuple(v.shape)}, config expects {tuple(own[k].shape)}")
    sem.load_state_dict(state)
    sem.to(device).eval()
    return Pretrained(sem.item_emb.weight.detach().clone(), sem, meta)


# -- model.stage1: an artifact's shape, recorded in the model's config ----------------------------------------------


def stage1_record(meta: dict[str, Any], where: str | Path = META_FILE) -> dict[str, Any]:
    """The ``model.stage1`` mapping of an artifact's ``pretrain.json``."""
    try:
        raw = meta["config"]
        return {"num_items": int(meta["num_items"]), "sem": dict(raw["sem"]), "max_len": int(raw["max_len"]),
                "session_gap": raw.get("session_gap"), "max_session_len": raw.get("max_session_len")}
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{where}: bad config ({exc})") from None


def parse_stage1(raw: Any, where: str = f"model.{STAGE1_KEY}", error: type[Exception] = ConfigError) -> Stage1:
    """A ``model.stage1`` mapping -> :class:`Stage1`; a malformed one raises ``error`` naming ``where``."""
    try:
        if not isinstance(raw, dict):
            raise ConfigError(f"expected a mapping, got {type(raw).__name__}")
        unknown = set(raw) - {"num_items", "sem", "max_len", "session_gap", "max_session_len"}
        if unknown:
            raise ConfigError(f"unknown keys {sorted(unknown)}")
        rule = [raw.get(k) for k in ("session_gap", "max_session_len")]
        if any(v is not None and (isinstance(v, bool) or not isinstance(v, int)) for v in rule):
            raise ConfigError(f"session_gap / max_session_len must be integers or null, got {rule}")
        sem = dataclass_from_dict(SessionEncoder.Config, raw["sem"], f"{where}.sem")
        return Stage1(int(raw["num_items"]), sem, int(raw["max_len"]), *rule)
    except (ConfigError, KeyError, TypeError, ValueError) as exc:
        raise error(f"{where}: bad stage-1 record ({exc})") from None


def fill_stage1(params: dict[str, Any]) -> dict[str, Any]:
    """``params`` (a ``model:`` section) with ``stage1`` recorded from ``pretrained``'s ``pretrain.json`` when it
    names an artifact and does not record it yet; unchanged otherwise.

    The one read a run makes of the artifact's description: trainers call it before building the model, and
    reopening a run folder written before ``model.stage1`` existed calls it once (the artifact must still exist).
    """
    path = params.get("pretrained")
    if not path or STAGE1_KEY in params:
        return params
    if not (Path(path) / META_FILE).exists():
        raise ConfigError(f"model.pretrained={path!r} is not a stage-1 artifact (no {META_FILE}); run the pretrain "
                          "stage first (stages: [pretrain, finetune]) or set model.pretrained=''. A run or export "
                          f"recorded without model.{STAGE1_KEY} (by an earlier genrec) needs that artifact once to "
                          "be reopened")
    try:
        return {**params, STAGE1_KEY: stage1_record(read_meta(path), Path(path) / META_FILE)}
    except CheckpointError as exc:
        raise ConfigError(f"model.pretrained: {exc}") from None


def model_stage1(cfg: Any, num_items: int, model: str) -> Stage1:
    """``cfg.stage1`` of a model built with ``cfg.pretrained``, checked against its catalogue of ``num_items``."""
    if not getattr(cfg, STAGE1_KEY, None):
        raise ConfigError(f"{model}: model.pretrained={cfg.pretrained!r} needs model.{STAGE1_KEY} (the artifact's "
                          "shape), which models never read from disk; genrec.models.pretrained.fill_stage1 "
                          "records it (every trainer does)")
    s1 = parse_stage1(getattr(cfg, STAGE1_KEY))
    if s1.num_items != num_items:
        raise ConfigError(f"{model}: model.pretrained={cfg.pretrained!r} holds {s1.num_items} items, the dataset "
                          f"has {num_items}; pre-train on the same dataset")
    return s1


def stage1_sem(s1: Stage1) -> SessionEncoder:
    """The stage-1 SEM of ``s1``, randomly initialised: HPGR keeps it (frozen), a retriever drops it at once.

    Why build one at all: models used to read the artifact inside their constructor, which built its SEM at that
    point and so drew its random numbers. Building it in the same place draws the same numbers, so every
    parameter created after it, and every seeded run, keeps its weights bit for bit.
    """
    return SessionEncoder(s1.sem, num_items=s1.num_items, max_len=s1.max_len)


def check_stage1(pre: Pretrained, cfg: Any, model: str) -> None:
    """Refuse an artifact that no longer has the shape the model config recorded from it."""
    have = parse_stage1(stage1_record(pre.meta), f"{cfg.pretrained}/{META_FILE}", CheckpointError)
    if have != parse_stage1(getattr(cfg, STAGE1_KEY)):
        raise ConfigError(f"{model}: the stage-1 artifact at model.pretrained={cfg.pretrained!r} changed since "
                          f"model.{STAGE1_KEY} was recorded from it; use another --out folder")


def copy_item_table(emb: nn.Embedding, pre: Pretrained, cfg: Any, model: str) -> None:
    """Copy the stage-1 item table into a retriever's ``emb`` (num_items+1, d), exactly; the padding row stays 0.

    Why: "does pre-training alone help?" needs the retriever to start from the session-MIM table and nothing
    else, so there is no projection or rescaling (the width was checked when the model was built).
    """
    check_stage1(pre, cfg, model)
    with torch.no_grad():
        emb.weight.copy_(pre.item_table)  # (I+1, D)
        emb.weight[0].zero_()


def retriever_stage1(cfg: Any, num_items: int, width: int, model: str) -> None:
    """A retriever built with ``model.pretrained``: check ``model.stage1`` (the table is copied as it is, so its
    width must be ``model.d_model``) and build and drop its SEM where earlier versions did (:func:`stage1_sem`)."""
    s1 = model_stage1(cfg, num_items, model)
    if s1.sem.d_model != width:
        raise ConfigError(f"{model}: model.pretrained={cfg.pretrained!r} has width {s1.sem.d_model}, model.d_model "
                          f"is {width}; set pretrain.sem.d_model to model.d_model")
    stage1_sem(s1)


def copy_pretrained_table(emb: nn.Embedding, path: str | Path, num_items: int, model: str) -> None:
    """Read the artifact at ``path`` and copy its item table into a bare ``emb`` (num_items+1, d) in one call,
    checking and drawing as a retriever built with it does (:func:`retriever_stage1`).

    The pre-``model.stage1`` form of the initialisation, for code that holds an embedding rather than a model
    config (the frozen HSTU oracle of the tests); models themselves never call it while being built.
    """
    cfg = SimpleNamespace(pretrained=str(path), stage1=fill_stage1({"pretrained": str(path)})[STAGE1_KEY])
    retriever_stage1(cfg, num_items, emb.weight.shape[1], model)
    copy_item_table(emb, load_pretrained(path), cfg, model)


def apply_pretrained(model: nn.Module) -> int:
    """Initialise every part of ``model`` built with ``model.pretrained`` from its artifact; returns how many.

    The trainer calls this once, when a run starts fresh (never on resume, evaluation or export: those load the
    model's own weights, which already hold what came from the artifact).
    """
    done = 0
    for part in model.modules():
        path = getattr(getattr(part, "cfg", None), "pretrained", "")
        init = getattr(part, "init_from_pretrained", None)
        if path and init is not None:
            try:
                pre = load_pretrained(path)
            except CheckpointError as exc:
                raise ConfigError(f"model.pretrained: {exc}") from None
            init(pre)
            done += 1
    return done


__all__ = ["FORMAT", "ITEM_KEY", "ITEM_TABLE_FILE", "META_FILE", "SEM_FILE", "STAGE1_KEY", "Pretrained", "Stage1",
           "apply_pretrained", "check_stage1", "copy_item_table", "copy_pretrained_table", "fill_stage1",
           "load_pretrained", "model_stage1", "parse_stage1", "read_meta", "retriever_stage1", "stage1_record",
           "stage1_sem", "write_artifact"]
