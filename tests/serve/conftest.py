"""One tiny HSTU run, trained and exported once per session, shared by every serving test."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from tests.conftest import train_toy_run, write_toy


@dataclass
class Served:
    data_dir: Path
    run_dir: Path
    art_dir: Path


@pytest.fixture(scope="session")
def served(tmp_path_factory: pytest.TempPathFactory) -> Served:
    from genrec.serve.artifact import export_run

    root = tmp_path_factory.mktemp("serve")
    data_dir = write_toy(root)
    train_toy_run(data_dir, root / "run", "hstu", train={"epochs": 1})
    export_run(root / "run", root / "art")
    return Served(data_dir, root / "run", root / "art")


@pytest.fixture(scope="session")
def art(served: Served):
    from genrec.serve.artifact import load_artifact

    return load_artifact(served.art_dir)


@pytest.fixture(scope="session")
def run(served: Served):
    from genrec.runs.open import open_run

    return open_run(served.run_dir)


@pytest.fixture(scope="session")
def user_history(run):
    """f(row) -> (history external ids, timestamps, held-out item, its time), as evaluation splits a user."""
    ext = run.dataset.item_external_ids()

    def f(row: int) -> tuple[list[str], list[int], str, int]:
        sl = run.seqs.row(row)
        items, times = run.seqs.items[sl].tolist(), run.seqs.timestamps[sl].tolist()
        return [ext[i] for i in items[:-1]], times[:-1], ext[items[-1]], times[-1]

    return f


class StubRanker(torch.nn.Module):
    """A model of kind "ranker" whose score is known in advance: candidate id / 2 + history length."""

    kinds = ("ranker",)

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))

    @property
    def device(self):
        return self.w.device

    def score_candidates(self, batch, candidates):
        return candidates.float() * 0.5 + batch.lengths[:, None].float()


@pytest.fixture(scope="session")
def ranker_art(art):
    """The served artifact with its model swapped for :class:`StubRanker` (no ranker exports yet in tests)."""
    from genrec.serve.artifact import Artifact

    return Artifact(art.root, {**art.manifest, "kinds": ["ranker"]}, art.config, StubRanker(), art.external_ids,
                    art.titles)
