"""Ranker (CTR) trainer: learns a toy rule, resumes exactly, records the protocol, feeds features, and never
trains on validation or test impressions."""

from __future__ import annotations

import json
import sys
import types
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from genrec.config import config_from_dict
from genrec.data.features import CROSS_FEATURES
from genrec.data.schema import Dataset, load_dataset, write_dataset
from genrec.errors import CheckpointError, ConfigError
from genrec.eval.evaluate import evaluate_run
from genrec.eval.ranking import ranking_metrics
from genrec.models.base import Ranker
from genrec.models.registry import MODELS, register
from genrec.runs.ranking_data import build_ranking_data
from genrec.train.ranker import RankerTrainer, train_ranker_run
from tests.conftest import latest_state
from tests.hpgr.conftest import make_ctr_toy


def raw_cfg(**sections) -> dict:
    raw = {
        "model": {"name": "hstu_ranker", "d_model": 16, "num_layers": 1, "num_heads": 1, "dropout": 0.0,
                  "linear_dropout": 0.0},
        "data": {"max_len": 16},
        "ranking": {"labels": "ratings"},
        "train": {"epochs": 3, "batch_size": 64, "lr": 0.01, "progress": False, "tensorboard": False,
                  "patience": 0, "num_threads": 1, "device": "cpu", "seed": 3},
    }
    for k, v in sections.items():
        raw.setdefault(k, {}).update(v)
    return raw


@pytest.fixture(scope="module")
def toy(tmp_path_factory) -> Dataset:
    """The toy written to disk and loaded back, so run folders can reopen it by path."""
    ds = make_ctr_toy()
    out = write_dataset(tmp_path_factory.mktemp("data") / "ctr-toy", ds.interactions, ds.items, ds.manifest)
    return load_dataset(out)


@pytest.fixture(scope="module")
def trained(toy, tmp_path_factory):
    """One trained run (train_ranker_run) shared by the read-only checks."""
    out = tmp_path_factory.mktemp("ranker") / "run"
    res = train_ranker_run(config_from_dict(raw_cfg()), out, dataset=toy)
    return out, res


def _valid_log(out) -> list[dict]:
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    return [x for x in lines if "valid/auc" in x]


def test_learns_the_toy_rule_and_keeps_the_best_epoch(trained):
    out, res = trained
    log = _valid_log(out)
    assert len(log) == 3
    aucs = [x["valid/auc"] for x in log]
    assert max(aucs) > 0.8  # a perfect model gets ~0.9 (10% flipped labels), chance 0.5
    assert res["metrics"]["auc"] > 0.8 and res["metrics"]["gauc"] > 0.75
    state = json.loads((out / "config.json").read_text())
    assert state["impressions"]["labels"]["label"] == "rating >= 4"
    assert res["train"]["best_metric"] == max(aucs)
    assert res["protocol"]["best_epoch"] == 1 + int(np.argmax(aucs))


def test_results_record_has_the_protocol_and_metrics(trained, toy):
    out, res = trained
    for key in ("dataset", "model", "protocol", "metrics", "config", "commit", "date", "data_fingerprint"):
        assert key in res
    assert set(res["metrics"]) == {"auc", "gauc", "gauc_users", "logloss", "num_impressions", "positive_rate"}
    p = res["protocol"]
    assert p["task"] == "ranking (CTR)" and p["evaluated_on"] == "test" and p["tie_order"] == "stable"
    assert p["labels"]["source"] == "ratings" and p["split"]["valid_frac"] == 0.1 and p["split"]["test_frac"] == 0.1
    assert json.loads((out / "results" / "test.json").read_text())["metrics"] == res["metrics"]
    # reopening the folder for `genrec evaluate` gives the same numbers and writes nothing
    before = sorted(q.name for q in out.rglob("*"))
    again = evaluate_run(out, "test")
    assert again["metrics"] == res["metrics"]
    assert sorted(q.name for q in out.rglob("*")) == before


def test_metrics_are_computed_on_the_named_split(trained, toy):
    out, res = trained
    data = build_ranking_data(config_from_dict(raw_cfg()), toy)
    tr = RankerTrainer(config_from_dict(raw_cfg()), out, toy, readonly=True)
    assert tr.load_best()
    for which in ("test", "valid"):
        idx = data.part(which)
        want = ranking_metrics(data.imps.label[idx], tr.predict(idx), data.imps.user_id[idx])
        got = tr.evaluate(which)["metrics"]
        assert got["num_impressions"] == len(idx)
        assert got["gauc"] == pytest.approx(want["gauc"]) and got["logloss"] == pytest.approx(want["logloss"])
        assert got["gauc_users"] == want["gauc_users"]
    assert res["metrics"]["num_impressions"] == len(data.part("test")) != len(data.part("valid"))
    # the model prefers test scores in test order: shuffling the labels changes LogLoss, so order matters
    idx = data.part("test")
    shuffled = ranking_metrics(np.random.default_rng(0).permutation(data.imps.label[idx]), tr.predict(idx))
    assert shuffled["logloss"] > res["metrics"]["logloss"]


