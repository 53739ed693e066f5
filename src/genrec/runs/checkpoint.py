"""Atomic, checksummed checkpoints: safetensors weights + JSON state + optimizer/RNG tensors.

A checkpoint is a folder written under a temporary name, with ``checksums.json`` (the sha256 of its three files)
written inside it, then renamed into place; the ``latest`` pointer file is replaced atomically after it. A run
killed at any instant leaves either the old or the new checkpoint complete, never a torn one, and the one before
the newest is kept, so a checkpoint damaged later on disk (a flipped bit, a truncated file) is detected on resume
and the run falls back to the previous one, saying so. Nothing is unpickled on load: the optimizer file is read
with ``torch.load(weights_only=True)``, and one that holds anything but tensors is refused in one line.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from genrec.data.schema import sha256_file
from genrec.errors import CheckpointError
from genrec.io import write_json_atomic
from genrec.runs.layout import (
    CKPT_OPTIM,
    CKPT_STATE,
    CKPT_SUMS,
    CKPT_WEIGHTS,
    LATEST,
    best_weights_path,
    checkpoint_root,
)
from genrec.runs.lock import pid_alive

SUMMARY_KEYS = ("epoch", "global_step", "best_metric", "best_epoch", "finished", "train_seconds")
CKPT_FILES = (CKPT_WEIGHTS, CKPT_OPTIM, CKPT_STATE)
TMP_PREFIX = ".tmp-"


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


def save_best_weights(model: torch.nn.Module, path: Path) -> None:
    """The best validation weights, with their sha256 in ``checksums.json`` beside them.

    The sums first name the new file and the one it replaces, then the new one alone, so a process killed at any
    instant leaves weights that verify; a bit flipped on disk later is found when they are read."""
    sums_path = path.parent / CKPT_SUMS
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, str(tmp))
    new = sha256_file(tmp)
    if path.exists():
        current = (_best_sums(sums_path) or [sha256_file(path)])[0]
        write_json_atomic(sums_path, {"sha256": {path.name: new}, "replacing": current})
    os.replace(tmp, path)
    write_json_atomic(sums_path, {"sha256": {path.name: new}})


def _best_sums(sums_path: Path) -> list[str] | None:
    """The sha256 values ``checksums.json`` accepts for the best weights; None when there is none (older run)."""
    if not sums_path.exists():
        return None
    try:
        doc = json.loads(sums_path.read_text())
        return [next(iter(doc["sha256"].values())), *([doc["replacing"]] if doc.get("replacing") else [])]
    except (OSError, ValueError, KeyError, TypeError, AttributeError, StopIteration):
        raise CheckpointError(f"{sums_path}: unreadable") from None


def verify_best_weights(path: Path) -> bool:
    """Check the best weights against their ``checksums.json``; False when they have none (written before checksums
    existed), a one-line :class:`CheckpointError` naming the file when they do not match."""
    accepted = _best_sums(path.parent / CKPT_SUMS)
    if accepted is None:
        return False
    if sha256_file(path) not in accepted:
        raise CheckpointError(f"{path}: sha256 does not match {CKPT_SUMS} (the file changed after it was written); "
                              "the latest checkpoint is intact: `genrec export RUN --weights latest`, or train again")
    return True


def _read_weights(model: torch.nn.Module, path: Path, strict: bool = True) -> dict[str, torch.Tensor]:
    """The tensors of a weights file, checked against ``model``'s names and shapes (nothing is loaded yet)."""
    if not path.exists():
        raise CheckpointError(f"{path}: weights file not found")
    try:
        tensors = load_file(str(path))
    except Exception as exc:  # safetensors raises several types for corrupt files
        raise CheckpointError(f"{path}: not a readable safetensors file ({_first_line(exc)})") from None
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
    return tensors


def load_weights(model: torch.nn.Module, path: Path, strict: bool = True) -> None:
    model.load_state_dict(_read_weights(model, path, strict), strict=strict)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:200]


def save_checkpoint(ckpt_root: Path, name: str, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                    state: dict[str, Any], generators: dict[str, torch.Generator] | None = None) -> Path:
    """Write checkpoint ``name`` with its checksums; ``generators`` are a trainer's own random streams (their
    states are saved, so a stream that runs on across steps resumes exactly). The checkpoint ``latest`` named
    before is kept beside it (the fallback when the new one is found damaged); older ones are pruned."""
    ckpt_root.mkdir(parents=True, exist_ok=True)
    previous = _pointer(ckpt_root)
    final = ckpt_root / name
    tmp = ckpt_root / f"{TMP_PREFIX}{name}-{os.getpid()}"
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
    sums = {"sha256": {f: sha256_file(tmp / f) for f in CKPT_FILES}, "progress": _progress_of(state)}
    (tmp / CKPT_SUMS).write_text(json.dumps(sums, indent=1))
    for f in tmp.iterdir():
        with open(f, "rb") as fh:
            os.fsync(fh.fileno())
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    _fsync_dir(ckpt_root)
    set_latest(ckpt_root, name)
    _prune(ckpt_root, name, previous)
    return final


