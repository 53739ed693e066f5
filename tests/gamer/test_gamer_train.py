"""GAMER trainer and per-behavior metrics: a tiny model learns a toy multi-behavior rule; metrics by hand."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from genrec.config import config_from_dict
from genrec.data.multibehavior import MultiBehaviorConfig
from genrec.errors import CheckpointError, ConfigError
from genrec.eval.multibehavior import merge_behaviors, multi_target_metrics
from genrec.nn.optim import cosine_lr
from genrec.train.gamer import GamerTrainer
from tests.conftest import latest_state
from tests.gamer.conftest import TINY, cycle_events, make_dataset, toy_table


def test_multi_target_metrics_by_hand():
    ranked = np.array([[5, 9, 2, -1], [1, 2, 3, 4], [7, 9, 8, 6]])
    targets = [np.array([9, 7]), np.array([8]), np.array([9, 7, 6])]
    m = multi_target_metrics(ranked, targets, [1, 2, 4])
    g2 = 1 / math.log2(3)
    assert m["hit@1"].tolist() == [0.0, 0.0, 1.0] and m["hit@2"].tolist() == [1.0, 0.0, 1.0]
    assert m["recall@2"].tolist() == pytest.approx([0.5, 0.0, 2 / 3])
    assert m["recall@4"].tolist() == pytest.approx([0.5, 0.0, 1.0])
    assert m["ndcg@2"].tolist() == pytest.approx([g2 / (1 + g2), 0.0, 1.0])
    ideal4 = 1 + g2 + 0.5  # min(4, |T| = 3) relevant slots
    assert m["ndcg@4"][2] == pytest.approx((1 + g2 + 1 / math.log2(5)) / ideal4)
    merged = merge_behaviors({"buy": {"hit@1": 0.5, "num_users": 2}, "pv": {"hit@1": 0.0, "num_users": 6},
                              "fav": {"num_users": 0}})
    assert merged == {"hit@1": pytest.approx(0.125), "num_users": 8}


def test_cosine_schedule_warms_up_then_decays_to_zero():
    assert cosine_lr(0, 100, 1.0, 0.1) == pytest.approx(0.1)
    assert cosine_lr(9, 100, 1.0, 0.1) == pytest.approx(1.0)
    assert cosine_lr(55, 100, 1.0, 0.1) == pytest.approx(0.5)
    assert cosine_lr(100, 100, 1.0, 0.1) == pytest.approx(0.0)


def _cfg(**train):
    return config_from_dict({
        "model": {"name": "gamer", **TINY}, "data": {"max_len": 10},
        "train": {"epochs": 40, "batch_size": 16, "lr": 5e-3, "weight_decay": 0.0, "device": "cpu",
                  "tensorboard": False, "progress": False, "patience": 0, "seed": 1, "eval_every": 30, **train},
        "eval": {"ks": [1, 5], "batch_size": 64}, "generator": {"beam_size": 5}})


def test_tiny_gamer_overfits_a_toy_multi_behavior_set(tmp_path):
    ds = make_dataset(cycle_events(num_users=24, seed=0))
    opts = MultiBehaviorConfig(session_gap=1800, augment=2, warmup_ratio=0.05)
    tr = GamerTrainer(_cfg(epochs=30), tmp_path / "run", ds, toy_table(), opts)
    summary = tr.fit()
    assert summary["finished"] and summary["best_epoch"] == 30
    # every purchase of the training sequences is regenerated from the events before it
    sp, seqs = tr.split, tr.split.seqs
    prefixes = [tr.train_seqs.events(int(s)) for s in np.flatnonzero(~tr.train_seqs.augmented)]
    cut = [(ev[:j], ev[j]) for ev in prefixes for j in np.flatnonzero(sp.behaviors[ev] == 3) if j]
    res = tr.model.generate([seqs.items[h] for h, _ in cut], [sp.behaviors[h] for h, _ in cut], 3, beam_size=5, k=1)
    hits = res.items[:, 0].numpy() == seqs.items[[t for _, t in cut]]
    assert len(hits) > 40 and hits.mean() > 0.9, hits.mean()
    # the held-out test sessions follow the same rule: the next purchase ranks high (chance hit@5 = 5/12)
    rec = tr.evaluate("test")
    buy = rec["metrics"]["per_behavior"]["buy"]
    assert buy["num_users"] == 24 and buy["hit@5"] > 0.75, buy
    assert rec["metrics"]["headline"] == buy and rec["protocol"]["headline_behavior"] == "buy"
    per = rec["metrics"]["per_behavior"]
    assert rec["metrics"]["merged"]["num_users"] == sum(m["num_users"] for m in per.values())
    lines = [json.loads(s) for s in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert any("valid/loss" in r for r in lines)


def test_resume_is_exact_and_a_run_folder_keeps_its_settings(tmp_path):
    ds = make_dataset(cycle_events(num_users=10, seed=2))
    opts = MultiBehaviorConfig(session_gap=1800, augment=1)
    ref = GamerTrainer(_cfg(epochs=2, eval_every=1), tmp_path / "a", ds, toy_table(), opts)
    ref.fit()
    steps = ref.state["global_step"]
    first = GamerTrainer(_cfg(epochs=2, eval_every=1, max_steps=steps // 2 + 1), tmp_path / "b", ds, toy_table(), opts)
    assert not first.fit()["finished"]
    assert latest_state(tmp_path / "b")["step_in_epoch"] > 0  # stopped mid-epoch
    again = GamerTrainer(_cfg(epochs=2, eval_every=1), tmp_path / "b", ds, toy_table(), opts)
    assert again.resumed_from is not None
    again.fit()
    assert again.state["global_step"] == steps
    for (name, a), (_, b) in zip(ref.model.state_dict().items(), again.model.state_dict().items()):
        assert torch.equal(a, b), name
    with pytest.raises(CheckpointError, match="multibehavior"):
        GamerTrainer(_cfg(epochs=2), tmp_path / "b", ds, toy_table(), MultiBehaviorConfig(session_gap=1800))
    bad = _cfg(epochs=2)
    bad.generator.train_last = 5  # a next-item-prefix knob GAMER would ignore: refused, not ignored
    with pytest.raises(ConfigError, match="generator.train_last"):
        GamerTrainer(bad, tmp_path / "c", ds, toy_table(), opts)


def test_command_line_run_writes_a_results_record(tmp_path, capsys):
    import yaml

    from genrec.data.schema import write_dataset
    from genrec.train.gamer import main

    ds = make_dataset(cycle_events(num_users=8, seed=5))
    write_dataset(tmp_path / "data", ds.interactions, ds.items, ds.manifest)
    toy_table().save(tmp_path / "sids.json")
    recipe = {"source": "test", "model": {"name": "gamer", **TINY}, "data": {"path": str(tmp_path / "data"),
              "max_len": 10}, "train": {"epochs": 1, "device": "cpu", "tensorboard": False, "progress": False},
              "eval": {"ks": [1, 5]}, "generator": {"beam_size": 5}, "sid": {"table": str(tmp_path / "sids.json")}}
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(recipe))
    args = ["--config", str(tmp_path / "r.yaml"), "--out", str(tmp_path / "run"), "--set",
            "multibehavior.session_gap=1800", "multibehavior.augment=1"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "merged" in out and "buy" in out
    rec = json.loads((tmp_path / "run" / "results.json").read_text())
    assert rec["multibehavior"]["augment"] == 1 and set(rec["metrics"]["per_behavior"]) == {"pv", "fav", "cart", "buy"}
    assert main(args[:4] + ["--set", "multibehavior.candidate=all"]) == 2
    assert "multibehavior.candidate" in capsys.readouterr().err
    # a data folder that is not there: one line naming it, no traceback (the CLI's error policy)
    (tmp_path / "r2.yaml").write_text(yaml.safe_dump({**recipe, "data": {"path": str(tmp_path / "nodata")}}))
    assert main(["--config", str(tmp_path / "r2.yaml"), "--out", str(tmp_path / "run2")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "nodata" in err and "Traceback" not in err