def test_training_batches_hold_only_training_impressions(toy, tmp_path):
    tr = RankerTrainer(config_from_dict(raw_cfg(train={"epochs": 1})), tmp_path / "run", toy)
    seen, orig = [], tr.batch

    def spy(idx):
        out = orig(idx)
        if tr.model.training:
            seen.append(np.asarray(idx))
            batch = out[0]
            real = torch.arange(batch.items.shape[1])[None, :] < batch.lengths[:, None]
            assert bool((batch.timestamps < batch.query_time[:, None])[real].all())  # strict past
        return out

    tr.batch = spy
    tr.fit()
    used = np.concatenate(seen)
    split = tr.data.split
    assert sorted(used.tolist()) == sorted(split.train.tolist())  # every training impression, once
    assert tr.data.imps.timestamp[used].max() < split.params["t_valid"] <= split.params["t_test"]
    assert not np.isin(used, np.concatenate([split.valid, split.test])).any()


def test_resume_after_interruption_matches_uninterrupted_run(toy, tmp_path):
    raw = raw_cfg(model={"dropout": 0.2}, train={"epochs": 2, "checkpoint_every": 4})
    RankerTrainer(config_from_dict(raw), tmp_path / "full", toy).fit()
    stop = raw_cfg(model={"dropout": 0.2}, train={"epochs": 2, "checkpoint_every": 4, "max_steps": 7})
    part = RankerTrainer(config_from_dict(stop), tmp_path / "part", toy)
    assert not part.fit()["finished"] and part.state["global_step"] == 7
    assert latest_state(tmp_path / "part")["step_in_epoch"] > 0  # stopped mid-epoch
    RankerTrainer(config_from_dict(raw), tmp_path / "part", toy).fit()

    def last(run):
        ck = run / "checkpoints" / (run / "checkpoints" / "latest").read_text().strip()
        return load_file(str(ck / "model.safetensors")), json.loads((ck / "state.json").read_text())

    (a, sa), (b, sb) = last(tmp_path / "full"), last(tmp_path / "part")
    assert sa["global_step"] == sb["global_step"] and sa["best_epoch"] == sb["best_epoch"]
    for k in a:
        assert torch.equal(a[k], b[k]), k
    best_a = load_file(str(tmp_path / "full" / "best" / "model.safetensors"))
    best_b = load_file(str(tmp_path / "part" / "best" / "model.safetensors"))
    assert all(torch.equal(best_a[k], best_b[k]) for k in best_a)


def test_logloss_early_stopping_minimises(toy, tmp_path):
    out = tmp_path / "run"
    tr = RankerTrainer(config_from_dict(raw_cfg(train={"epochs": 2, "early_stop_metric": "logloss"})), out, toy)
    summary = tr.fit()
    losses = [x["valid/logloss"] for x in _valid_log(out)]
    assert summary["best_metric"] == min(losses) and summary["best_epoch"] == 1 + int(np.argmin(losses))
    with pytest.raises(ConfigError, match="ndcg@10"):
        RankerTrainer(config_from_dict(raw_cfg(train={"early_stop_metric": "ndcg@10"})), tmp_path / "x", toy)


def test_observe_keeps_best_weights_and_counts_patience(toy, tmp_path):
    for metric, values, best in (("auc", [0.6, 0.7, 0.65, 0.7], 0.7), ("logloss", [0.6, 0.5, 0.55, 0.5], 0.5)):
        tr = RankerTrainer(config_from_dict(raw_cfg(train={"patience": 2, "early_stop_metric": metric})),
                           tmp_path / metric, toy)
        improved = []
        for epoch, v in enumerate(values, 1):
            with torch.no_grad():
                tr.model.head[-1].bias.fill_(float(epoch))  # mark the weights of each epoch
            improved.append(tr.observe(v, epoch))
        assert improved == [True, True, False, False]  # a tie is no improvement
        assert tr.state["best_metric"] == best and tr.state["best_epoch"] == 2 and tr.should_stop
        tr.load_best()
        assert float(tr.model.head[-1].bias.detach()) == 2.0
    with pytest.warns(UserWarning, match="NaN"):
        assert tr.observe(float("nan"), 5) is False


def test_run_folder_refuses_another_label_rule(trained, toy):
    out, _ = trained
    with pytest.raises(CheckpointError, match="impressions"):
        RankerTrainer(config_from_dict(raw_cfg(ranking={"rating_threshold": 5.0})), out, toy)


def test_behavior_labels_are_derived_and_stamped(tmp_path):
    ds = make_ctr_toy(num_users=40, behaviors=True)
    cfg = config_from_dict(raw_cfg(ranking={"labels": "auto", "window": "day", "min_history": 0}, train={"epochs": 1}))
    res = train_ranker_run(cfg, tmp_path / "run", dataset=ds)
    rule = res["protocol"]["labels"]
    assert rule["source"] == "behaviors" and rule["window"] == "day" and rule["positives"] == ["fav", "cart", "buy"]
    data = build_ranking_data(cfg, ds)
    assert len(data.imps) == int((ds.interactions.behavior == 0).sum())  # one impression per pv
    assert 0.25 < data.imps.label.mean() < 0.45  # the carted views (~1/3 liked +- noise) are the positives


