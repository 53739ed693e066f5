"""`genrec plot`: PNG learning curves of runs, a leaderboard of records, SID code usage, PGSA's kept share."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from genrec.cli import main
from genrec.eval.plots import read_curves

RESULTS = Path(__file__).resolve().parents[2] / "benchmarks" / "results"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _pngs(out: str) -> list[Path]:
    paths = [Path(line) for line in out.strip().splitlines()]
    for p in paths:
        data = p.read_bytes()
        assert data[:8] == PNG_MAGIC and len(data) > 5000, p  # a real picture, not an empty canvas
    return paths


def test_learning_curves_are_the_runs_epoch_records(runs):
    recs = [json.loads(line) for line in (runs.sasrec / "metrics.jsonl").read_text().splitlines()]
    ends = [r for r in recs if "train_loss_epoch" in r]
    c = read_curves(runs.sasrec)
    assert c.epoch.tolist() == [r["epoch"] for r in ends]
    assert c.loss.tolist() == [r["train_loss_epoch"] for r in ends]
    assert np.allclose(c.seconds, np.cumsum([r["epoch_seconds"] for r in ends]))
    assert c.stop_metric == "valid/ndcg@10"  # the run's early-stopping stamp
    assert c.valid["valid/ndcg@10"].tolist() == [r["valid/ndcg@10"] for r in ends]


def test_plot_writes_learning_curves_of_overlaid_runs(runs, capsys, tmp_path):
    pytest.importorskip("matplotlib", reason="genrec plot needs the plot extra (matplotlib)")
    before = sorted(p.name for p in runs.hstu.iterdir())
    assert main(["plot", str(runs.sasrec), str(runs.hstu), "--out", str(tmp_path)]) == 0
    paths = _pngs(capsys.readouterr().out)
    assert [p.name for p in paths] == ["learning-curves-epoch.png", "learning-curves-seconds.png"]
    assert sorted(p.name for p in runs.hstu.iterdir()) == before  # nothing written into a run
    assert main(["plot", str(runs.sasrec), "--metric", "hr@5", "--out", str(tmp_path / "hr")]) == 0
    assert len(_pngs(capsys.readouterr().out)) == 2
    assert main(["plot", str(runs.sasrec), "--metric", "auc", "--out", str(tmp_path)]) == 2
    assert "auc" in capsys.readouterr().err


def test_plot_leaderboard_pgsa_and_sid_usage(runs, capsys, tmp_path):
    pytest.importorskip("matplotlib", reason="genrec plot needs the plot extra (matplotlib)")
    from genrec.sid.codebook import SIDTable

    rng = np.random.default_rng(0)
    table = SIDTable.build(np.arange(1, 201), rng.integers(0, 16, (200, 2)), (16, 16), quantizer="test")
    table.save(tmp_path / "sids.parquet")
    records = [RESULTS / f"{n}__beauty.json" for n in ("sasrec-beauty", "hstu-beauty", "popularity")]
    assert main(["plot", "--records", *map(str, records), "--metric", "ndcg@10", "--sid",
                 str(tmp_path / "sids.parquet"), "--pgsa", str(RESULTS / "pgsa__cpu.json"),
                 "--out", str(tmp_path)]) == 0
    names = [p.name for p in _pngs(capsys.readouterr().out)]
    assert names == ["leaderboard-ndcg-10.png", "sid-usage-sids.png", "pgsa-kept-share.png"]
    # runs are leaderboard entries too, under the same protocol check as compare
    assert main(["plot", "--records", str(runs.sasrec), str(runs.sasrec_keep_history), "--out", str(tmp_path)]) == 2
    assert "exclude_history" in capsys.readouterr().err


def test_plot_refuses_what_it_cannot_draw_in_one_line(runs, capsys, tmp_path):
    pytest.importorskip("matplotlib", reason="genrec plot needs the plot extra (matplotlib)")
    for argv, needle in ((["plot", str(tmp_path)], "not a genrec run folder"),
                         (["plot", "--sid", str(runs.sasrec)], "no SID table"),
                         (["plot", "--pgsa", str(RESULTS / "sasrec-beauty__beauty.json")], "kept_columns"),
                         (["plot"], "give run folders")):
        assert main([*argv, "--out", str(tmp_path / "x")]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and needle in err, err
    assert not (tmp_path / "x").exists()


def test_plot_without_matplotlib_says_how_to_install_it(runs, capsys, monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as if the extra were not installed
    assert main(["plot", str(runs.sasrec), "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "pip install 'genrec[plot]'" in err
