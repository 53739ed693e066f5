"""Three tiny finished runs on the toy data, trained once per session: SASRec and HSTU under the default protocol,
and SASRec again with history items kept in the ranking (another protocol stamp)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import make_toy, tiny_cfg


@dataclass
class Runs:
    data_dir: Path
    sasrec: Path
    hstu: Path
    sasrec_keep_history: Path


@pytest.fixture(scope="session")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Runs:
    from genrec.config import config_from_dict
    from genrec.data.schema import load_dataset, write_dataset
    from genrec.train.run import train_run

    root = tmp_path_factory.mktemp("ux")
    ds = make_toy()
    data_dir = write_dataset(root / "toy", ds.interactions, ds.items, ds.manifest, ds.users)
    out = {}
    for name, model, extra in (("sasrec", "sasrec", {}), ("hstu", "hstu", {}),
                               ("sasrec-keep", "sasrec", {"eval": {"exclude_history": False}})):
        cfg = config_from_dict(tiny_cfg(model, data={"path": str(data_dir)}, **extra))
        train_run(cfg, root / name, dataset=load_dataset(data_dir))
        out[name] = root / name
    return Runs(data_dir, out["sasrec"], out["hstu"], out["sasrec-keep"])
