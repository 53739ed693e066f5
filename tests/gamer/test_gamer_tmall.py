"""GAMER's protocol on a three-level log (the CML Tmall log: fav < cart < buy), the length-bucketing switch, the
benchmark's variant names and the Tmall recipes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from genrec.config import config_from_dict, load_config, load_yaml
from genrec.data.multibehavior import (
    BehaviorLevels,
    MultiBehaviorConfig,
    behavior_queries,
    session_split,
    thinned_copies,
    training_sequences,
)
from genrec.data.multibehavior_config import with_defaults
from genrec.errors import CheckpointError, ConfigError
from genrec.train.gamer import GamerTrainer
from genrec.train.multibehavior_baselines import multibehavior_trainer
from tests.conftest import load_benchmark
from tests.data.conftest import SHARED_DATA
from tests.gamer.conftest import TINY, cycle_events, make_dataset, toy_table

ROOT = Path(__file__).resolve().parents[2]
CML = ["fav", "cart", "buy"]  # the Tmall reader's manifest order, lowest first
TO_CML = {0: 0, 2: 1, 3: 2}  # the toy log's pv -> fav, cart -> cart, buy -> buy


def cml_dataset(num_users: int = 12, seed: int = 0):
    """The toy cycle log with three behaviors, as the Tmall reader writes them (fav 0 < cart 1 < buy 2)."""
    events = [(u, i, t, TO_CML[b]) for u, i, t, b in cycle_events(num_users, seed)]
    return make_dataset(events, behaviors=CML, name="cml-toy")


def _cfg(**over):
    train = {"epochs": 2, "batch_size": 8, "lr": 5e-3, "device": "cpu", "tensorboard": False, "progress": False,
             "patience": 0, "seed": 1, **over.pop("train", {})}
    model = over.pop("model", {})
    model = model if "name" in model else {"name": "gamer", **TINY, "num_behaviors": 3, **model}  # a baseline as is
    return config_from_dict({"model": model,
                             "data": {"max_len": 10}, "train": train, "eval": {"ks": [1, 5], "batch_size": 64},
                             "generator": {"beam_size": 5}, **over})


def test_three_levels_split_augment_and_evaluate_buys_only(tmp_path):
    """fav < cart < buy from the manifest: buy is the top level, augmentation drops every fav at k = x and half
    the carts, never a buy; a run with eval_behaviors [buy] tests the buyers of the last session only."""
    ds = cml_dataset()
    levels = BehaviorLevels.from_manifest(ds.manifest)
    assert levels.as_dict() == {"fav": 0, "cart": 1, "buy": 2} and levels.names[levels.top] == "buy"
    beh = np.array([0, 0, 1, 1, 2, 0, 1, 2])
    last = thinned_copies(beh, levels.array(), 2, np.random.default_rng(0))[-1]  # k = x = 2
    assert not last[beh == 0].any() and last[beh == 2].all() and last[beh == 1].sum() == 2  # 4 carts, 4 // 2 dropped
    opts = MultiBehaviorConfig(session_gap=1800, augment=1, eval_behaviors=["buy"])
    tr = GamerTrainer(_cfg(), tmp_path / "run", ds, toy_table(), opts)
    assert tr.model.cfg.num_behaviors == 3
    tr.fit()
    rec = tr.evaluate("test")
    assert list(rec["metrics"]["per_behavior"]) == ["buy"] and rec["protocol"]["headline_behavior"] == "buy"
    assert rec["metrics"]["per_behavior"]["buy"]["num_users"] == len(behavior_queries(tr.split, "test", 2))
    assert rec["protocol"]["behavior_levels"] == {"fav": 0, "cart": 1, "buy": 2}
    # a four-behavior recipe (the Taobao one) on a three-behavior log is one clear error, not an index error
    with pytest.raises(ConfigError, match="num_behaviors=4"):
        GamerTrainer(_cfg(model={"num_behaviors": 4}), tmp_path / "four", ds, toy_table(), opts)


def _plain_batches(n: int, batch_size: int, seed: int, epoch: int) -> list[np.ndarray]:
    """The epoch order before the switch existed: one permutation cut into batches."""
    order = np.random.default_rng([seed, epoch]).permutation(n)
    return [order[i:i + batch_size] for i in range(0, n, batch_size)]


def _padded(batches, lengths) -> int:
    """Interactions a padded batch carries (its rows times its longest row), summed over the epoch."""
    return sum(len(b) * int(lengths[b].max()) for b in batches)


def test_length_bucketing_off_is_the_old_order_and_on_cuts_padding(tmp_path):
    ds = cml_dataset(num_users=24, seed=3)
    off = MultiBehaviorConfig(session_gap=1800, augment=2)
    on = MultiBehaviorConfig(session_gap=1800, augment=2, length_bucketing=True)
    assert not MultiBehaviorConfig().length_bucketing  # default off: every recorded run keeps its batches
    a = GamerTrainer(_cfg(), tmp_path / "a", ds, toy_table(), off)
    b = GamerTrainer(_cfg(), tmp_path / "b", ds, toy_table(), on)
    n, lengths = len(a.train_seqs), np.diff(a.train_seqs.offsets)
    c = GamerTrainer(_cfg(), tmp_path / "c", ds, toy_table(), on)  # a second run: the order is (seed, epoch)'s
    for epoch in (0, 1):
        old = _plain_batches(n, 8, 1, epoch)
        assert all(np.array_equal(x, y) for x, y in zip(a.epoch_batches(epoch), old, strict=True))
        got = b.epoch_batches(epoch)
        assert np.array_equal(np.sort(np.concatenate(got)), np.arange(n))  # every sequence once
        assert _padded(got, lengths) < _padded(old, lengths)
        assert all(np.array_equal(x, y) for x, y in zip(c.epoch_batches(epoch), got, strict=True))
    # the baselines' trainers (SASRec here) follow the same switch over their own examples
    sas = {"name": "sasrec", "d_model": 16, "num_layers": 1, "num_heads": 1, "dropout": 0.0}
    mb = {"session_gap": 1800, "early_stop": "buy/ndcg@5"}
    r_off = multibehavior_trainer(_cfg(model=sas, multibehavior=mb), tmp_path / "s0", ds)
    r_on = multibehavior_trainer(_cfg(model=sas, multibehavior={**mb, "length_bucketing": True}), tmp_path / "s1", ds)
    m = r_off.num_examples()
    assert all(np.array_equal(x, y) for x, y in zip(r_off.epoch_batches(0), _plain_batches(m, 8, 1, 0), strict=True))
    assert np.array_equal(np.sort(np.concatenate(r_on.epoch_batches(0))), np.arange(m))


def test_a_run_recorded_before_the_switch_resumes_and_turning_it_on_is_refused(tmp_path):
    ds = cml_dataset(num_users=6, seed=4)
    opts = MultiBehaviorConfig(session_gap=1800, augment=1)
    GamerTrainer(_cfg(train={"epochs": 1}), tmp_path / "run", ds, toy_table(), opts).fit()
    path = tmp_path / "run" / "config.json"
    rec = json.loads(path.read_text())
    del rec["multibehavior"]["length_bucketing"]  # as written before the key existed
    path.write_text(json.dumps(rec))
    assert with_defaults(rec["multibehavior"]) == with_defaults({**rec["multibehavior"], "length_bucketing": False})
    again = GamerTrainer(_cfg(train={"epochs": 1}), tmp_path / "run", ds, toy_table(), opts)
    assert again.resumed_from is not None
    with pytest.raises(CheckpointError, match="multibehavior"):
        GamerTrainer(_cfg(train={"epochs": 1}), tmp_path / "run", ds, toy_table(),
                     MultiBehaviorConfig(session_gap=1800, augment=1, length_bucketing=True))


def test_benchmark_names_drop_the_words_an_ablation_shares_with_its_recipe():
    bench = load_benchmark("gamer")
    data = "data_cache/taobao-mb"
    assert bench.variant_name(data, "configs/gamer-taobao-cpu.yaml", "configs/gamer-taobao-nocross.yaml") == (
        "gamer-taobao-mb-gamer-taobao-cpu-nocross")  # the recorded Taobao names are unchanged
    assert bench.variant_name(data, "configs/gamer-taobao.yaml", None) == "gamer-taobao-mb-gamer-taobao"
    assert bench.variant_name("data_cache/tmall-cml", "configs/gamer-tmall.yaml", "configs/gamer-tmall-noaug.yaml") == (
        "gamer-tmall-cml-gamer-tmall-noaug")


def test_tmall_recipes_share_the_protocol_and_state_only_their_change():
    cpu_raw = load_yaml(ROOT / "configs" / "gamer-tmall-cpu.yaml")
    for name, change in {"nocross": {("model", "cross_layers"): 0}, "noaug": {("multibehavior", "augment"): 0}}.items():
        raw = load_yaml(ROOT / "configs" / f"gamer-tmall-{name}.yaml")
        assert "extends: gamer-tmall-cpu.yaml" in (ROOT / "configs" / f"gamer-tmall-{name}.yaml").read_text()
        diff = {(s, k): v for s in raw if isinstance(raw[s], dict) for k, v in raw[s].items()
                if cpu_raw.get(s, {}).get(k, "missing") != v}
        assert diff == change, name
    gamer = load_config(ROOT / "configs" / "gamer-tmall-cpu.yaml")
    assert gamer.model["num_behaviors"] == 3 and "CPU budget" in gamer.source
    assert gamer.model["d_model"] <= 128 and gamer.train.num_threads == 1
    paper = load_config(ROOT / "configs" / "gamer-tmall.yaml")
    taobao = load_config(ROOT / "configs" / "gamer-taobao.yaml")
    assert {k: v for k, v in paper.model.items() if k != "num_behaviors"} == {
        k: v for k, v in taobao.model.items() if k != "num_behaviors"}  # the released architecture
    mb = gamer.multibehavior
    for name in ("nocross", "noaug", "tiger-cpu", "sasrec", "recency"):
        cfg = load_config(ROOT / "configs" / f"gamer-tmall-{name}.yaml")
        assert cfg.data.path == "data_cache/tmall-cml", name
        same = ("session_gap", "candidates", "eval_behaviors", "min_history", "behavior_order")
        assert all(getattr(cfg.multibehavior, k) == getattr(mb, k) for k in same), name
        assert cfg.eval.ks == gamer.eval.ks and cfg.generator.beam_size == gamer.generator.beam_size, name
    assert mb.eval_behaviors == ["buy"] and mb.candidates == "behavior_history" and mb.session_gap == 3600
    tiger = load_config(ROOT / "configs" / "gamer-tmall-tiger-cpu.yaml")
    assert tiger.sid == gamer.sid and tiger.data.max_len == gamer.data.max_len  # GAMER's SIDs and history
    sasrec = load_config(ROOT / "configs" / "gamer-tmall-sasrec.yaml")
    assert sasrec.objective.name == "full_softmax"  # cross-entropy over the catalogue, as GAMER's baselines


@pytest.mark.realdata
def test_session_split_on_the_staged_tmall_log(tmp_path):
    """The counts the Tmall recipes and docs quote, from the staged log (skipped when it is absent)."""
    from genrec.data.schema import load_dataset
    from genrec.data.sources import prepare_source

    folder = SHARED_DATA / "cml-tmall-multibehavior-nopv"
    if not (folder / "interactions.csv.gz").exists():
        pytest.skip(f"real data file {folder / 'interactions.csv.gz'} not present")
    ds = load_dataset(prepare_source("tmall_cml", folder, tmp_path / "tmall"))
    cfg = load_config(ROOT / "configs" / "gamer-tmall-cpu.yaml")
    levels = BehaviorLevels.from_manifest(ds.manifest)
    split = session_split(ds.interactions, levels, cfg.multibehavior.session_gap)
    assert levels.names == tuple(CML) and levels.top == 2
    assert [int(split.part_mask(p).sum()) for p in ("train", "valid", "test")] == [251641, 52833, 52938]
    assert len(behavior_queries(split, "test", 2)) == 17995
    seqs = training_sequences(split, cfg.data.max_len, cfg.multibehavior.augment, "last", seed=1)
    assert len(seqs) == 147217 and int((~seqs.augmented).sum()) == 30606
    assert split.part_mask("train")[seqs.index].all()  # no validation or test event reaches training
