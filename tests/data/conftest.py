"""Shared fixtures for the data-room tests: tiny raw files and the staged public datasets."""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np
import pytest

from genrec.data.prepare import RawLog

# beside the checkout by default; GENREC_SHARED_DATA points elsewhere (a second working tree of the repository)
SHARED_DATA = Path(os.environ.get("GENREC_SHARED_DATA") or Path(__file__).resolve().parents[2].parent / "shared" / "data")


@pytest.fixture
def shared_data() -> Path:
    """The staged public datasets folder; the test is skipped (with the path) when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data folder {SHARED_DATA} not present")
    return SHARED_DATA


def _need(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"real data file {path} not present")
    return path


@pytest.fixture
def need():
    """``need(path)`` skips the test, naming the file, when one staged dataset file is missing."""
    return _need


def _write(path: Path, text: str, *, gz: bool = False, encoding: str = "utf-8") -> Path:
    """Write ``text`` to ``path`` (gzip-compressed when ``gz``) and return the path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data = text.encode(encoding)
    if gz:
        data = gzip.compress(data, mtime=0)
    path.write_bytes(data)
    return path


def _raw_log(rows: list[tuple], *, behavior: bool = False, rating: bool = False, **kw) -> RawLog:
    """A RawLog from (user, item, time[, rating][, behavior]) tuples, in the given (file) order."""
    cols = list(zip(*rows)) if rows else [[], [], []]
    k = 3
    r = b = None
    if rating:
        r = np.asarray(cols[k], dtype=np.float64)
        k += 1
    if behavior:
        b = list(cols[k])
    return RawLog(
        user=list(cols[0]),
        item=list(cols[1]),
        timestamp=np.asarray(cols[2], dtype=np.int64),
        rating=r,
        behavior=b,
        source="test",
        label="test.log",
        **kw,
    )


@pytest.fixture
def write():
    """``write(path, text, gz=False, encoding="utf-8")`` creates a small input file."""
    return _write


@pytest.fixture
def raw_log():
    """``raw_log(rows, behavior=False, rating=False)`` builds a RawLog from tuples in file order."""
    return _raw_log
