"""GAMER baselines, ablation recipes and the multi-seed benchmark script on the toy multi-behavior logs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from genrec.config import MultiBehaviorConfig, config_from_dict, load_yaml
from genrec.data.multibehavior import BehaviorLevels, candidate_items, session_split
from genrec.errors import ConfigError
from genrec.eval.multibehavior import evaluate_behaviors
from genrec.eval.multibehavior_baselines import GeneratorAdapter, RecencyBaseline, RetrieverAdapter
from genrec.models.registry import build_model
from genrec.train.multibehavior_baselines import evaluate_untrained, multibehavior_trainer, run_variant
from tests.conftest import assert_same_weights, latest_state, latest_weights, load_benchmark
from tests.gamer.conftest import NUM_ITEMS, bench_toy, cycle_events, make_dataset, toy_table

ROOT = Path(__file__).resolve().parents[2]
H = 3_600
BASE = {"data": {"max_len": 10}, "eval": {"ks": [1, 5], "batch_size": 64}, "generator": {"beam_size": 5},
        "multibehavior": {"session_gap": 1800, "early_stop": "merged/ndcg@5"}}
TIGER_TINY = {"name": "tiger", "d_model": 32, "num_encoder_layers": 1, "num_decoder_layers": 1, "num_heads": 2,
              "head_dim": 8, "d_ff": 64, "dropout": 0.0, "num_user_buckets": 0, "codebook_size": 4, "sid_length": 3}


def _train(**train):
    return {"device": "cpu", "tensorboard": False, "progress": False, "seed": 1, **train}


def test_candidates_default_to_the_leak_free_history_set():
    assert MultiBehaviorConfig().candidates == "behavior_history"
    # item 9 is bought only in user 1's test session: the default candidates must not know it
    events = [(1, 1, 0, 3), (1, 2, 10, 0), (1, 3, 10 * H, 3), (1, 9, 20 * H, 3), (1, 4, 20 * H + 5, 0)]
    ds = make_dataset(events)
    sp = session_split(ds.interactions, BehaviorLevels.from_manifest(ds.manifest), H)
    assert candidate_items(sp, 3).tolist() == [1, 3]
    assert 9 in candidate_items(sp, 3, "behavior").tolist()
    # "history": any behavior before the evaluated session (item 2 was only viewed), still not item 9 or 4
    assert candidate_items(sp, 3, "history").tolist() == [1, 2, 3]
    assert candidate_items(sp, 3, "history", which="valid").tolist() == [1, 2]


def test_recency_ranks_distinct_history_items_newest_first_within_the_candidates():
    rec = RecencyBaseline(max_len=5)
    hist = torch.tensor([[4, 2, 7, 2, 9, 3], [5, 0, 0, 0, 0, 0]])  # right-padded, oldest first
    got = rec.generate(hist, torch.zeros_like(hist), 3, beam_size=4, k=4).items.tolist()
    assert got == [[3, 9, 2, 7], [5, -1, -1, -1]]  # the window keeps the last 5 events; 2 once, at its newest
    got = rec.generate(hist, torch.zeros_like(hist), 3, beam_size=4, candidates=np.array([2, 4, 5, 7])).items
    assert got.tolist() == [[2, 7, -1, -1], [5, -1, -1, -1]]
    unrestricted = RecencyBaseline(max_len=5, restrict_to_candidates=False)
    assert unrestricted.generate(hist, hist, 3, 4, candidates=np.array([2])).items[0].tolist() == [3, 9, 2, 7]
    # through the shared evaluation: a re-purchase of the last touched item is a hit at rank 1
    events = [(1, 5, 0, 3), (1, 6, 10, 0), (1, 7, 10 * H, 0), (1, 5, 10 * H + 5, 3),
              (1, 5, 20 * H, 3), (1, 8, 20 * H + 5, 0)]
    ds = make_dataset(events)
    sp = session_split(ds.interactions, BehaviorLevels.from_manifest(ds.manifest), H)
    ev = evaluate_behaviors(RecencyBaseline(10), sp, "test", [3], [1, 5], beam_size=5)
    assert ev.per_behavior["buy"]["hit@1"] == 1.0 and ev.per_behavior["buy"]["num_users"] == 1


def test_retriever_adapter_returns_the_top_scored_candidates():
    torch.manual_seed(0)
    model = build_model({"name": "sasrec", "d_model": 16, "num_layers": 1, "num_heads": 1, "dropout": 0.0},
                        NUM_ITEMS, 10).eval()
    adapter = RetrieverAdapter(model)
    hist = torch.tensor([[3, 7, 1, 0], [4, 0, 0, 0]])
    cand = np.array([2, 5, 6, 8, 11, 12])
    res = adapter.generate(hist, torch.zeros_like(hist), 3, beam_size=4, candidates=cand)
    with torch.no_grad():
        scores = model.encode(adapter.batch(hist)) @ model.item_table().T  # (2, N+1)
    for row in range(2):
        expect = cand[np.argsort(-scores[row, cand].numpy(), kind="stable")][:4]
        assert res.items[row].tolist() == expect.tolist()
    assert (res.scores[:, :-1] >= res.scores[:, 1:]).all()
    few = adapter.generate(hist, hist, 3, beam_size=4, candidates=np.array([5, 6]))
    assert few.items[:, 2:].eq(-1).all() and few.valid.sum() == 4


HIST = torch.tensor([[3, 7, 1], [4, 0, 0]])  # two right-padded item histories
CAND = np.array([2, 5, 9, 11])


def _tiger_adapter(seed: int) -> tuple:
    """A tiny TIGER on the toy SID table (seeded) and its multi-behavior adapter."""
    torch.manual_seed(seed)
    model = build_model(TIGER_TINY, NUM_ITEMS, 10)
    model.set_sid_table(toy_table())
    return model, GeneratorAdapter(model)


def test_generator_adapter_decodes_only_candidate_sids_and_needs_no_user_token():
    model, adapter = _tiger_adapter(0)
    hist, cand = HIST, CAND
    res = adapter.generate(hist, torch.zeros_like(hist), 3, beam_size=5, candidates=cand)
    got = res.items[res.valid]
    assert got.numel() == 2 * len(cand) and np.isin(got.numpy(), cand).all()
    assert torch.equal(model.item_sids[got], res.sids[res.valid])
    with pytest.raises(ConfigError, match="num_user_buckets"):
        GeneratorAdapter(build_model({**TIGER_TINY, "num_user_buckets": 8}, NUM_ITEMS, 10))


def test_generator_adapter_merges_known_candidates_with_their_exact_scores():
    model, adapter = _tiger_adapter(1)
    hist, cand = HIST, CAND
    every = torch.arange(1, NUM_ITEMS + 1).repeat(2, 1)  # known: every item, most outside the candidates
    res = adapter.generate(hist, torch.zeros_like(hist), 3, beam_size=2, candidates=cand, known=every)
    full = adapter.generate(hist, torch.zeros_like(hist), 3, beam_size=len(cand), candidates=cand)
    # the narrow beam plus every candidate scored exactly is the exhaustive search's top 2; nothing else enters
    assert torch.equal(res.items, full.items[:, :2])
    assert torch.allclose(res.scores, full.scores[:, :2], atol=1e-5)


def test_baselines_see_the_same_queries_and_tiger_learns_the_toy_rule(tmp_path):
    ds = make_dataset(cycle_events(num_users=24, seed=0))
    cfg = config_from_dict({**BASE, "model": TIGER_TINY, "train": _train(epochs=15, batch_size=32, lr=0.01,
                                                                            eval_every=5)})
    tr = multibehavior_trainer(cfg, tmp_path / "tiger", ds, toy_table())
    assert tr.fit()["finished"]
    tr.load_best()
    rec = tr.evaluate("test")
    buy = rec["metrics"]["per_behavior"]["buy"]
    # the next purchase follows the last session's item: chance hit@5 over 12 candidates is 5/12
    assert buy["num_users"] == 24 and buy["hit@5"] >= 0.6, buy
    assert rec["protocol"]["candidate_mode"] == "behavior_history" and rec["sid_fingerprint"] == toy_table().fingerprint
    sas = config_from_dict({**BASE, "model": {"name": "sasrec", "d_model": 16, "num_layers": 1, "num_heads": 1},
                            "objective": {"name": "full_softmax", "temperature": 0.1},
                            "train": _train(epochs=2, batch_size=8, lr=0.01)})
    rec2 = run_variant(sas, tmp_path / "sasrec", ds)
    rec3 = evaluate_untrained(config_from_dict({**BASE, "model": {"name": "recency"}}), ds)
    for other in (rec2, rec3):
        for b, m in rec["metrics"]["per_behavior"].items():
            got = other["metrics"]["per_behavior"][b]
            assert (got["num_users"], got.get("num_candidates")) == (m["num_users"], m.get("num_candidates")), b
    assert json.loads((tmp_path / "sasrec" / "results.json").read_text())["model"] == "sasrec"
    # a finished folder is not retrained: the stored record comes back
    stored = tmp_path / "sasrec" / "results.json"
    stored.write_text(json.dumps({**rec2, "marker": 1}))
    assert run_variant(sas, tmp_path / "sasrec", ds)["marker"] == 1


@pytest.mark.parametrize("model", ["tiger", "sasrec"])
def test_baseline_stopped_mid_epoch_resumes_to_the_same_weights(tmp_path, model):
    ds = make_dataset(cycle_events(num_users=12, seed=0))
    params = ({**TIGER_TINY, "dropout": 0.1} if model == "tiger" else
              {"name": "sasrec", "d_model": 16, "num_layers": 1, "num_heads": 1, "dropout": 0.2})
    extra = {"objective": {"name": "sampled_softmax", "num_negatives": 8}}  # negatives drawn per step (sasrec)

    def cfg(**train):
        return config_from_dict({**BASE, **extra, "model": params,
                                 "multibehavior": {**BASE["multibehavior"], "warmup_ratio": 0.3},
                                 "train": _train(epochs=2, batch_size=8, lr=0.01, checkpoint_every=3, **train)})

    sids = toy_table() if model == "tiger" else None
    full = multibehavior_trainer(cfg(), tmp_path / "full", ds, sids)
    assert full.stop_metric == "merged/ndcg@5" and not full.minimize  # the protocol's stopping rule, not the kind's
    full.fit()
    steps = full.state["global_step"]
    part = multibehavior_trainer(cfg(max_steps=steps // 2 + 1), tmp_path / "part", ds, sids)
    assert not part.fit()["finished"]
    assert latest_state(tmp_path / "part")["step_in_epoch"] > 0  # stopped mid-epoch
    again = multibehavior_trainer(cfg(), tmp_path / "part", ds, sids)
    assert again.resumed_from is not None and again.fit()["finished"]
    assert latest_state(tmp_path / "part") == {**latest_state(tmp_path / "full"),
                                               "train_seconds": latest_state(tmp_path / "part")["train_seconds"]}
    assert_same_weights(latest_weights(tmp_path / "full"), latest_weights(tmp_path / "part"))


def test_baseline_settings_are_checked(tmp_path):
    ds = make_dataset(cycle_events(num_users=6, seed=1))
    loss_stop = {**BASE, "multibehavior": {"session_gap": 1800}}  # valid_loss: GAMER only
    with pytest.raises(ConfigError, match="early_stop"):
        multibehavior_trainer(config_from_dict({**loss_stop, "model": TIGER_TINY, "train": _train()}),
                              tmp_path / "a", ds, toy_table())
    with pytest.raises(ConfigError, match="not computed"):
        multibehavior_trainer(config_from_dict({**BASE, "model": TIGER_TINY, "train": _train(),
                                                "multibehavior": {"early_stop": "buy/ndcg@50"}}), tmp_path / "b", ds,
                              toy_table())
    with pytest.raises(ConfigError, match="unknown model keys"):
        evaluate_untrained(config_from_dict({**BASE, "model": {"name": "recency", "window": 3}}), ds)
    with pytest.raises(ConfigError, match="not a multi-behavior baseline"):
        multibehavior_trainer(config_from_dict({**BASE, "model": {"name": "hstu_ranker"}, "train": _train()}),
                              tmp_path / "c", ds)


def test_ablation_recipes_state_only_their_change():
    base = load_yaml(ROOT / "configs" / "gamer-taobao.yaml")
    expect = {
        "nocross": {("model", "cross_layers"): 0},
        "noinject": {("model", "injection_layers"): 0},
        "noaug": {("multibehavior", "augment"): 0},
        "released": {("model", "released_mask"): True},
        "plain": {("model", "cross_layers"): 0, ("model", "injection_layers"): 0,
                  ("model", "position_experts"): False, ("multibehavior", "augment"): 0},
    }
    for name, change in expect.items():
        raw = load_yaml(ROOT / "configs" / f"gamer-taobao-{name}.yaml")
        diff = {(s, k): v for s in raw if isinstance(raw[s], dict) for k, v in raw[s].items()
                if base.get(s, {}).get(k, "missing") != v}
        assert diff == change, name
        assert raw["source"] != base["source"]
    cpu = config_from_dict(load_yaml(ROOT / "configs" / "gamer-taobao-cpu.yaml"))
    assert cpu.model["d_model"] <= 128 and cpu.model["num_layers"] <= 4 and "CPU budget" in cpu.source
    for name in ("sasrec", "tiger", "recency"):
        cfg = config_from_dict(load_yaml(ROOT / "configs" / f"gamer-taobao-{name}.yaml"))
        assert cfg.model["name"] == name and cfg.multibehavior.candidates == "behavior_history"
        assert cfg.data.path == "data_cache/taobao-mb"
    tiger = config_from_dict(load_yaml(ROOT / "configs" / "gamer-taobao-tiger.yaml"))
    assert tiger.sid == config_from_dict(base).sid  # the same SID table as GAMER's


def test_plain_decoder_switches_remove_every_gamer_addition():
    from tests.gamer.conftest import tiny_model

    plain = tiny_model(cross_layers=0, injection_layers=0, position_experts=False)
    assert all(layer.cross_attn is None and layer.inject is None and len(layer.ffn.experts) == 1
               for layer in plain.layers)
    full = tiny_model()
    assert plain.num_parameters() < full.num_parameters()


def test_benchmark_script_runs_seeds_resumes_and_reports(tmp_path, capsys):
    bench = load_benchmark("gamer")
    report = load_benchmark("report")
    bench_toy(tmp_path)
    (tmp_path / "gamer-toy-nocross.yaml").write_text("extends: gamer-toy.yaml\nsource: x\nmodel: {cross_layers: 0}\n")
    (tmp_path / "recency.yaml").write_text(yaml.safe_dump({"model": {"name": "recency"}, "data": {"max_len": 10},
                                                           "eval": {"ks": [1, 5]}, "generator": {"beam_size": 5},
                                                           "multibehavior": {"session_gap": 1800}}))
    common = ["--data", str(tmp_path / "data"), "--runs", str(tmp_path / "runs"), "--results", str(tmp_path / "res")]
    assert bench.main(["--recipe", str(tmp_path / "gamer-toy.yaml"), "--seeds", "1", "2", *common]) == 0
    out = json.loads((tmp_path / "res" / "gamer-data-gamer-toy.json").read_text())
    assert out["seeds"] == [1, 2] and len(out["per_seed"]) == 2 and out["behaviors"][0] == "buy"
    assert out["protocol"]["candidate_mode"] == "behavior_history" and out["model"] == "gamer"
    for key in ("dataset", "model", "protocol", "metrics", "command", "date", "commit"):
        assert key in out
    vals = [s["metrics"]["buy"]["ndcg@5"] for s in out["per_seed"]]
    assert out["metrics"]["buy"]["ndcg@5"] == pytest.approx(np.mean(vals))
    assert out["spread"]["buy"]["ndcg@5"] == pytest.approx(np.std(vals, ddof=1))
    assert out["num_users"]["buy"] == out["per_seed"][0]["metrics"]["buy"]["num_users"]
    assert out["sid_health"] == toy_table().health().as_dict()  # the table the runs decoded with, reported
    # finished seeds are resumed, not retrained: their run folders stay as they are
    stamp = (tmp_path / "runs" / "gamer-data-gamer-toy-seed1" / "results.json").stat().st_mtime_ns
    assert bench.main(["--recipe", str(tmp_path / "gamer-toy.yaml"), "--seeds", "1", "2", *common]) == 0
    assert (tmp_path / "runs" / "gamer-data-gamer-toy-seed1" / "results.json").stat().st_mtime_ns == stamp
    # another candidate mode: its own record; GAMER (valid-loss stopping) is re-tested, not retrained
    ckpt = tmp_path / "runs" / "gamer-data-gamer-toy-seed1" / "checkpoints" / "latest"
    before = ckpt.stat().st_mtime_ns
    assert bench.main(["--recipe", str(tmp_path / "gamer-toy.yaml"), "--seeds", "1", "2", *common,
                       "--set", "multibehavior.candidates=all"]) == 0
    every = json.loads((tmp_path / "res" / "gamer-data-gamer-toy-cand-all.json").read_text())
    assert every["protocol"]["candidate_mode"] == "all" and every["per_seed"][0]["metrics"]["buy"][
        "num_candidates"] == NUM_ITEMS
    assert (tmp_path / "runs" / "gamer-data-gamer-toy-seed1" / "results-all.json").exists()
    assert ckpt.stat().st_mtime_ns == before
    assert (tmp_path / "runs" / "gamer-data-gamer-toy-seed1" / "results.json").stat().st_mtime_ns == stamp
    # --name is a base name: under another mode it gets the suffix and re-tests the named run's folders
    named = ["--recipe", str(tmp_path / "gamer-toy.yaml"), "--seeds", "1", "--name", "toy-named", *common]
    assert bench.main(named) == 0
    assert bench.main([*named, "--set", "multibehavior.candidates=all"]) == 0
    assert json.loads((tmp_path / "res" / "toy-named.json").read_text())["protocol"]["candidate_mode"] == (
        "behavior_history")
    assert (tmp_path / "res" / "toy-named-cand-all.json").exists()
    assert sorted(p.name for p in (tmp_path / "runs").glob("toy-named*")) == ["toy-named-seed1"]
    for f in (tmp_path / "res").glob("toy-named*"):
        f.unlink()  # keep the report-table count below about the variants above
    # an ablation's own keys over the recipe, and the deterministic heuristic (one evaluation)
    assert bench.main(["--recipe", str(tmp_path / "gamer-toy.yaml"), "--ablation",
                       str(tmp_path / "gamer-toy-nocross.yaml"), "--seeds", "3", *common]) == 0
    abl = json.loads((tmp_path / "res" / "gamer-data-gamer-toy-nocross.json").read_text())
    assert abl["config"]["model"]["cross_layers"] == 0 and abl["config"]["source"] == "test"
    assert bench.main(["--recipe", str(tmp_path / "recency.yaml"), "--seeds", "1", "2", "3", *common]) == 0
    rec = json.loads((tmp_path / "res" / "gamer-data-recency.json").read_text())
    assert rec["deterministic"] and rec["seeds"] == [1] and rec["spread"]["buy"]["hit@5"] == 0.0
    assert "sid_health" not in rec  # the heuristic decodes no SIDs
    capsys.readouterr()
    recs = [{**json.loads(p.read_text()), "_file": p.name} for p in sorted((tmp_path / "res").glob("*.json"))]
    health = report.sid_health_table(recs)
    assert "`gamer-data-gamer-toy-cand-all.json` (+2 more with this table)" in health and "recency" not in health
    table = report.gamer_table(recs)
    lines = table.splitlines()
    assert len(lines) == 2 + 4 and lines[0].index("buy hit@5") < lines[0].index("cart hit@10")
    assert "1 (deterministic)" in table and "gamer-data-gamer-toy-nocross" in table
