"""``--add-seeds``: a later sitting adds seeds to a committed record; the table equals the one a single run of all
seeds writes, and joining a different experiment is refused before anything is trained or written."""

from __future__ import annotations

import json
import sys

import pytest
import yaml

from tests.conftest import load_benchmark, tiny_cfg


@pytest.fixture
def bench(tmp_path, monkeypatch, toy_dir):
    acc = load_benchmark("accuracy")
    import common

    monkeypatch.setattr(common, "RESULTS", tmp_path / "results")
    recipe = tmp_path / "toy-sasrec.yaml"
    recipe.write_text(yaml.safe_dump(tiny_cfg(train={"epochs": 1})))

    def run(*extra: str, runs: str = "runs") -> dict:
        monkeypatch.setattr(sys, "argv", ["benchmarks/accuracy.py", "--recipe", str(recipe), "--data", str(toy_dir),
                                          "--runs", str(tmp_path / runs), *extra])
        acc.main()
        return json.loads((tmp_path / "results" / f"toy-sasrec__{toy_dir.name}.json").read_text())

    return run


def test_added_seeds_give_the_table_of_one_run(bench):
    whole = bench("--seeds", "1", "2", runs="whole")
    first = bench("--seeds", "1", "--replace", runs="parts")  # the 2-seed record above starts over
    assert first["seeds"] == [1]
    both = bench("--seeds", "2", "--add-seeds", "--set", "train.num_threads=1", runs="parts")  # operational: allowed
    assert both["seeds"] == [1, 2]
    assert both["metrics_mean"] == pytest.approx(whole["metrics_mean"])
    assert both["metrics_std"] == pytest.approx(whole["metrics_std"])
    assert both["metrics_std"]["ndcg@10"] > 0  # two seeds, not one counted twice
    assert [r["seed"] for r in both["per_seed"]] == [1, 2]
    assert all(r["commit"] and r["date"] for r in both["per_seed"])
    assert both["train_seconds_per_seed"] == [r["train_seconds"] for r in both["per_seed"]]


def test_joining_another_experiment_is_refused(bench, tmp_path):
    bench("--seeds", "1")
    record = tmp_path / "results" / "toy-sasrec__toy.json"
    before = record.read_bytes()
    with pytest.raises(SystemExit, match=r"seed\(s\) \[1\] already in toy-sasrec__toy.json"):
        bench("--seeds", "1", "--add-seeds")
    with pytest.raises(SystemExit, match=r"overrides=\[\], not \['train.lr=0.01'\]"):
        bench("--seeds", "2", "--add-seeds", "--set", "train.lr=0.01")
    assert not (tmp_path / "runs" / "toy-sasrec__toy-seed2").exists()  # refused before training
    with pytest.raises(SystemExit, match="no record toy-sasrec__other.json"):
        bench("--seeds", "2", "--add-seeds", "--name", "toy-sasrec__other")
    assert record.read_bytes() == before and len(list(record.parent.iterdir())) == 1


def test_a_config_that_differs_apart_from_the_seed_is_named():
    load_benchmark("accuracy")
    import seeds

    old = {"train": {"seed": 1, "lr": 0.001, "num_threads": 2}, "model": {"pretrained": "runs/bench/x-seed1/pre"}}
    same = {"train": {"seed": 2, "lr": 0.001, "num_threads": 1, "new_knob": 3},
            "model": {"pretrained": "runs/bench/x-seed2/pre"}}
    assert seeds.config_difference(old, same) is None
    assert seeds.config_difference(old, {**same, "train": {**same["train"], "lr": 0.01}}) == \
        "train.lr: 0.001 there, 0.01 here"
    rec = {"recipe": "r.yaml", "data_fingerprint": "abc", "protocol": {"best_epoch": 3, "split": "loo"},
           "config": old, "commit": "c0", "date": "2026-12-01", "per_seed": [{"seed": 1, "metrics": {}}]}
    with pytest.raises(SystemExit, match="data fingerprint def differs"):
        seeds.joined(rec, [], data_fingerprint="def", protocol={"split": "loo"}, config=same)
    with pytest.raises(SystemExit, match="split: 'loo' there, 'temporal' here"):
        seeds.joined(rec, [], data_fingerprint="abc", protocol={"split": "temporal"}, config=same)
    rows = seeds.joined(rec, [{"seed": 2, "metrics": {}}], data_fingerprint="abc",
                        protocol={"best_epoch": 9, "split": "loo"}, config=same)
    assert [(r["seed"], r["commit"]) for r in rows][0] == (1, "c0") and rows[1]["commit"]


def test_a_record_is_not_replaced_by_fewer_seeds_and_no_record_writes_none(bench, tmp_path):
    """A call that would drop seeds from a record is refused before training; --replace starts it over; seeds
    trained apart with --no-record are recorded by one later call (which only re-evaluates their finished runs)."""
    bench("--seeds", "1", "2")
    record = tmp_path / "results" / "toy-sasrec__toy.json"
    before = record.read_bytes()
    with pytest.raises(SystemExit, match=r"holds seed\(s\) \[1\] that --seeds 2 does not train"):
        bench("--seeds", "2")
    assert record.read_bytes() == before
    assert bench("--seeds", "1", "2")["seeds"] == [1, 2]  # the same seeds again: rewritten, nothing lost
    assert bench("--seeds", "2", "--replace")["seeds"] == [2]
    record.unlink()
    with pytest.raises(FileNotFoundError):
        bench("--seeds", "3", "--no-record", runs="apart")
    assert (tmp_path / "apart" / "toy-sasrec__toy-seed3" / "results" / "test.json").exists()
    assert bench("--seeds", "3", runs="apart")["seeds"] == [3]
