"""Three tiny finished runs on the toy data, trained once per session: SASRec and HSTU under the default protocol,
and SASRec again with history items kept in the ranking (another protocol stamp)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import train_toy_run, write_toy


@dataclass
class Runs:
    data_dir: Path
    sasrec: Path
    hstu: Path
    sasrec_keep_history: Path


@pytest.fixture(scope="session")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Runs:
    root = tmp_path_factory.mktemp("ux")
    data_dir = write_toy(root)
    return Runs(data_dir, train_toy_run(data_dir, root / "sasrec"), train_toy_run(data_dir, root / "hstu", "hstu"),
                train_toy_run(data_dir, root / "sasrec-keep", eval={"exclude_history": False}))
