"""The artifact folder's on-disk format: names, version, and the checks every load runs.

``genrec.serve.export`` writes this layout and ``genrec.serve.artifact`` reads it; both take the names and
the version from here, so the two sides cannot drift apart. Every check fails with a one-line
:class:`ArtifactError` naming the file.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

import genrec
from genrec.errors import GenrecError

FORMAT = "genrec-artifact"
FORMAT_VERSION = 1
MANIFEST = "artifact.json"
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
ITEMS_FILE = "items.json"
SID_TABLE_FILE = "sid_table.safetensors"
CARD_FILE = "README.md"  # the model card (slot "card"; absent from artifacts exported before it existed)
REQUIRED_SLOTS = ("weights", "config", "items")
MAX_TIMESTAMP = 2**62  # keeps every time difference inside int64
UNKNOWN_MODES = ("ignore", "reject")


class ArtifactError(GenrecError):
    """An artifact folder that is missing, damaged, or written for another genrec or model."""


def sha256(path: Path) -> str:
    from genrec.data.schema import sha256_file

    return sha256_file(path)


def is_int(x: Any) -> bool:
    return isinstance(x, (int, np.integer)) and not isinstance(x, (bool, np.bool_))


def read_json(path: Path, what: str) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ArtifactError(f"{path}: {what} file is missing") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ArtifactError(f"{path}: {what} is not valid JSON ({exc})") from None


def check_manifest(root: Path) -> dict[str, Any]:
    mpath = root / MANIFEST
    if not mpath.exists():
        if (root / "config.json").exists() and ((root / "best").exists() or (root / "checkpoints").exists()):
            raise ArtifactError(f"{root}: this is a training run folder, not an artifact; "
                                f"run `genrec export {root} --out ARTIFACT_DIR` first")
        raise ArtifactError(f"{mpath}: missing; is {root} a folder written by `genrec export`?")
    man = read_json(mpath, "artifact manifest")
    if not isinstance(man, dict) or man.get("format") != FORMAT:
        raise ArtifactError(f"{mpath}: not a genrec artifact manifest (format is not '{FORMAT}')")
    ver = man.get("format_version")
    if not is_int(ver):
        raise ArtifactError(f"{mpath}: format_version must be an integer, got {ver!r}")
    if ver != FORMAT_VERSION:
        by = man.get("genrec_version", "an unknown version")
        hint = "upgrade genrec" if ver > FORMAT_VERSION else "re-export the run with this genrec"
        raise ArtifactError(f"{mpath}: artifact format version {ver} (written by genrec {by}); this genrec "
                            f"{genrec.__version__} reads version {FORMAT_VERSION}: {hint}")
    for key, typ in (("genrec_version", str), ("model", str), ("kinds", list), ("num_items", int),
                     ("max_len", int), ("data_fingerprint", str), ("files", dict), ("tensors", dict),
                     ("sha256", dict)):
        if not isinstance(man.get(key), typ) or isinstance(man.get(key), bool):
            raise ArtifactError(f"{mpath}: key '{key}' is missing or not a {typ.__name__}")
    if man["num_items"] < 1 or man["max_len"] < 1:
        raise ArtifactError(f"{mpath}: num_items and max_len must be positive")
    for slot in REQUIRED_SLOTS:
        if not isinstance(man["files"].get(slot), str):
            raise ArtifactError(f"{mpath}: files.{slot} is missing")
    for slot, name in man["files"].items():
        if name is None:
            continue
        if not isinstance(name, str) or Path(name).name != name:
            raise ArtifactError(f"{mpath}: files.{slot} must be a plain file name inside the artifact, got {name!r}")
        path = root / name
        if not path.is_file():
            raise ArtifactError(f"{path}: file is missing (artifact.json lists it as the {slot} file)")
        want = man["sha256"].get(name)
        if not isinstance(want, str):  # a file nothing vouches for is not loaded: re-exporting writes the sum
            raise ArtifactError(f"{path}: no sha256 for it in artifact.json, so it cannot be verified; "
                                "re-export the run")
        if sha256(path) != want:
            raise ArtifactError(f"{path}: sha256 does not match artifact.json (the file changed after export)")
    return man


def read_items(path: Path, num_items: int) -> tuple[list[str], list[str | None] | None]:
    data = read_json(path, "item map")
    ext = data.get("external_ids") if isinstance(data, dict) else None
    if not isinstance(ext, list) or len(ext) != num_items + 1 or not all(isinstance(e, str) for e in ext):
        raise ArtifactError(f"{path}: external_ids must be a list of {num_items + 1} strings "
                            "(index 0 is padding), as artifact.json's num_items says")
    if len(set(ext[1:])) != num_items:
        raise ArtifactError(f"{path}: external_ids contains duplicates")
    titles = data.get("titles")
    if titles is not None and (not isinstance(titles, list) or len(titles) != num_items + 1
                               or not all(t is None or isinstance(t, str) for t in titles)):
        raise ArtifactError(f"{path}: titles must be null or a list of {num_items + 1} strings or nulls")
    return ext, titles


def read_safetensors(path: Path, expected: dict[str, list[int]] | None) -> dict[str, torch.Tensor]:
    """Read a safetensors file, checking tensor names and shapes against ``expected`` first."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            shapes = {k: list(f.get_slice(k).get_shape()) for k in f.keys()}
            if expected is not None:
                missing = sorted(set(expected) - set(shapes))
                extra = sorted(set(shapes) - set(expected))
                if missing or extra:
                    raise ArtifactError(f"{path}: tensors do not match artifact.json "
                                        f"(missing {missing[:3]}, unexpected {extra[:3]})")
                for k, shape in shapes.items():
                    if shape != list(expected[k]):
                        raise ArtifactError(f"{path}: tensor '{k}' has shape {tuple(shape)}, "
                                            f"artifact.json says {tuple(expected[k])}")
            return {k: f.get_tensor(k) for k in shapes}
    except ArtifactError:
        raise
    except Exception as exc:  # safetensors raises several types for corrupt files
        raise ArtifactError(f"{path}: not a readable safetensors file ({str(exc).splitlines()[0]})") from None
