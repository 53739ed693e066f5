"""`genrec tune` (issue 17, item 2): a recipe search on validation only, resumable, reproducible, refusing
keys that are not config keys, and writing a best recipe that `genrec train` reads."""

import json
from pathlib import Path

import pytest
import yaml

from genrec.cli import main
from genrec.config import config_from_dict, load_config
from genrec.errors import ConfigError
from genrec.runs.layout import results_path
from genrec.train.base import TrainerBase
from genrec.train.run import train_run
from genrec.train.run_folder import validation_only
from genrec.tune import search as search_mod
from genrec.tune.records import read_trials
from genrec.tune.samplers import propose, random_point
from genrec.tune.search import run_search, search_base
from genrec.tune.spec import load_spec, merge_overrides
from tests.conftest import assert_same_weights, latest_weights, tiny_cfg

GRID = {"model.dropout": [0.1, 0.3], "train.lr": [0.001, 0.003]}


def write_spec(tmp_path: Path, name: str = "spec.yaml", **spec) -> Path:
    """A base recipe (the tiny test model) and a spec over it, beside each other."""
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(tiny_cfg("sasrec", train={"epochs": 1})))
    path = tmp_path / name
    if not {"grid", "random", "optuna"} & set(spec):
        spec["grid"] = GRID
    path.write_text(yaml.safe_dump({"recipe": "base.yaml", **spec}))
    return path


def test_a_grid_writes_every_trial_and_a_best_recipe_that_trains(toy_dir, tmp_path, capsys):
    spec = write_spec(tmp_path)
    out = tmp_path / "search"
    assert main(["tune", str(spec), "--data", str(toy_dir), "--out", str(out), "--set", "train.num_threads=1"]) == 0
    printed = capsys.readouterr().out
    trials = [json.loads(line) for line in (out / "trials.jsonl").read_text().splitlines()]
    assert [t["trial"] for t in trials] == ["0000", "0001", "0002", "0003"]
    assert [t["overrides"] for t in trials] == [{"model.dropout": d, "train.lr": lr} for d in (0.1, 0.3)
                                               for lr in (0.001, 0.003)]
    for t in trials:
        assert t["status"] == "complete" and t["best_epoch"] == 1 and t["metric"] == "ndcg@10"
        assert t["value"] == t["valid"]["ndcg@10"] and t["seconds"] >= 0
        assert not results_path(out / "trials" / t["trial"]).exists()  # never evaluated on test
        assert not {"metrics", "test", "metrics_other_exclusion"} & set(t)
        trained = json.loads((out / "trials" / t["trial"] / "config.json").read_text())["config"]["train"]
        assert trained["num_threads"] == 1  # --set: how the trials ran, not kept in best.yaml
    best = max(trials, key=lambda t: t["value"])
    # best.yaml = the base recipe (with --data) + the best overrides, a recipe `genrec train` loads
    want = load_config(tmp_path / "base.yaml", [f"data.path={toy_dir}"])
    want = config_from_dict(merge_overrides(want.to_dict(), best["overrides"]))
    assert load_config(out / "best.yaml").to_dict() == want.to_dict()
    assert "best of 4 trials by validation ndcg@10" in (out / "best.yaml").read_text()
    lines = printed.splitlines()
    rows = [line.split() for line in lines[lines.index(next(x for x in lines if x.split()[:1] == ["rank"])) + 1:][:4]]
    assert rows[0][1] == best["trial"]  # the table is sorted by the metric, best first
    assert [float(r[3]) for r in rows] == sorted((float(r[3]) for r in rows), reverse=True)


def test_a_killed_search_runs_only_the_rest(toy_dir, tmp_path, monkeypatch):
    spec = write_spec(tmp_path)
    out = tmp_path / "search"
    first = run_search(spec, out, data=str(toy_dir), limit=2)
    assert [t["trial"] for t in first.trials] == ["0000", "0001"] and first.pending == 2
    head = (out / "trials.jsonl").read_text()
    calls = []
    train = search_mod.train_run
    monkeypatch.setattr(search_mod, "train_run", lambda cfg, run_dir, **kw: calls.append(run_dir) or train(cfg, run_dir, **kw))
    rest = run_search(spec, out, data=str(toy_dir))
    assert [Path(c).name for c in calls] == ["0002", "0003"]
    assert (out / "trials.jsonl").read_text().startswith(head) and len(rest.trials) == 4 and rest.pending == 0
    calls.clear()
    run_search(spec, out, data=str(toy_dir))  # all recorded: nothing trains again
    assert calls == []


