"""benchmarks/ctr_by_history.py: a ranker run re-scored on its test impressions, split by history length."""

from __future__ import annotations

import json
import sys

import pytest

from tests.conftest import load_benchmark
from tests.hpgr.conftest import toy_ctr_benchmark


def test_history_parts_add_up_to_the_runs_record(tmp_path, monkeypatch):
    ctr = load_benchmark("ctr")
    by_history = load_benchmark("ctr_by_history")
    import common

    monkeypatch.setattr(common, "RESULTS", tmp_path / "results")
    data, recipe = toy_ctr_benchmark(tmp_path)
    monkeypatch.setattr(sys, "argv", ["benchmarks/ctr.py", "--recipe", str(recipe), "--data", str(data),
                                      "--runs", str(tmp_path / "runs"), "--seeds", "1"])
    ctr.main()
    trained = json.loads((tmp_path / "results" / "ctr-ctr-toy-toy-ranker.json").read_text())

    run = tmp_path / "runs" / "ctr-ctr-toy-toy-ranker-seed1"
    assert by_history.main(["--run", str(run), "--cuts", "3,8"]) == 0
    rec = json.loads((tmp_path / "results" / "history-split__ctr-toy.json").read_text())
    parts = rec["metrics"][0]["parts"]
    assert list(parts) == ["all", "0-3", "4-8", "> 8"]
    # the whole test split scores what the training run recorded; the parts partition it
    assert parts["all"]["auc"] == pytest.approx(trained["metrics"]["auc"], abs=1e-6)
    assert parts["all"]["impressions"] == trained["test_impressions"]
    assert sum(parts[p]["impressions"] for p in ("0-3", "4-8", "> 8")) == parts["all"]["impressions"]
    assert rec["dataset"] == "ctr-toy" and rec["data_fingerprint"] and "command" in rec


def test_bad_cuts_name_the_flag(capsys):
    by_history = load_benchmark("ctr_by_history")
    with pytest.raises(SystemExit):
        by_history.main(["--run", "nowhere", "--cuts", "two hundred"])
    assert "--cuts" in capsys.readouterr().err
