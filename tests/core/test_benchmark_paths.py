"""Committed benchmark records name no machine path: a ``--runs`` root outside the repository is left out of the
recorded command (nor a ``--work`` scratch folder), and run folders under it are shown under the default root."""

from __future__ import annotations

import sys
from pathlib import Path

from tests.conftest import load_benchmark


def test_runs_outside_the_repository_leave_the_record(tmp_path, monkeypatch):
    load_benchmark("ctr")
    import common

    outside = tmp_path / "elsewhere" / "runs"
    monkeypatch.setattr(sys, "argv", ["benchmarks/ctr.py", "--data", "data_cache/ml-1m", "--runs", str(outside),
                                      "--seeds", "1", f"--runs={outside}"])
    assert common.command_line() == "python benchmarks/ctr.py --data data_cache/ml-1m --seeds 1"
    monkeypatch.setattr(sys, "argv", ["benchmarks/ctr.py", "--runs", "runs/mine", "--seeds", "1"])
    assert common.command_line() == "python benchmarks/ctr.py --runs runs/mine --seeds 1"  # inside: kept
    monkeypatch.setattr(sys, "argv", ["benchmarks/peer_recbole.py", "--work", str(tmp_path / "w"), "--seed", "1",
                                      f"--work={tmp_path}", "--runs"])  # a scratch folder, and a flag without value
    assert common.command_line() == "python benchmarks/peer_recbole.py --seed 1 --runs"
    assert common.shown_path(outside / "x-seed1" / "pretrain", outside) == "runs/bench/x-seed1/pretrain"
    assert common.shown_path(common.REPO / "runs" / "a", outside) == str(Path("runs") / "a")
    assert common.shown_path("/somewhere/else", outside) == "/somewhere/else"  # not a run folder: as given


def test_absolute_paths_in_a_recorded_config_are_shown_as_run_folders(tmp_path):
    load_benchmark("ctr")
    import common

    outside = tmp_path / "elsewhere" / "runs"
    cfg = {"model": {"pretrained": str(outside / "x-seed1" / "pretrain"), "d_model": 64},
           "data": {"path": "data_cache/ml-1m"}, "stages": ["finetune"], "sid": {"table": str(common.REPO / "t")}}
    shown = common.shown_config(cfg, outside)
    assert shown["model"] == {"pretrained": "runs/bench/x-seed1/pretrain", "d_model": 64}
    assert shown["data"] == cfg["data"] and shown["stages"] == ["finetune"] and shown["sid"]["table"] == "t"
