"""Atomic checkpoints: safetensors weights + JSON state + optimizer/RNG tensors.

A checkpoint is a folder written under a temporary name and renamed into place, then the
``latest`` pointer file is replaced atomically; a run killed at any instant leaves either the old
or the new checkpoint complete, never a torn one. Nothing is unpickled on load: the optimizer
file is read with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from genrec.errors import CheckpointError
from genrec.runs.layout import (
    CKPT_OPTIM,
    CKPT_STATE,
    CKPT_WEIGHTS,
    LATEST,
    best_weights_path,
    checkpoint_root,
)

SUMMARY_KEYS = ("epoch", "global_step", "best_metric", "best_epoch", "finished", "train_seconds")


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def save_weights(model: torch.nn.Module, path: Path) -> None:
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp))
    os.replace(tmp, path)


def load_weights(model: torch.nn.Module, path: Path, strict: bool = True) -> None:
    if not path.exists():
        raise CheckpointError(f"{path}: weights file not found")
    try:
        tensors = load_file(str(path))
    except Exception as exc:  # safetensors raises several types for corrupt files
        raise CheckpointError(f"{path}: not a readable safetensors file ({exc})") from None
    own = model.state_dict()
    missing = [k for k in own if k not in tensors]
    unexpected = [k for k in tensors if k not in own]
    if strict and (missing or unexpected):
        raise CheckpointError(
            f"{path}: weights do not match the model (missing {missing[:3]}, unexpected {unexpected[:3]}); "
            "was it written by another model or config?"
        )
    for k, v in tensors.items():
        if k in own and own[k].shape != v.shape:
            raise CheckpointError(f"{path}: tensor '{k}' has shape {tuple(v.shape)}, model expects {tuple(own[k].shape)}")
    model.load_state_dict(tensors, strict=strict)


def save_checkpoint(ckpt_root: Path, name: str, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                    state: dict[str, Any], keep: int = 1, generators: dict[str, torch.Generator] | None = None
                    ) -> Path:
    """Write checkpoint ``name``; ``generators`` are a trainer's own random streams (their states are saved,
    so a stream that runs on across steps resumes exactly)."""
    ckpt_root.mkdir(parents=True, exist_ok=True)
    final = ckpt_root / name
    tmp = ckpt_root / f".tmp-{name}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    save_weights(model, tmp / CKPT_WEIGHTS)
    extra = {"optimizer": optimizer.state_dict(), "torch_rng": torch.get_rng_state()}
    if torch.cuda.is_available():
        extra["cuda_rng"] = torch.cuda.get_rng_state_all()
    for key, gen in (generators or {}).items():
        extra[f"generator/{key}"] = gen.get_state()
    torch.save(extra, tmp / CKPT_OPTIM)
    (tmp / CKPT_STATE).write_text(json.dumps(state, indent=1))
    for f in tmp.iterdir():
        with open(f, "rb") as fh:
            os.fsync(fh.fileno())
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    _fsync_dir(ckpt_root)
    ptr = ckpt_root / (LATEST + ".tmp")
    ptr.write_text(name)
    os.replace(ptr, ckpt_root / LATEST)
    _fsync_dir(ckpt_root)
    # prune older checkpoints (and temp folders of killed writers)
    done = sorted(p for p in ckpt_root.iterdir() if p.is_dir() and not p.name.startswith(".tmp-"))
    for p in done[:-keep] if keep > 0 else []:
        if p.name != name:
            shutil.rmtree(p, ignore_errors=True)
    for p in ckpt_root.glob(".tmp-*"):
        shutil.rmtree(p, ignore_errors=True)
    return final


def latest_checkpoint(ckpt_root: Path) -> Path | None:
    ptr = ckpt_root / LATEST
    if not ptr.exists():
        return None
    path = ckpt_root / ptr.read_text().strip()
    if not (path / CKPT_STATE).exists():
        raise CheckpointError(f"{ptr}: points to {path.name}, which is missing or incomplete")
    return path


def load_checkpoint(path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None,
                    generators: dict[str, torch.Generator] | None = None) -> dict[str, Any]:
    load_weights(model, path / CKPT_WEIGHTS)
    state = json.loads((path / CKPT_STATE).read_text())
    extra = torch.load(path / CKPT_OPTIM, map_location="cpu", weights_only=True)
    if optimizer is not None:
        optimizer.load_state_dict(extra["optimizer"])
    torch.set_rng_state(extra["torch_rng"])
    if "cuda_rng" in extra and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(extra["cuda_rng"])
    for key, gen in (generators or {}).items():
        if f"generator/{key}" not in extra:
            raise CheckpointError(f"{path}: no state of the random stream '{key}' (written by another trainer?)")
        gen.set_state(extra[f"generator/{key}"])
    return state


def read_state(path: Path) -> dict[str, Any]:
    """The loop state (``state.json``) of one checkpoint folder, without touching weights or RNG."""
    return json.loads((path / CKPT_STATE).read_text())


def summary_of(state: dict[str, Any]) -> dict[str, Any]:
    """The training summary a results record carries (``train``) from a loop state."""
    return {k: state.get(k) for k in SUMMARY_KEYS}


def trained_weights(run_dir: Path, weights: str = "best") -> Path:
    """The weights file to open: ``best/`` when asked for and present, else the latest checkpoint's."""
    best = best_weights_path(run_dir)
    if weights == "best" and best.exists():
        return best
    ck = latest_checkpoint(checkpoint_root(run_dir))
    if ck is None:
        raise CheckpointError(f"{run_dir}: no trained weights found (train the run first)")
    return ck / CKPT_WEIGHTS
