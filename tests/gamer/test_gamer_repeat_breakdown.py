"""Repeat or new: each target is counted in exactly one part, by whether the user met it before the session, and
the split leaves the headline metrics as they were."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml

from genrec.data.multibehavior import BehaviorLevels, session_split
from genrec.eval.multibehavior import evaluate_behaviors, repeat_new_metrics
from genrec.eval.multibehavior_baselines import RecencyBaseline
from tests.conftest import load_benchmark
from tests.gamer.conftest import cycle_events, make_dataset, tiny_model


def test_targets_split_by_the_users_history():
    ranked = np.array([[5, 3, 7], [9, 2, 4]])  # (Q, K)
    targets = [np.array([3, 9]), np.array([4])]
    histories = [np.array([3, 1, 0]), np.array([6, 0, 0])]  # 0 = padding
    out = repeat_new_metrics(ranked, targets, histories, [1, 3])
    assert out["repeat"]["num_users"] == 1 and out["new"]["num_users"] == 2
    assert out["repeat"]["recall@1"] == 0.0 and out["repeat"]["recall@3"] == 1.0  # item 3 at rank 2
    assert out["repeat"]["ndcg@3"] == pytest.approx(1 / np.log2(3))
    assert out["new"]["recall@3"] == pytest.approx(0.5)  # 9 missed by query 0, 4 found by query 1
    none = repeat_new_metrics(ranked[:1], targets[:1], [np.array([1])], [1])
    assert none["repeat"] == {"num_users": 0} and none["new"]["num_users"] == 1


def test_breakdown_keeps_the_headline_and_recency_finds_no_new_item():
    ds = make_dataset(cycle_events(num_users=24, seed=3))
    split = session_split(ds.interactions, BehaviorLevels.from_manifest(ds.manifest), 1800)
    for model in (RecencyBaseline(10), tiny_model(2)):
        plain = evaluate_behaviors(model, split, "test", [3], [1, 5], beam_size=5)
        split_ev = evaluate_behaviors(model, split, "test", [3], [1, 5], beam_size=5, repeat_breakdown=True)
        buy = dict(split_ev.per_behavior["buy"])
        parts = {p: buy.pop(p) for p in ("repeat", "new")}
        assert buy == plain.per_behavior["buy"] and split_ev.merged == plain.merged
        n = buy["num_users"]
        assert parts["repeat"]["num_users"] > 0 and parts["new"]["num_users"] > 0
        assert max(parts["repeat"]["num_users"], parts["new"]["num_users"]) <= n
        assert parts["repeat"]["num_users"] + parts["new"]["num_users"] >= n
    assert parts is not None
    rec = evaluate_behaviors(RecencyBaseline(100), split, "test", [3], [1, 5], beam_size=5, repeat_breakdown=True)
    assert rec.per_behavior["buy"]["new"]["hit@5"] == 0.0  # the heuristic lists history items only


def test_script_writes_one_row_per_variant(tmp_path, capsys):
    from genrec.data.schema import write_dataset

    bench = load_benchmark("repeat_breakdown")
    ds = make_dataset(cycle_events(num_users=8, seed=5))
    write_dataset(tmp_path / "data", ds.interactions, ds.items, ds.manifest)
    (tmp_path / "recency.yaml").write_text(yaml.safe_dump({"model": {"name": "recency"}, "data": {"max_len": 10},
                                                           "eval": {"ks": [1, 5, 10]}, "generator": {"beam_size": 10},
                                                           "multibehavior": {"session_gap": 1800}}))
    assert bench.main(["--data", str(tmp_path / "data"), "--recency", str(tmp_path / "recency.yaml"),
                       "--results", str(tmp_path / "res")]) == 0
    out = json.loads((tmp_path / "res" / "repeat-breakdown__data.json").read_text())
    assert [r["variant"] for r in out["metrics"]] == ["recency"] and out["behavior"] == "buy"
    assert out["model"] == "recency"
    row = out["metrics"][0]
    assert set(row) >= {"all", "repeat", "new"} and row["new"]["recall@10"] == 0.0
    assert "| recency | recency |" in capsys.readouterr().out
    assert bench.main(["--data", str(tmp_path / "data"), "--run", str(tmp_path / "missing")]) != 0
    table = load_benchmark("report").repeat_table([{**out, "_file": "repeat-breakdown__data.json"}])
    assert table.splitlines()[2].startswith("| data | recency | recency |") and len(table.splitlines()) == 3


def test_the_tiger_baseline_run_reopens_with_gamers_sid_file(tmp_path):
    from genrec.models.base import GENERATOR
    from genrec.runs.layout import SESSION_SID_FILE
    from genrec.runs.open import _run_sids
    from tests.gamer.conftest import toy_table

    table = toy_table()
    table.save(tmp_path / SESSION_SID_FILE)  # what the multi-behavior protocol writes for TIGER too
    assert _run_sids(tmp_path, {"sid_fingerprint": table.fingerprint}, GENERATOR).fingerprint == table.fingerprint
