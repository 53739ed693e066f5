"""The HPGR stage-1 artifact: a folder written under a temporary name and renamed into place.

``item_table.safetensors`` (``item_emb`` (I+1, D)), ``sem.safetensors`` (the SEM without its item table) and
``pretrain.json`` (configs, cut-off, data fingerprint, events used, losses). ``load_pretrained`` rebuilds the
SEM from the JSON, checks every tensor's shape and never unpickles. A folder is a complete artifact exactly
when its ``pretrain.json`` exists (while stage 1 trains, the same folder is its run folder).
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from genrec.config import dataclass_from_dict
from genrec.errors import CheckpointError, ConfigError
from genrec.models.hpgr_sem import SessionEncoder

ITEM_TABLE_FILE = "item_table.safetensors"
SEM_FILE = "sem.safetensors"
META_FILE = "pretrain.json"
ITEM_KEY = "item_emb"
FORMAT = "hpgr-pretrain/1"


@dataclass
class Pretrained:
    """A loaded stage-1 artifact."""

    item_table: torch.Tensor  # (I+1, D), row 0 = padding
    sem: SessionEncoder  # carries the same item table in ``sem.item_emb``
    meta: dict[str, Any]


def write_artifact(out_dir: Path, sem: SessionEncoder, meta: dict[str, Any]) -> None:
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


def load_pretrained(path: str | Path, num_items: int | None = None, device: str = "cpu") -> Pretrained:
    """Load a stage-1 artifact; shapes are checked against the config it was written with (and ``num_items``)."""
    root = Path(path)
    try:
        meta = json.loads((root / META_FILE).read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{root / META_FILE}: not found; is {root} a pretrain artifact?") from None
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{root / META_FILE}: not valid JSON ({exc.msg})") from None
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{root}: format {meta.get('format')!r}, expected {FORMAT!r}")
    n_items = int(meta["num_items"])
    if num_items is not None and num_items != n_items:
        raise CheckpointError(f"{root}: pre-trained on {n_items} items, the dataset has {num_items}")
    try:
        raw = meta["config"]
        sem_cfg = dataclass_from_dict(SessionEncoder.Config, raw["sem"], "pretrain.sem")
        max_len = int(raw["max_len"])
    except (KeyError, ConfigError, TypeError) as exc:
        raise CheckpointError(f"{root / META_FILE}: bad config ({exc})") from None
    sem = SessionEncoder(sem_cfg, num_items=n_items, max_len=max_len)
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
