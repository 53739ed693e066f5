"""benchmarks/ctr.py --add-seeds: seed 2 joined in a later call gives the record one call with both seeds writes."""

from __future__ import annotations

import json
import sys

import pytest

from tests.conftest import load_benchmark
from tests.hpgr.conftest import toy_ctr_benchmark


def test_ctr_seeds_added_later_equal_one_run(tmp_path, monkeypatch):
    ctr = load_benchmark("ctr")
    import common

    monkeypatch.setattr(common, "RESULTS", tmp_path / "results")
    data, recipe = toy_ctr_benchmark(tmp_path)

    def run(runs: str, *extra: str) -> dict:
        monkeypatch.setattr(sys, "argv", ["benchmarks/ctr.py", "--recipe", str(recipe), "--data", str(data),
                                          "--runs", str(tmp_path / runs), *extra])
        ctr.main()
        return json.loads((tmp_path / "results" / "ctr-ctr-toy-toy-ranker.json").read_text())

    whole = run("whole", "--seeds", "1", "2")
    run("parts", "--seeds", "1", "--replace")  # the 2-seed record above starts over
    both = run("parts", "--seeds", "2", "--add-seeds")
    assert both["seeds"] == [1, 2] and both["metrics"] == pytest.approx(whole["metrics"])
    assert both["spread"] == pytest.approx(whole["spread"]) and both["spread"]["auc"] > 0
    with pytest.raises(SystemExit, match="already in"):
        run("parts", "--seeds", "2", "--add-seeds")
