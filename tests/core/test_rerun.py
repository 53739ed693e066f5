"""Running a finished run again (issue 20, defect 2): more epochs continue it, anything else leaves it and its
record as they are, and `config.json` always describes the weights beside it."""

import json

import pytest
import torch

from genrec.cli import main
from genrec.config import config_from_dict
from genrec.errors import CheckpointError
from genrec.train.run import train_run
from genrec.train.trainer import Trainer
from tests.conftest import latest_state, latest_weights, tiny_cfg


def recorded_epochs(run) -> int:
    return json.loads((run / "config.json").read_text())["config"]["train"]["epochs"]


def test_more_epochs_continue_a_finished_run_to_the_weights_of_one_longer_run(toy, tmp_path, capsys):
    """Before: the 2-epoch weights stayed, the old result was printed, and config.json said 3 epochs."""
    train_run(config_from_dict(tiny_cfg("sasrec", train={"epochs": 2})), tmp_path / "run", dataset=toy)
    res = train_run(config_from_dict(tiny_cfg("sasrec", train={"epochs": 3})), tmp_path / "run", dataset=toy)
    assert latest_state(tmp_path / "run")["epoch"] == recorded_epochs(tmp_path / "run") == 3
    assert res["train"]["epoch"] == 3 and res["config"]["train"]["epochs"] == 3
    assert "continuing the finished 2-epoch run" in capsys.readouterr().err
    once = train_run(config_from_dict(tiny_cfg("sasrec", train={"epochs": 3})), tmp_path / "once", dataset=toy)
    a, b = latest_weights(tmp_path / "run"), latest_weights(tmp_path / "once")
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert res["metrics"] == once["metrics"]


def test_a_finished_run_asked_for_fewer_epochs_keeps_its_weights_and_record(toy, tmp_path, capsys):
    cfg = config_from_dict(tiny_cfg("sasrec", train={"epochs": 2}))
    first = train_run(cfg, tmp_path / "run", dataset=toy)
    record = (tmp_path / "run" / "config.json").read_bytes()
    fewer = config_from_dict(tiny_cfg("sasrec", train={"epochs": 1, "lr": 0.01}))
    again = train_run(fewer, tmp_path / "run", dataset=toy)
    assert (tmp_path / "run" / "config.json").read_bytes() == record
    assert again["metrics"] == first["metrics"] and latest_state(tmp_path / "run")["epoch"] == 2
    assert ("holds a run finished at epoch 2; evaluating its best weights (raise train.epochs to train it on; "
            "ignored here: train.lr is 0.01, recorded 0.001)") in capsys.readouterr().err


def test_more_epochs_after_an_early_stop_are_refused_in_one_line(toy_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(Trainer, "validate", lambda self: ({"ndcg@10": 0.5}, 0.5))  # never improves after epoch 1
    sets = ["model.d_model=16", "model.num_layers=1", "data.max_len=20", "train.batch_size=32", "train.patience=1",
            "train.progress=false", "train.tensorboard=false", "objective.num_negatives=8", f"data.path={toy_dir}"]
    run = tmp_path / "run"
    assert main(["train", "--out", str(run), "--set", *sets, "train.epochs=5"]) == 0
    assert latest_state(run)["epoch"] == 2  # stopped by patience
    record = (run / "config.json").read_bytes()
    capsys.readouterr()
    # the same command again is a finished run: its best weights are evaluated (before: refused as "more epochs")
    assert main(["train", "--out", str(run), "--set", *sets, "train.epochs=5"]) == 0
    assert "holds a run finished at epoch 2" in capsys.readouterr().err
    assert main(["train", "--out", str(run), "--set", *sets, "train.epochs=10"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "stopped early at epoch 2 of 5" in err[0] and "--no-resume" in err[0], err
    assert (run / "config.json").read_bytes() == record
    assert main(["train", "--out", str(run), "--no-resume", "--set", *sets, "train.epochs=10"]) == 0  # afresh
    assert recorded_epochs(run) == 10


def test_continuing_keeps_every_other_setting(toy, tmp_path):
    train_run(config_from_dict(tiny_cfg("sasrec", train={"epochs": 1})), tmp_path / "run", dataset=toy)
    record = (tmp_path / "run" / "config.json").read_bytes()
    other = config_from_dict(tiny_cfg("sasrec", train={"epochs": 2, "lr": 0.01}))
    with pytest.raises(CheckpointError, match=r"train.lr is 0.01, recorded 0.001.*another --out"):
        train_run(other, tmp_path / "run", dataset=toy)
    assert (tmp_path / "run" / "config.json").read_bytes() == record
    # call knobs (device, threads, progress, budgets) are no training settings: the run continues
    knobs = config_from_dict(tiny_cfg("sasrec", train={"epochs": 2, "num_threads": 1, "progress": True,
                                                       "max_seconds": 1000.0}))
    assert train_run(knobs, tmp_path / "run", dataset=toy)["train"]["epoch"] == 2 == recorded_epochs(tmp_path / "run")
