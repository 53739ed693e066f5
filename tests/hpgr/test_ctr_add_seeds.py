"""benchmarks/ctr.py --add-seeds: seed 2 joined in a later call gives the record one call with both seeds writes."""

from __future__ import annotations

import json
import sys

import pytest
import yaml

from genrec.data.schema import write_dataset
from tests.conftest import load_benchmark
from tests.hpgr.conftest import make_ctr_toy


def test_ctr_seeds_added_later_equal_one_run(tmp_path, monkeypatch):
    ctr = load_benchmark("ctr")
    import common

    monkeypatch.setattr(common, "RESULTS", tmp_path / "results")
    ds = make_ctr_toy()
    data = write_dataset(tmp_path / "ctr-toy", ds.interactions, ds.items, ds.manifest)
    recipe = tmp_path / "toy-ranker.yaml"
    recipe.write_text(yaml.safe_dump({
        "model": {"name": "hstu_ranker", "d_model": 16, "num_layers": 1, "num_heads": 1},
        "data": {"max_len": 16}, "ranking": {"labels": "ratings"},
        "train": {"epochs": 1, "batch_size": 64, "tensorboard": False, "patience": 0, "num_threads": 1}}))

    def run(runs: str, *extra: str) -> dict:
        monkeypatch.setattr(sys, "argv", ["benchmarks/ctr.py", "--recipe", str(recipe), "--data", str(data),
                                          "--runs", str(tmp_path / runs), *extra])
        ctr.main()
        return json.loads((tmp_path / "results" / "ctr-ctr-toy-toy-ranker.json").read_text())

    whole = run("whole", "--seeds", "1", "2")
    run("parts", "--seeds", "1")
    both = run("parts", "--seeds", "2", "--add-seeds")
    assert both["seeds"] == [1, 2] and both["metrics"] == pytest.approx(whole["metrics"])
    assert both["spread"] == pytest.approx(whole["spread"]) and both["spread"]["auc"] > 0
    with pytest.raises(SystemExit, match="already in"):
        run("parts", "--seeds", "2", "--add-seeds")
