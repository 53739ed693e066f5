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
