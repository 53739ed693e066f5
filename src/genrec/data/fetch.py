"""Download (or import from a local copy) known public dataset archives, checksum-verified.

This is the only module that touches the network, and only when :func:`fetch` is called without
``from_file``. Checksums are recorded only where known with certainty; for the others the
computed hash is printed so the user can pin it, instead of trusting an invented value.
"""

from __future__ import annotations

import hashlib
import os
import sys
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from genrec.errors import ConfigError, DataError


@dataclass(frozen=True)
class KnownDataset:
    """A downloadable archive: where it lives and (when known) its sha256."""

    url: str
    sha256: str | None
    description: str

    @property
    def filename(self) -> str:
        return self.url.rsplit("/", 1)[-1]


_GROUPLENS = "https://files.grouplens.org/datasets/movielens"
KNOWN_DATASETS: dict[str, KnownDataset] = {
    "ml-100k": KnownDataset(f"{_GROUPLENS}/ml-100k.zip", None, "MovieLens 100K (943 users, 1,682 movies)"),
    "ml-1m": KnownDataset(f"{_GROUPLENS}/ml-1m.zip", None, "MovieLens 1M (6,040 users, 3,706 movies)"),
    "ml-20m": KnownDataset(f"{_GROUPLENS}/ml-20m.zip", None, "MovieLens 20M (138,493 users, 26,744 movies)"),
}


def _copy_hashing(src: Any, dst: IO[bytes]) -> str:
    h = hashlib.sha256()
    while True:
        block = src.read(1 << 20)
        if not block:
            break
        h.update(block)
        dst.write(block)
    return h.hexdigest()


def fetch(name: str, out_dir: str | Path, from_file: str | Path | None = None, *, timeout: float = 60.0) -> Path:
    """Place dataset ``name``'s archive in ``out_dir`` and return its path.

    With ``from_file`` the local file is copied (no network); otherwise it is downloaded. Either
    way the bytes go to a temporary file first, are checked against the known sha256, and only
    then renamed into place, so a failed or corrupt transfer never leaves a plausible file.
    """
    if name not in KNOWN_DATASETS:
        raise ConfigError(f"unknown dataset '{name}' (known: {', '.join(sorted(KNOWN_DATASETS))})")
    spec = KNOWN_DATASETS[name]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    target = out / spec.filename
    fd, tmp_name = tempfile.mkstemp(prefix=f".{spec.filename}.", suffix=".part", dir=out)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as dst:
            if from_file is not None:
                src_path = Path(from_file)
                if not src_path.is_file():
                    raise DataError(f"{src_path}: file not found")
                with open(src_path, "rb") as src:
                    digest = _copy_hashing(src, dst)
                origin = str(src_path)
            else:
                try:
                    with urllib.request.urlopen(spec.url, timeout=timeout) as src:
                        digest = _copy_hashing(src, dst)
                except (urllib.error.URLError, TimeoutError, OSError) as exc:
                    raise DataError(
                        f"{spec.url}: download failed ({exc}); download it by hand and use --from FILE"
                    ) from None
                origin = spec.url
        if spec.sha256 is not None and digest != spec.sha256:
            raise DataError(f"{origin}: sha256 {digest} does not match the known {spec.sha256} for '{name}'")
        if spec.sha256 is None:
            print(
                f"{name}: sha256 {digest} (no checksum is pinned for this dataset; "
                f"pin it in genrec.data.fetch.KNOWN_DATASETS after checking it against {spec.url})",
                file=sys.stderr,
            )
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            tmp.unlink()
    return target


__all__ = ["KNOWN_DATASETS", "KnownDataset", "fetch"]
