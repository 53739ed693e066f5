"""GLASS through the generator trainer and the CLI (train, evaluate, recommend), codebook resizing, recipes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from genrec.cli import main
from genrec.config import SIDConfig, load_config
from genrec.data.schema import write_dataset
from genrec.errors import ConfigError
from genrec.models.registry import build_model
from genrec.sid.build import fit_quantizer, load_sid_table
from genrec.train.generator import GeneratorTrainer
from genrec.train.run import model_kind
from tests.glass.conftest import LONG, NUM_ITEMS, SHORT, TINY, toy_dataset, toy_table, toy_vectors

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def test_trainer_batches_carry_the_long_window_from_the_past_only(tmp_path, emb_file):
    from tests.glass.conftest import tiny_cfg

    data = toy_dataset()
    tr = GeneratorTrainer(tiny_cfg(emb_file), tmp_path / "run", data, toy_table())
    assert tr.model.max_len == SHORT + LONG and bool(tr.model.has_vectors)
    idx = np.arange(len(tr.examples))
    inputs, target = tr.batch(idx)
    long = inputs[4]  # GlassInputs.long
    for e, row in enumerate(tr.examples.rows):
        seq = tr.seqs.items[tr.seqs.offsets[row]:tr.seqs.offsets[row + 1]]
        end = int(tr.examples.ends[e])
        expect = seq[max(0, end - SHORT - LONG):max(0, end - SHORT)]
        got = long[e][long[e] > 0].numpy()
        assert got.tolist() == expect.tolist()
    assert torch.equal(target, tr.model.item_sids[torch.from_numpy(
        tr.seqs.items[tr.seqs.offsets[tr.examples.rows] + tr.examples.ends])])


@pytest.fixture(scope="module")
def recipe(tmp_path_factory):
    root = tmp_path_factory.mktemp("glass_pipeline")
    ds = toy_dataset(num_users=20)
    data = write_dataset(root / "data", ds.interactions, ds.items, ds.manifest)
    np.save(root / "emb.npy", toy_vectors())
    model = {k: v for k, v in TINY.items() if k not in ("sid_length", "codebook_size")}
    raw = {"source": "test", "model": {**model, "neighbour_codes": 1},
           "data": {"path": str(data), "max_len": SHORT},
           "sid": {"embeddings": "file", "embeddings_file": str(root / "emb.npy"), "quantizer": "rqkmeans",
                   "levels": 2, "codebook_size": 6, "first_codebook_size": 4},
           "generator": {"warmup_steps": 100000, "beam_size": 5},
           "train": {"epochs": 2, "batch_size": 64, "lr": 0.01, "device": "cpu", "progress": False,
                     "tensorboard": False, "patience": 0, "eval_every": 2, "num_threads": 1},
           "eval": {"ks": [1, 5]}}
    path = root / "glass.yaml"
    path.write_text(yaml.safe_dump(raw))
    return root, path


def test_train_evaluate_recommend_glass(recipe, capsys):
    root, path = recipe
    run = root / "run"
    assert main(["train", str(path), "--out", str(run)]) == 0
    res = json.loads((run / "results" / "test.json").read_text())
    assert res["model"] == "glass" and 0.0 <= res["metrics"]["hr@5"] <= 1.0
    table = load_sid_table(run / "sid")
    assert table.codebook_sizes[:2] == (4, 6)  # codebook resizing: a smaller level-1 codebook
    capsys.readouterr()
    assert main(["evaluate", str(run), "--json"]) == 0  # reopened from the weights: tiers/neighbours included
    again = json.loads(capsys.readouterr().out)
    assert again["metrics"]["ndcg@5"] == pytest.approx(res["metrics"]["ndcg@5"])
    assert main(["recommend", str(run), "--user", "1", "-k", "3", "--json", "--include-history"]) == 0
    recs = json.loads(capsys.readouterr().out)
    assert len(recs) == 3 and len({r["item"] for r in recs}) == 3
    assert res["device"] == "cpu"  # where it trained, so GPU and CPU timings are never compared unawares


def test_reopened_run_records_its_gate_values(recipe):
    """benchmarks/glass_gate.py reads the gate through open_run + evaluate_run; it must decode as evaluation does."""
    from genrec.eval.evaluate import evaluate_run
    from genrec.runs.open import open_run

    root, path = recipe
    run = root / "run"
    if not (run / "results" / "test.json").exists():
        assert main(["train", str(path), "--out", str(run)]) == 0
    trainer = open_run(run)
    trainer.model.gate_log = []
    res = evaluate_run(trainer, "test")
    want = json.loads((run / "results" / "test.json").read_text())
    assert res["metrics"]["ndcg@5"] == pytest.approx(want["metrics"]["ndcg@5"])
    g = torch.cat([x.flatten() for x in trainer.model.gate_log])
    assert g.numel() > 0 and bool(((g > 0) & (g < 1)).all())


def test_codebook_resizing_needs_rqkmeans_and_sizes_its_first_level():
    x = torch.from_numpy(toy_vectors())
    q, _ = fit_quantizer(SIDConfig(quantizer="rqkmeans", levels=2, codebook_size=6, first_codebook_size=3), x)
    assert q.codebook_sizes == (3, 6) and int(q.encode(x)[:, 0].max()) < 3
    with pytest.raises(ConfigError, match="rqkmeans"):
        fit_quantizer(SIDConfig(quantizer="rqvae", first_codebook_size=3), x)
    with pytest.raises(ConfigError, match="first_codebook_size"):
        fit_quantizer(SIDConfig(quantizer="rqkmeans", first_codebook_size=1), x)


@pytest.mark.parametrize("name", sorted(p.name for p in CONFIGS.glob("glass-*.yaml")))
def test_recipes_load_and_build(name):
    cfg = load_config(CONFIGS / name)
    assert cfg.model["name"] == "glass" and model_kind(cfg) == "generator" and cfg.source
    model = build_model({**cfg.model, "codebook_size": 64, "sid_length": 4}, 100, cfg.data.max_len)
    # the short window is the recipe's data.max_len (50 by default, 20 on the CPU budget and the recipes that
    # extend it); the long one adds to it
    cpu = name.endswith("-cpu.yaml") or yaml.safe_load((CONFIGS / name).read_text()).get("extends") == "glass-ml100k-cpu.yaml"
    assert model.short_len == cfg.data.max_len == (20 if cpu else 50)
    assert model.max_len == cfg.data.max_len + model.cfg.long_len


def test_unknown_recipe_keys_are_reported(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({"extends": str(CONFIGS / "glass-ml100k.yaml"), "model": {"long_lenght": 10}}))
    cfg = load_config(path)
    with pytest.raises(ConfigError, match="did you mean 'model.long_len'"):
        build_model(cfg.model, NUM_ITEMS, SHORT)
