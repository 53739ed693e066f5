"""The run room and the evaluation room: `genrec evaluate` reproduces the record written at the end of training for
every kind, one results-record builder keeps every record's keys, and the metric registry selects what is computed."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from genrec.cli import main
from genrec.config import config_from_dict
from genrec.data.schema import write_dataset
from genrec.errors import CheckpointError, ConfigError
from genrec.eval.evaluate import evaluate_run
from genrec.eval.metrics import (
    CTR,
    GENERATION,
    METRICS,
    MULTI_TARGET,
    RETRIEVAL,
    Metric,
    check_stop_metric,
    metric_keys,
    metrics_from_ranks,
    register,
    select_metrics,
)
from genrec.eval.multibehavior import multi_target_metrics
from genrec.eval.ranking import ranking_metrics
from genrec.eval.record import results_record
from genrec.runs.kinds import MULTI_BEHAVIOR
from genrec.runs.layout import results_path
from genrec.runs.open import open_run
from tests.conftest import make_toy
from tests.gamer.conftest import TINY as GAMER_TINY
from tests.gamer.conftest import cycle_events, make_dataset
from tests.gamer.conftest import toy_table as gamer_table
from tests.hpgr.conftest import make_ctr_toy
from tests.tiger.conftest import TINY_MODEL as TIGER_TINY
from tests.tiger.conftest import toy_sequences
from tests.tiger.conftest import toy_table as tiger_table

TRAIN = {"progress": False, "tensorboard": False, "patience": 0, "device": "cpu", "num_threads": 1}
STAMP = ["genrec_version", "commit", "date"]
# the keys of each kind's results/test.json as the code before the one builder wrote them, in order
RECORD_KEYS = {
    "retriever": ["model", "dataset", "data_fingerprint", "protocol", "metrics", "config", *STAMP,
                  "metrics_other_exclusion", "train", "device"],
    "ranker": ["model", "dataset", "data_fingerprint", "protocol", "metrics", "config", *STAMP, "train", "device"],
    "generator": ["model", "dataset", "data_fingerprint", "sid_fingerprint", "protocol", "metrics", "config",
                  "generator", *STAMP, "metrics_other_decoding", "sid_health", "train", "device"],
    "gamer": ["model", "dataset", "data_fingerprint", "sid_fingerprint", "protocol", "metrics", "eval_seconds",
              "train_seconds", "num_parameters", "config", "multibehavior", *STAMP, "train", "device"],
}
PROTOCOL_KEYS = {
    "retriever": ["task", "split", "evaluated_on", "candidates", "exclude_history", "history_window", "ks",
                  "early_stopping", "best_epoch"],
    "ranker": ["task", "evaluated_on", "labels", "split", "candidates", "history_window", "early_stopping",
               "best_epoch"],
    "gamer": ["task", "split", "evaluated_on", "behavior_levels", "headline_behavior", "targets", "candidates",
              "candidate_mode", "history_window", "min_history", "ks", "early_stopping", "best_epoch"],
}
PROTOCOL_KEYS = {kind: [*keys, "tie_order"] for kind, keys in PROTOCOL_KEYS.items()}  # stamped by results_record
PROTOCOL_KEYS["generator"] = PROTOCOL_KEYS["retriever"]
TRAINING_ONLY = {"metrics_other_exclusion", "metrics_other_decoding", "sid_health", "device"}


def _recipes(root: Path) -> dict[str, dict]:
    """One tiny recipe per kind, over datasets written under ``root``."""
    for name, ds in (("toy", make_toy()), ("ctr", make_ctr_toy()), ("tiger", toy_sequences(num_users=30)),
                     ("gamer", make_dataset(cycle_events(num_users=12, seed=5)))):
        write_dataset(root / name, ds.interactions, ds.items, ds.manifest, ds.users)
    tiger_table().save(root / "tiger_sids.json")
    gamer_table().save(root / "gamer_sids.json")
    small = {"d_model": 16, "num_layers": 1, "num_heads": 1}
    return {
        "retriever": {"model": {"name": "sasrec", **small}, "data": {"path": str(root / "toy"), "max_len": 20},
                      "objective": {"num_negatives": 16}, "train": {"epochs": 2, "batch_size": 32, **TRAIN},
                      "eval": {"ks": [1, 5, 10]}},
        "ranker": {"model": {"name": "hstu_ranker", **small, "dropout": 0.0, "linear_dropout": 0.0},
                   "data": {"path": str(root / "ctr"), "max_len": 16}, "ranking": {"labels": "ratings"},
                   "train": {"epochs": 2, "batch_size": 64, "lr": 0.01, **TRAIN}},
        "generator": {"model": TIGER_TINY, "data": {"path": str(root / "tiger"), "max_len": 20},
                      "sid": {"table": str(root / "tiger_sids.json")}, "generator": {"warmup_steps": 1000, "beam_size": 5},
                      "train": {"epochs": 2, "batch_size": 64, "lr": 0.01, **TRAIN}, "eval": {"ks": [1, 5]}},
        "gamer": {"model": {"name": "gamer", **GAMER_TINY}, "data": {"path": str(root / "gamer"), "max_len": 10},
                  "train": {"epochs": 2, "batch_size": 16, "lr": 5e-3, **TRAIN}, "eval": {"ks": [1, 5]},
                  "generator": {"beam_size": 5}, "sid": {"table": str(root / "gamer_sids.json")},
                  "multibehavior": {"session_gap": 1800, "augment": 1, "early_stop": "buy/ndcg@5"}},
    }


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """A tiny run of each kind, trained through `genrec train` (which writes results/test.json)."""
    root = tmp_path_factory.mktemp("eval_room")
    out = {}
    for kind, raw in _recipes(root).items():
        recipe = root / f"{kind}.yaml"
        recipe.write_text(yaml.safe_dump(raw))
        assert main(["train", str(recipe), "--out", str(root / kind)]) == 0
        out[kind] = root / kind
    return out


@pytest.mark.parametrize("kind", ["retriever", "ranker", "generator", "gamer"])
def test_evaluate_reproduces_the_training_record(runs, kind, capsys):
    """`genrec evaluate --json` and evaluate_run give exactly the metrics (and protocol) of results/test.json."""
    saved = json.loads(results_path(runs[kind]).read_text())
    assert list(saved) == RECORD_KEYS[kind] and list(saved["protocol"]) == PROTOCOL_KEYS[kind]
    capsys.readouterr()
    assert main(["evaluate", str(runs[kind]), "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["metrics"] == saved["metrics"] and shown["model"] == saved["model"]
    res = evaluate_run(runs[kind])
    assert res["metrics"] == saved["metrics"] and res["protocol"] == saved["protocol"]
    assert list(res) == [k for k in saved if k not in TRAINING_ONLY]  # one builder: the same keys, same order
    assert res["train"] == saved["train"] and res["config"] == saved["config"]
    if kind == "retriever":  # what `evaluate --json` has always shown of a retriever's protocol
        assert list(shown["protocol"]) == ["split", "evaluated_on", "candidates", "exclude_history", "history_window"]
    else:
        assert shown["protocol"] == saved["protocol"]


def test_evaluate_prints_each_kind(runs, capsys):
    for kind, needle in (("retriever", "full catalogue, exclude_history=True"), ("ranker", "auc"),
                         ("generator", "beam list"), ("gamer", "merged")):
        capsys.readouterr()
        assert main(["evaluate", str(runs[kind])]) == 0
        assert needle in capsys.readouterr().out


def test_evaluate_other_settings_match_the_recorded_ones(runs):
    """The other history exclusion / decoding recorded at the end of training is what evaluate_run gives."""
    saved = json.loads(results_path(runs["retriever"]).read_text())
    other = saved["metrics_other_exclusion"]
    assert evaluate_run(runs["retriever"], exclude_history=other["exclude_history"])["metrics"] == other["metrics"]
    saved = json.loads(results_path(runs["generator"]).read_text())
    other = saved["metrics_other_decoding"]
    assert evaluate_run(runs["generator"], constrained=other["constrained"])["metrics"] == other["metrics"]


def test_evaluate_rescores_a_multi_behavior_runs_history_on_request(runs, capsys):
    """`genrec evaluate --rescore-history N` merges the users' recent items into GAMER's beams and says so in the
    protocol; the recipe's own setting (0) stays the default, and a negative N is refused by name."""
    saved = json.loads(results_path(runs["gamer"]).read_text())
    capsys.readouterr()
    assert main(["evaluate", str(runs["gamer"]), "--rescore-history", "5", "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert "5 recent history items scored exactly" in shown["protocol"]["candidates"]
    assert "scored exactly" not in saved["protocol"]["candidates"]
    assert shown["metrics"]["headline"]["num_users"] == saved["metrics"]["headline"]["num_users"]
    assert main(["evaluate", str(runs["gamer"]), "--rescore-history", "-1"]) == 2
    assert "rescore_history" in capsys.readouterr().err


def test_open_run_gives_each_kind_its_evaluation_data(runs):
    ranker = open_run(runs["ranker"])
    assert ranker.kind == "ranker" and len(ranker.data.part("test")) > 0 and ranker.features is None
    gamer = open_run(runs["gamer"])
    assert gamer.kind == MULTI_BEHAVIOR and gamer.levels is not None and gamer.data.levels.names == gamer.levels.names
    assert gamer.sids is not None and gamer.sids.fingerprint == gamer.record["sid_fingerprint"]
    tiger = open_run(runs["generator"], weights="last")
    assert tiger.kind == "generator" and not tiger.model.training and tiger.state["finished"]
    code = main(["recommend", str(runs["ranker"]), "--history", "i1,i2"])
    assert code == 2  # a ranker scores given candidates: a one-line error, not a traceback


def test_recommend_on_a_ranker_says_it_scores_candidates_and_how(runs, capsys):
    for how in (["--history", "i1,i2"], ["--user", "1"]):
        capsys.readouterr()
        assert main(["recommend", str(runs["ranker"]), *how]) == 2
        err = [x for x in capsys.readouterr().err.splitlines() if x.strip()]
        assert len(err) == 1 and "is a ranker: it scores candidates you give" in err[0], err
        assert "genrec export" in err[0] and "POST /score" in err[0] and ".score(history, candidates)" in err[0]


def test_open_run_refuses_a_folder_without_a_record(tmp_path):
    with pytest.raises(CheckpointError, match="not a genrec run folder"):
        open_run(tmp_path)


# -- the metric registry --------------------------------------------------------------------------------


def test_hr_and_hit_are_one_registry_entry():
    assert select_metrics(["hit"], RETRIEVAL) == select_metrics(["hr"], RETRIEVAL) == ("hr",)
    assert METRICS["hr"].keys(RETRIEVAL, [5]) == ["hr@5"] and METRICS["hr"].keys(MULTI_TARGET, [5]) == ["hit@5"]
    with pytest.raises(ValueError, match="hit"):
        register(Metric("hit", (RETRIEVAL,), "a second hit rate"))
    ranked = np.array([[3, 1], [2, 4]])
    assert set(multi_target_metrics(ranked, [np.array([1]), np.array([9])], [1, 2], ["hit"])) == {"hit@1", "hit@2"}


def test_default_selection_is_every_metric_of_the_kind():
    assert select_metrics([], RETRIEVAL) == ("hr", "recall", "ndcg", "mrr")
    assert select_metrics([], GENERATION) == ("hr", "recall", "ndcg", "mrr", "invalid_rate")
    assert select_metrics([], CTR) == ("auc", "gauc", "logloss")
    assert select_metrics([], MULTI_TARGET) == ("hr", "recall", "ndcg", "invalid_rate")
    assert metric_keys(select_metrics([], GENERATION), GENERATION, [5], stop_only=True) == [
        "hr@5", "recall@5", "ndcg@5", "mrr"]  # invalid_rate is a diagnostic, never an early-stopping metric


def test_selection_limits_what_is_computed_and_recorded():
    ranks = np.array([0, 3, 12])
    assert set(metrics_from_ranks(ranks, [1, 5], ["ndcg", "mrr"])) == {"ndcg@1", "ndcg@5", "mrr", "num_queries"}
    full = metrics_from_ranks(ranks, [1, 5])
    assert metrics_from_ranks(ranks, [1, 5], ["ndcg"])["ndcg@5"] == full["ndcg@5"]
    m = ranking_metrics(np.array([1, 0, 1]), np.array([0.3, 0.1, 0.2]), np.array([1, 1, 2]), select=["auc"])
    assert set(m) == {"auc", "num_impressions", "positive_rate"}


def test_unknown_or_foreign_metrics_name_eval_metrics(tmp_path, toy):
    from genrec.train.trainer import Trainer
    from tests.conftest import tiny_cfg

    with pytest.raises(ConfigError, match="eval.metrics: unknown metric 'precision'"):
        select_metrics(["precision"], RETRIEVAL)
    with pytest.raises(ConfigError, match="eval.metrics: 'auc' is not computed by a retrieval evaluation"):
        select_metrics(["auc"], RETRIEVAL)
    with pytest.raises(ConfigError, match="eval.metrics: unknown metric 'precision'"):  # when the trainer starts
        Trainer(config_from_dict(tiny_cfg(eval={"metrics": ["precision"]})), tmp_path / "r", toy)


def test_a_selection_shapes_the_training_record(tmp_path, toy):
    from genrec.train.run import train_run
    from tests.conftest import tiny_cfg

    raw = tiny_cfg(eval={"metrics": "ndcg,mrr"}, train={"epochs": 1})
    res = train_run(config_from_dict(raw), tmp_path / "r", dataset=toy)
    assert set(res["metrics"]) == {"ndcg@1", "ndcg@5", "ndcg@10", "mrr", "num_queries"}
    assert res["config"]["eval"]["metrics"] == ["ndcg", "mrr"]


def test_early_stop_metric_must_be_selected(tmp_path, toy):
    from genrec.train.trainer import Trainer
    from tests.conftest import tiny_cfg

    with pytest.raises(ConfigError) as err:
        Trainer(config_from_dict(tiny_cfg(eval={"metrics": ["hr", "mrr"]})), tmp_path / "r", toy)
    msg = str(err.value)
    assert "train.early_stop_metric 'ndcg@10'" in msg and "eval.metrics" in msg and "\n" not in msg
    check_stop_metric("hit@5", ["hit"], MULTI_TARGET, [1, 5])
    with pytest.raises(ConfigError, match="multibehavior.early_stop"):
        check_stop_metric("hr@5", ["hit"], MULTI_TARGET, [1, 5], key="multibehavior.early_stop")
    with pytest.raises(ConfigError, match="train.early_stop_metric 'logloss'.*eval.metrics"):
        check_stop_metric("logloss", ["auc", "gauc"], CTR, [])


def test_results_record_builder_keeps_the_spine(toy):
    cfg = config_from_dict({})
    rec = results_record("m", toy, {"task": "t"}, {"x": 1.0}, cfg, ids={"sid_fingerprint": "s"},
                         sections={"generator": {}}, eval_seconds=1.0)
    assert list(rec) == ["model", "dataset", "data_fingerprint", "sid_fingerprint", "protocol", "metrics",
                         "eval_seconds", "config", "generator", *STAMP]
    assert rec["dataset"] == "toy" and rec["data_fingerprint"] == toy.fingerprint and rec["config"] == cfg.to_dict()
    assert "config" not in results_record("m", toy, {}, {}, None)


def test_evaluate_splits_a_multi_behavior_runs_targets_into_repeat_and_new(runs, capsys):
    """`genrec evaluate --repeat-breakdown`: the headline metrics stay those of the record; each behavior gains its
    repeat and new parts (printed as their own rows); other kinds refuse the flag in one line."""
    saved = json.loads(results_path(runs["gamer"]).read_text())
    res = evaluate_run(runs["gamer"], repeat_breakdown=True)
    buy = dict(res["metrics"]["per_behavior"]["buy"])
    parts = {p: buy.pop(p) for p in ("repeat", "new")}
    assert buy == saved["metrics"]["per_behavior"]["buy"] and res["metrics"]["merged"] == saved["metrics"]["merged"]
    assert 0 < parts["new"]["num_users"] <= buy["num_users"] and "recall@5" in parts["new"]
    capsys.readouterr()
    assert main(["evaluate", str(runs["gamer"]), "--repeat-breakdown"]) == 0
    assert "buy:repeat" in capsys.readouterr().out
    with pytest.raises(ConfigError, match="only multi-behavior runs"):
        evaluate_run(runs["retriever"], repeat_breakdown=True)