def set_latest(ckpt_root: Path, name: str) -> None:
    """Point ``latest`` at checkpoint ``name`` (atomically)."""
    ptr = ckpt_root / (LATEST + ".tmp")
    ptr.write_text(name)
    os.replace(ptr, ckpt_root / LATEST)
    _fsync_dir(ckpt_root)


def _prune(ckpt_root: Path, name: str, previous: str | None) -> None:
    """Remove checkpoints other than ``name`` and the one before it, and temporary folders of writers that are
    gone (a live process's half-written folder is never touched).

    The one before is ``previous`` (what ``latest`` named: after a fallback, the good checkpoint resumed from),
    or, when that is ``name`` itself (one step saved twice) or unknown, the newest other checkpoint.
    """
    keep = {name, previous}
    if previous in (None, name):
        others = [p for p in ckpt_root.iterdir() if p.is_dir() and not p.name.startswith(".") and p.name != name]
        keep.update(p.name for p in sorted(others, key=_progress)[-1:])
    for p in ckpt_root.iterdir():
        if not p.is_dir():
            continue
        if p.name.startswith(TMP_PREFIX):
            pid = p.name.rsplit("-", 1)[-1]
            if pid.isdigit() and int(pid) != os.getpid() and pid_alive(int(pid)):
                continue
            shutil.rmtree(p, ignore_errors=True)
        elif not p.name.startswith(".") and p.name not in keep:
            shutil.rmtree(p, ignore_errors=True)


def _pointer(ckpt_root: Path) -> str | None:
    ptr = ckpt_root / LATEST
    try:
        return ptr.read_text().strip() or None
    except (FileNotFoundError, UnicodeDecodeError):
        return None


def _progress_of(state: dict[str, Any]) -> list[int]:
    """How far a loop state is: (global step, epoch); an epoch-end checkpoint follows a step one of its step."""
    return [int(state.get("global_step") or 0), int(state.get("epoch") or 0)]


def _progress(folder: Path) -> tuple[int, ...]:
    """The order of checkpoint folders, newest last, read from their checksums or state (unreadable: first)."""
    for name, key in ((CKPT_SUMS, "progress"), (CKPT_STATE, None)):
        try:
            data = json.loads((folder / name).read_text())
            return tuple(data[key] if key else _progress_of(data))
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return (-1, -1)


def latest_checkpoint(ckpt_root: Path) -> Path | None:
    ptr = ckpt_root / LATEST
    if not ptr.exists():
        return None
    path = ckpt_root / ptr.read_text().strip()
    if not (path / CKPT_STATE).exists():
        raise CheckpointError(f"{ptr}: points to {path.name}, which is missing or incomplete")
    return path


def verify_checksums(path: Path) -> bool:
    """Check a checkpoint folder's files against its ``checksums.json``; False when it has none (written
    before checksums existed), a :class:`CheckpointError` naming the file when one does not match."""
    sums_path = path / CKPT_SUMS
    if not sums_path.exists():
        return False
    try:
        sums = json.loads(sums_path.read_text())["sha256"]
    except (OSError, ValueError, KeyError, TypeError):
        raise CheckpointError(f"{sums_path}: unreadable") from None
    for name in CKPT_FILES:
        f = path / name
        if not f.is_file():
            raise CheckpointError(f"{f}: missing")
        if sums.get(name) != sha256_file(f):
            raise CheckpointError(f"{f}: sha256 does not match {CKPT_SUMS} (the file changed after it was written)")
    return True


def _read_extra(path: Path, generators: dict[str, torch.Generator] | None) -> dict[str, Any]:
    """The optimizer and RNG states of ``optimizer.pt``, tensors only (anything pickled is refused unrun)."""
    f = path / CKPT_OPTIM
    try:
        extra = torch.load(f, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"{f}: missing") from None
    except pickle.UnpicklingError:
        raise CheckpointError(f"{f}: refused: it holds pickled objects, not only tensors (nothing in it was run)"
                              ) from None
    except Exception as exc:  # torch raises several types for torn or foreign files
        raise CheckpointError(f"{f}: not a readable checkpoint file ({_first_line(exc)})") from None
    if not isinstance(extra, dict) or "optimizer" not in extra or "torch_rng" not in extra:
        raise CheckpointError(f"{f}: not a genrec optimizer file (no optimizer and RNG state)")
    for key in generators or {}:
        if f"generator/{key}" not in extra:
            raise CheckpointError(f"{path}: no state of the random stream '{key}' (written by another trainer?)")
    return extra