def test_a_half_trained_trial_resumes_from_its_checkpoint_to_the_same_weights(toy_dir, tmp_path, monkeypatch, capsys):
    spec = write_spec(tmp_path, fixed={"train.checkpoint_every": 1}, budget={"epochs": 2},
                      grid={"model.dropout": [0.2]})
    once = run_search(spec, tmp_path / "once", data=str(toy_dir))
    update = TrainerBase.update

    def killed_at_step_3(self, loss, value):
        if self.state["global_step"] == 3:
            raise KeyboardInterrupt
        update(self, loss, value)

    monkeypatch.setattr(TrainerBase, "update", killed_at_step_3)
    with pytest.raises(KeyboardInterrupt):
        run_search(spec, tmp_path / "killed", data=str(toy_dir))
    assert read_trials(tmp_path / "killed") == {}
    monkeypatch.setattr(TrainerBase, "update", update)
    capsys.readouterr()
    again = run_search(spec, tmp_path / "killed", data=str(toy_dir))
    assert "from step-000000003 (epoch 1, step 3)" in capsys.readouterr().err
    assert again.trials[0]["value"] == once.trials[0]["value"] and again.trials[0]["epochs"] == 2
    assert_same_weights(latest_weights(tmp_path / "killed" / "trials" / "0000"),
                        latest_weights(tmp_path / "once" / "trials" / "0000"))


RANDOM = {"train.lr": {"log_uniform": [1.0e-4, 1.0e-2]}, "model.dropout": {"uniform": [0.0, 0.5]},
          "model.num_layers": {"int": [1, 3]},
          "objective": [{"objective.name": "full_softmax"},
                        {"objective.name": "sampled_softmax", "objective.num_negatives": 8}]}


def test_random_search_is_reproducible_for_a_seed(tmp_path):
    spec = load_spec(write_spec(tmp_path, random=RANDOM, trials=20, seed=7))
    points = [propose(spec, i, [], False) for i in range(20)]
    assert points == [propose(spec, i, [], False) for i in range(20)]  # the same draws, in any order
    assert points != [random_point(spec.params, 8, i) for i in range(20)]  # another seed, other draws
    for p in points:
        assert 1e-4 <= p["train.lr"] <= 1e-2 and 0.0 <= p["model.dropout"] <= 0.5
        assert p["model.num_layers"] in (1, 2, 3) and p["objective"] in RANDOM["objective"]
    assert {p["model.num_layers"] for p in points} == {1, 2, 3}  # the int range is inclusive


def test_optuna_proposals_replay_from_the_same_history(tmp_path):
    pytest.importorskip("optuna", reason="the optional 'tune' extra (Optuna) is not installed")
    spec = load_spec(write_spec(tmp_path, optuna=RANDOM, trials=6, seed=3, startup_trials=2))
    history = [(propose(spec, i, [], False), v) for i, v in ((0, 0.1), (1, 0.3))]
    assert history[0][0] != history[1][0]
    nxt = propose(spec, 2, history, False)
    assert nxt == propose(spec, 2, history, False) and 1e-4 <= nxt["train.lr"] <= 1e-2
    assert nxt["objective"] in RANDOM["objective"]