# -- features hook ----------------------------------------------------------------------------------
CALLS: dict[str, list] = {"features": [], "train": 0, "eval": 0}


if "test_feature_ranker" not in MODELS:

    @register("test_feature_ranker")
    class FeatureRanker(Ranker):
        """A linear ranker on one side feature; checks the feature rows line up with the batch rows."""

        needs_features = True

        @dataclass
        class Config:
            pass

        def __init__(self, cfg: Config, num_items: int, max_len: int) -> None:
            super().__init__()
            self.item_bias = nn.Embedding(num_items + 1, 1)
            self.w = nn.Parameter(torch.zeros(1))

        def score(self, batch, candidates, features=None):
            assert features is not None
            assert torch.equal(features["query_time"], batch.query_time)  # row b is the batch's sample b
            CALLS["train" if self.training else "eval"] += 1
            return self.item_bias(candidates).squeeze(-1) + self.w * features["pos_frac"][:, None]


def test_features_hook_feeds_models_that_ask(toy, tmp_path, monkeypatch):
    def impression_features(dataset, imps, cutoff_time):
        CALLS["features"].append((dataset.fingerprint, len(imps), cutoff_time))
        return {"query_time": imps.timestamp.copy(),
                "pos_frac": np.linspace(0, 1, len(imps)).astype(np.float32)}

    monkeypatch.setitem(sys.modules, "genrec.data.features",
                        types.SimpleNamespace(impression_features=impression_features))
    CALLS.update(features=[], train=0, eval=0)
    raw = raw_cfg(train={"epochs": 1})
    raw["model"] = {"name": "test_feature_ranker"}
    cfg = config_from_dict(raw)
    res = train_ranker_run(cfg, tmp_path / "run", dataset=toy)
    data = build_ranking_data(cfg, toy)
    assert CALLS["features"] == [(toy.fingerprint, len(data.imps), data.t_test)]  # once, cut at the test start
    assert CALLS["train"] > 0 and CALLS["eval"] > 0  # the training step and the evaluation both read features
    assert res["metrics"]["num_impressions"] == len(data.part("test"))


def test_trainer_feeds_the_switch_and_a_reopened_run_reproduces(toy, tmp_path):
    """model.cross_features on the HSTU ranker: the trainer computes the impression features (off: it does not),
    trains on them, and `genrec evaluate` reopens the run with them to the same numbers."""
    on = raw_cfg(train={"epochs": 1})
    on["model"]["cross_features"] = True
    tr = RankerTrainer(config_from_dict(on), tmp_path / "probe", toy)
    assert tr.needs_features and set(CROSS_FEATURES) <= set(tr.features)
    assert RankerTrainer(config_from_dict(raw_cfg(train={"epochs": 1})), tmp_path / "off", toy).features is None
    res = train_ranker_run(config_from_dict(on), tmp_path / "run", dataset=toy)
    assert evaluate_run(tmp_path / "run", "test")["metrics"] == res["metrics"]  # the reopened run reads them too
    assert res["metrics"]["auc"] > 0.8


# -- seeded impression subsets (ranking.train_sample / eval_sample) ------------------------------------------
def test_impression_subsets_are_fixed_samples_of_each_part_the_same_for_every_model_and_seed():
    ds = make_ctr_toy()
    full = build_ranking_data(config_from_dict(raw_cfg()), ds)
    a = build_ranking_data(config_from_dict(raw_cfg(ranking={"train_sample": 100, "eval_sample": 40})), ds)
    b = build_ranking_data(config_from_dict(raw_cfg(model={"name": "mtgr"}, train={"seed": 7},
                                                    ranking={"train_sample": 200, "eval_sample": 40})), ds)
    for which, n in (("train", 100), ("valid", 40), ("test", 40)):
        got, whole = a.part(which), full.part(which)
        assert len(got) == n < len(whole) and set(got) <= set(whole)
        where = {int(v): i for i, v in enumerate(whole)}
        assert np.all(np.diff([where[int(v)] for v in got]) > 0)  # kept in the part's own order
        assert a.manifest()["split"][f"{which}_sample"] == {"kept": n, "of": len(whole), "seed": 20_260_101}
    assert np.array_equal(a.part("test"), b.part("test")) and np.array_equal(a.part("valid"), b.part("valid"))
    assert len(b.part("train")) == 200
    huge = build_ranking_data(config_from_dict(raw_cfg(ranking={"eval_sample": 10**9})), ds)
    assert np.array_equal(huge.part("test"), full.part("test")) and "test_sample" not in huge.manifest()["split"]


def test_a_negative_sample_size_is_refused_when_the_config_loads():
    with pytest.raises(ConfigError, match="ranking.eval_sample"):
        config_from_dict(raw_cfg(ranking={"eval_sample": -1}))
