"""Fixtures for the HPGR tests: the staged public datasets (skipped with a reason when absent)."""

from __future__ import annotations

from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"


@pytest.fixture
def shared_file():
    """``shared_file("movielens-100k/u.data.gz")`` -> path, or skip naming the missing file."""

    def get(rel: str) -> Path:
        path = SHARED_DATA / rel
        if not path.exists():
            pytest.skip(f"real data file {path} not present")
        return path

    return get