@pytest.mark.parametrize(("space", "spec", "needles"), [
    ({"train.lrr": [0.1]}, {}, ("'train.lrr' is not a config key", "did you mean 'train.lr'")),
    ({"model.dropuot": [0.1]}, {}, ("'model.dropuot' is not a config key", "model.dropout")),
    ({"lr": [0.1]}, {}, ("'lr' is not a config key", "section.key")),
    ({"trian.lr": [0.1]}, {}, ("'trian.lr' is not a config key", "did you mean 'train.lr'")),
    (GRID, {"fixed": {"train.epoch": 3}}, ("'train.epoch' is not a config key", "train.epochs")),
    ({"objective": [{"objective.nme": "bce"}]}, {}, ("'objective.nme' is not a config key",)),
    ({"model.dropout": [0.1, 1.5]}, {}, ("model.dropout=1.5",)),
    (GRID, {"trails": 3}, ("unknown spec key 'trails'", "did you mean 'trials'")),
])
def test_a_spec_with_a_key_that_is_no_config_key_is_refused_in_one_line(tmp_path, capsys, space, spec, needles):
    path = write_spec(tmp_path, grid=space, **spec)
    assert main(["tune", str(path), "--out", str(tmp_path / "search")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and all(n in err[0] for n in needles), err
    assert not (tmp_path / "search").exists()  # refused before anything was written


def test_a_search_folder_refuses_another_space_and_drops_a_torn_line(toy_dir, tmp_path):
    spec = write_spec(tmp_path, grid={"model.dropout": [0.1]})
    out = tmp_path / "search"
    run_search(spec, out, data=str(toy_dir))
    with (out / "trials.jsonl").open("a") as f:
        f.write('{"trial": "0001", "val')  # a write cut by a kill
    assert list(read_trials(out)) == ["0000"] and (out / "trials.jsonl").read_text().endswith("}\n")
    other = write_spec(tmp_path, "other.yaml", grid={"model.dropout": [0.2]})
    with pytest.raises(ConfigError, match="holds a search with other params"):
        run_search(other, out, data=str(toy_dir))


def test_per_call_settings_may_not_change_what_a_trial_learns(tmp_path, capsys):
    spec = write_spec(tmp_path)
    assert main(["tune", str(spec), "--out", str(tmp_path / "search"), "--set", "train.lr=0.1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--set train.lr" in err[0] and "fixed:" in err[0], err


def test_a_baseline_trial_trains_the_base_recipe_first(toy_dir, tmp_path):
    spec = write_spec(tmp_path, grid={"model.dropout": [0.3]}, baseline=True)
    res = run_search(spec, tmp_path / "search", data=str(toy_dir))
    assert [(t["trial"], t["overrides"]) for t in res.trials] == [("0000", {}), ("0001", {"model.dropout": 0.3})]
    recorded = json.loads((tmp_path / "search" / "trials" / "0000" / "config.json").read_text())["config"]
    assert recorded["model"] == load_config(tmp_path / "base.yaml").model  # no dropout set: the model default
    randoms = load_spec(write_spec(tmp_path, "r.yaml", random=RANDOM, trials=4, baseline=True))
    plain = load_spec(write_spec(tmp_path, "p.yaml", random=RANDOM, trials=3))
    assert [propose(randoms, i, [], False) for i in range(4)] == [{}] + [propose(plain, i, [], False) for i in range(3)]


@pytest.mark.parametrize("path", sorted((Path(__file__).resolve().parents[2] / "configs" / "search").glob("*.yaml")),
                         ids=lambda p: p.stem)
def test_the_shipped_search_specs_name_only_config_keys_and_valid_values(path):
    spec = load_spec(path)
    base, metric = search_base(spec, None)  # every key checked, every choice and range end built into the recipe
    ranker = "tmall" in Path(path).name  # the CTR searches compare by AUC, the retrieval ones by NDCG@10
    assert metric == ("auc" if ranker else "ndcg@10") and (spec.budget.get("seconds") or spec.budget["epochs"]) > 0
    assert spec.baseline or ranker  # the ranker grids hold the recipe itself (or, for HPGR, its stage 2)
    assert len({json.dumps(propose(spec, i, [], False), sort_keys=True) for i in range(spec.trials)}) == spec.trials


def test_an_optuna_search_replays_its_recorded_trials_after_a_restart(toy_dir, tmp_path):
    pytest.importorskip("optuna", reason="the optional 'tune' extra (Optuna) is not installed")
    space = {"train.lr": {"log_uniform": [1.0e-3, 1.0e-2]}, "objective": RANDOM["objective"]}
    spec = write_spec(tmp_path, optuna=space, trials=3, seed=1, startup_trials=1)
    first = run_search(spec, tmp_path / "a", data=str(toy_dir), limit=2)  # stopped after 2 trials
    rest = run_search(spec, tmp_path / "a", data=str(toy_dir))  # the third is proposed from the recorded two
    once = run_search(spec, tmp_path / "b", data=str(toy_dir))
    assert [t["point"] for t in rest.trials] == [t["point"] for t in once.trials]
    assert [t["value"] for t in rest.trials] == [t["value"] for t in once.trials] and len(first.trials) == 2


def test_validation_only_trains_without_testing_and_ends_with_its_block(toy, tmp_path):
    cfg = config_from_dict(tiny_cfg("sasrec", train={"epochs": 1}))
    with validation_only():
        res = train_run(cfg, tmp_path / "run", dataset=toy)
    assert res == {"summary": res["summary"], "validation_only": True} and res["summary"]["finished"]
    assert not results_path(tmp_path / "run").exists()
    tested = train_run(config_from_dict(tiny_cfg("sasrec", train={"epochs": 1})), tmp_path / "run", dataset=toy)
    assert "ndcg@10" in tested["metrics"] and results_path(tmp_path / "run").exists()  # outside: tested as ever