def read_state(path: Path) -> dict[str, Any]:
    """The loop state (``state.json``) of one checkpoint folder, without touching weights or RNG."""
    f = path / CKPT_STATE
    try:
        state = json.loads(f.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{f}: missing") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{f}: not valid JSON ({_first_line(exc)})") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{f}: not a loop state (a JSON object)")
    return state


def load_checkpoint(path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None,
                    generators: dict[str, torch.Generator] | None = None) -> dict[str, Any]:
    """Load one checkpoint folder into the model, optimizer, RNG and ``generators``; returns its loop state.

    Every file is read and checked before anything is changed, so a damaged checkpoint raises a one-line
    :class:`CheckpointError` and leaves the model as it was (checksums are checked by :func:`resume_checkpoint`).
    """
    tensors = _read_weights(model, path / CKPT_WEIGHTS)
    state = read_state(path)
    extra = _read_extra(path, generators)
    model.load_state_dict(tensors)
    if optimizer is not None:
        try:
            optimizer.load_state_dict(extra["optimizer"])
        except (ValueError, KeyError, TypeError, RuntimeError) as exc:
            raise CheckpointError(f"{path / CKPT_OPTIM}: the optimizer state does not fit ({_first_line(exc)})"
                                  ) from None
    torch.set_rng_state(extra["torch_rng"])
    if "cuda_rng" in extra and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(extra["cuda_rng"])
    for key, gen in (generators or {}).items():
        gen.set_state(extra[f"generator/{key}"])
    return state


def resume_checkpoint(ckpt_root: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None,
                      generators: dict[str, torch.Generator] | None = None,
                      say: Callable[[str], None] | None = None,
                      repoint: bool = False) -> tuple[Path, dict[str, Any]] | None:
    """Load the newest checkpoint that verifies; None when the folder holds none at all.

    ``latest``'s checkpoint is tried first, then the others newest first; one that fails its checksums or
    does not load is skipped. Anything but a clean resume from ``latest`` is told in one line through ``say``
    (a damaged checkpoint skipped, ``latest`` missing, a checkpoint without checksums resumed unverified);
    ``repoint`` moves ``latest`` to the checkpoint used. When every checkpoint is damaged: one-line error.
    """
    folders = sorted((p for p in ckpt_root.iterdir() if p.is_dir() and not p.name.startswith("."))
                     if ckpt_root.is_dir() else [], key=_progress, reverse=True)
    named = _pointer(ckpt_root)
    if not folders:
        if named is not None:
            raise CheckpointError(f"{ckpt_root / LATEST}: points to {named}, which is missing; "
                                  "train with --no-resume to start over")
        return None
    folders.sort(key=lambda p: p.name != named)  # latest's first (stable: the rest stay newest first)
    notes, damaged = [], []
    if named is None or folders[0].name != named:
        notes.append(f"{ckpt_root / LATEST} is {'missing' if named is None else f'naming a missing {named}'}")
    for path in folders:
        try:
            verified = verify_checksums(path)
            state = load_checkpoint(path, model, optimizer, generators)
        except CheckpointError as exc:
            damaged.append((path.name, str(exc)))
            continue
        if damaged:
            names = ", ".join(n for n, _ in damaged)
            notes.append(f"checkpoint {names} {'is' if len(damaged) == 1 else 'are'} damaged ({damaged[0][1]})")
        if notes or not verified:
            tail = "" if verified else " unverified (it has no checksums: written by an older genrec)"
            notes.append(f"resuming from {path.name}{tail}")
            if say is not None:
                say("; ".join(notes))
        if repoint and path.name != named:
            set_latest(ckpt_root, path.name)
        return path, state
    count = "its only checkpoint is" if len(damaged) == 1 else f"none of its {len(damaged)} checkpoints is"
    raise CheckpointError(f"{ckpt_root}: {count} usable ({damaged[0][0]}: {damaged[0][1]}); move the folder "
                          "away, or train with --no-resume to start over")


def summary_of(state: dict[str, Any]) -> dict[str, Any]:
    """The training summary a results record carries (``train``) from a loop state."""
    return {k: state.get(k) for k in SUMMARY_KEYS}


def trained_weights(run_dir: Path, weights: str = "best") -> Path:
    """The weights file to open: ``best/`` when asked for and present, else the latest checkpoint's (checked
    against its checksums, when it has them: evaluation and export never read damaged weights silently)."""
    best = best_weights_path(run_dir)
    if weights == "best" and best.exists():
        verify_best_weights(best)
        return best
    ck = latest_checkpoint(checkpoint_root(run_dir))
    if ck is None:
        raise CheckpointError(f"{run_dir}: no trained weights found (train the run first)")
    verify_checksums(ck)
    return ck / CKPT_WEIGHTS
