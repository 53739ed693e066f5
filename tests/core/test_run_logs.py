"""What a run records about itself (issue 20, defect 7): reading a run changes nothing in it; the logs use one
epoch convention, carry the learning rate of every kind and the run's hyper-parameters."""

import json
from pathlib import Path

import pytest

from genrec.cli import main
from genrec.config import config_from_dict
from genrec.data.schema import load_dataset, write_dataset
from genrec.train.run import train_run
from tests.conftest import tiny_cfg


def snapshot(run: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(run)): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(run.rglob("*"))}


def test_evaluate_and_recommend_leave_a_generator_run_as_it_was(tmp_path, capsys):
    """Before: every `genrec evaluate` of a generator run added an empty TensorBoard file to it."""
    from tests.tiger.conftest import TINY_MODEL, toy_sequences, toy_table

    ds = toy_sequences()
    data = write_dataset(tmp_path / "data", ds.interactions, ds.items, ds.manifest)
    toy_table().save(tmp_path / "sid" / "sid_table.parquet")
    raw = {"model": dict(TINY_MODEL), "data": {"path": str(data), "max_len": 20},
           "sid": {"table": str(tmp_path / "sid")}, "generator": {"beam_size": 5, "test_other_decoding": False},
           "train": {"epochs": 1, "batch_size": 32, "device": "cpu", "progress": False, "tensorboard": True,
                     "early_stop_metric": "ndcg@5"}, "eval": {"ks": [1, 5]}}
    run = tmp_path / "run"
    train_run(config_from_dict(raw), run, dataset=load_dataset(data))
    before = snapshot(run)
    assert any(name.startswith("tb/") for name in before)
    for argv in (["evaluate", str(run)], ["evaluate", str(run), "--json", "--split", "valid"],
                 ["recommend", str(run), "--user", "1", "-k", "3"]):
        assert main(argv) == 0, capsys.readouterr().err
    assert snapshot(run) == before


def test_logs_count_epochs_one_way_and_record_lr_and_hyper_parameters(toy, tmp_path):
    """Before: step records said epoch 0 inside the first epoch and its closing record epoch 1; a retriever's
    constant learning rate was never logged; no hyper-parameters reached TensorBoard."""
    pytest.importorskip("tensorboard", reason="the TensorBoard reader checks the hyper-parameters")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    cfg = config_from_dict(tiny_cfg("sasrec", train={"epochs": 2, "tensorboard": True, "lr": 0.002}))
    train_run(cfg, tmp_path / "run", dataset=toy)
    recs = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in recs if "train_loss" in r]
    ends = [r for r in recs if "train_loss_epoch" in r]
    assert [r["epoch"] for r in ends] == [1, 2] and all(r["lr"] == 0.002 for r in ends)
    per_epoch = len(steps) // 2
    assert [r["epoch"] for r in steps[:per_epoch]][-1] == 1.0 and 0 < steps[0]["epoch"] < 1
    assert all(1 < r["epoch"] <= 2 for r in steps[per_epoch:])
    acc = EventAccumulator(str(tmp_path / "run" / "tb"))
    acc.Reload()
    assert {"lr", "epoch", "valid/ndcg@10"} <= set(acc.Tags()["scalars"])
    content = acc.PluginTagToContent("hparams")
    start = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"]).session_start_info
    assert start.hparams["train.lr"].number_value == 0.002 and start.hparams["model.name"].string_value == "sasrec"
    exp = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/experiment"]).experiment
    assert [m.name.tag for m in exp.metric_infos] == ["valid/ndcg@10"]
