"""TIGER end to end through the CLI: `genrec sid build`, `genrec train` on a generator recipe (SID table built
into the run folder), `genrec evaluate` reproducing the stored test metrics, `genrec recommend`."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml

from genrec.cli import main
from genrec.config import config_from_dict
from genrec.data.schema import write_dataset
from genrec.errors import ConfigError
from genrec.sid.build import load_sid_table
from genrec.train.run import fit_model_to_sids
from tests.tiger.conftest import NUM_ITEMS, TINY_MODEL, toy_sequences


@pytest.fixture(scope="module")
def recipe(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiger_pipeline")
    ds = toy_sequences(num_users=40)
    data = write_dataset(root / "data", ds.interactions, ds.items, ds.manifest)
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(4, 8))
    emb = centers[(np.arange(NUM_ITEMS)) % 4] + 0.05 * rng.normal(size=(NUM_ITEMS, 8))  # 4 clusters of items
    np.save(root / "emb.npy", emb.astype(np.float32))
    model = {k: v for k, v in TINY_MODEL.items() if k not in ("sid_length", "codebook_size")}
    raw = {"source": "test", "model": model, "data": {"path": str(data), "max_len": 20},
           "sid": {"embeddings": "file", "embeddings_file": str(root / "emb.npy"), "quantizer": "rqkmeans",
                   "levels": 1, "codebook_size": 4},
           "generator": {"warmup_steps": 100000, "beam_size": 5},
           "train": {"epochs": 40, "batch_size": 64, "lr": 0.01, "device": "cpu", "progress": False,
                     "tensorboard": False, "patience": 0, "eval_every": 40, "num_threads": 1},
           "eval": {"ks": [1, 5]}}
    path = root / "tiger.yaml"
    path.write_text(yaml.safe_dump(raw))
    return root, path


def test_sid_build_writes_table_and_health(recipe, capsys):
    root, path = recipe
    assert main(["sid", "build", str(path), "--out", str(root / "sid")]) == 0
    table = load_sid_table(root / "sid")
    assert table.num_items == NUM_ITEMS and table.length == 2
    health = json.loads((root / "sid" / "health.json").read_text())
    assert health["levels"][0]["usage"] == 1.0  # 4 clusters -> all 4 first-level codes used
    assert "level 0: usage 100.0%" in capsys.readouterr().out
    assert main(["sid", "health", str(root / "sid"), "--json"]) == 0


def test_train_evaluate_recommend_a_generator(recipe, capsys):
    root, path = recipe
    run = root / "run"
    assert main(["train", str(path), "--out", str(run)]) == 0
    res = json.loads((run / "results" / "test.json").read_text())
    assert res["protocol"]["task"] == "next-item generation" and res["metrics"]["hr@5"] > 0.5
    assert res["metrics_other_decoding"]["constrained"] is False
    assert (run / "sid" / "sid_table.parquet").exists() and res["sid_health"]["num_items"] == NUM_ITEMS
    capsys.readouterr()
    assert main(["evaluate", str(run), "--json"]) == 0
    again = json.loads(capsys.readouterr().out)
    assert again["metrics"]["ndcg@5"] == pytest.approx(res["metrics"]["ndcg@5"])
    assert main(["recommend", str(run), "--user", "1", "-k", "3", "--json", "--include-history"]) == 0
    recs = json.loads(capsys.readouterr().out)
    assert len(recs) == 3 and len({r["item"] for r in recs}) == 3
    assert all(r["item"] in {f"i{x}" for x in range(1, NUM_ITEMS + 1)} for r in recs)
    assert main(["recommend", str(run), "--history", "i3,i7", "-k", "2", "--json"]) == 0
    recs = json.loads(capsys.readouterr().out)
    assert "i1" in [r["item"] for r in recs]  # the toy rule: 3 -> 7 -> 1
    assert not {"i3", "i7"} & {r["item"] for r in recs}


def test_exported_generator_serves_what_recommend_returns(recipe, capsys, tmp_path):
    """`genrec export` of a TIGER run: the artifact carries the SID table in its weights and answers with the
    same items and scores as `genrec recommend` on the run, one request or many at once."""
    from genrec.serve import load_artifact

    root, path = recipe
    run = root / "run"
    if not (run / "results" / "test.json").exists():  # when this test runs alone
        assert main(["train", str(path), "--out", str(run)]) == 0
    assert main(["export", str(run), "--out", str(tmp_path / "art")]) == 0
    art = load_artifact(tmp_path / "art")
    assert art.kinds == ("generator",) and art.window == 20
    capsys.readouterr()
    histories = [["i3", "i7"], ["i9"], ["i4", "i10", "i2", "i6"]]
    for h in histories:
        assert main(["recommend", str(run), "--history", ",".join(h), "-k", "3", "--json"]) == 0
        want = [(r["item"], r["score"]) for r in json.loads(capsys.readouterr().out)]
        got = art.recommend(h, k=3)
        assert [i for i, _ in got] == [i for i, _ in want] and not set(h) & {i for i, _ in got}
        assert [s for _, s in got] == pytest.approx([s for _, s in want], abs=1e-5)
    batch = art.recommend_batch(histories, k=3)
    assert [[i for i, _ in r] for r in batch] == [[i for i, _ in art.recommend(h, k=3)] for h in histories]
    assert "i1" in [i for i, _ in art.recommend(["i3", "i7"], k=2)]  # the toy rule: 3 -> 7 -> 1
    with_hist = art.recommend(["i3", "i7"], k=NUM_ITEMS, exclude_history=False)
    assert len(with_hist) == NUM_ITEMS  # the whole catalogue once, history included


def test_generator_config_errors(recipe, capsys):
    root, path = recipe
    assert main(["train", str(path), "--out", str(root / "bad"), "--set", "stages=[pretrain]"]) == 2
    assert "two-stage" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="sid_length"):
        fit_model_to_sids({"name": "tiger", "sid_length": 3}, 4, 256)
    with pytest.raises(ConfigError, match="collision"):
        fit_model_to_sids({"name": "tiger", "codebook_size": 4}, 2, 7)
    with pytest.raises(ConfigError, match="sid.quantiser"):
        config_from_dict({"sid": {"quantiser": "rqvae"}})
