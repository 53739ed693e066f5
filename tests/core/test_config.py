from pathlib import Path

import pytest

from genrec.config import apply_overrides, config_from_dict, load_config
from genrec.errors import ConfigError
from genrec.models.registry import build_model

RECIPES = sorted((Path(__file__).resolve().parents[2] / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.stem)
def test_every_recipe_loads_and_builds(path):
    cfg = load_config(path)
    assert cfg.source, f"{path.name} must say where its numbers come from"
    model = build_model(cfg.model, num_items=100, max_len=cfg.data.max_len)
    assert model.kinds


def test_overrides_are_parsed_as_yaml():
    raw = apply_overrides({}, ["train.lr=0.01", "train.betas=[0.9, 0.99]", "eval.exclude_history=false",
                               "model.name=hstu"])
    cfg = config_from_dict(raw)
    assert cfg.train.lr == 0.01 and cfg.train.betas == (0.9, 0.99) and cfg.eval.exclude_history is False
    assert cfg.model["name"] == "hstu"


@pytest.mark.parametrize("bad", ["train.lr", "lr=1", "a.b.c=1"])
def test_malformed_overrides(bad):
    with pytest.raises(ConfigError):
        apply_overrides({}, [bad])


def test_wrong_types_are_rejected():
    with pytest.raises(ConfigError, match="train.batch_size"):
        config_from_dict({"train": {"batch_size": 1.5}})
    with pytest.raises(ConfigError, match="eval.exclude_history"):
        config_from_dict({"eval": {"exclude_history": "yes"}})


def test_extends_merges_sections_and_rejects_cycles(tmp_path):
    from genrec.config import load_config
    from genrec.errors import ConfigError

    (tmp_path / "base.yaml").write_text(
        "model: {name: hstu, d_model: 32, num_layers: 3}\ntrain: {epochs: 5, lr: 0.01}\nstages: [pretrain, finetune]\n")
    (tmp_path / "child.yaml").write_text("extends: base.yaml\nmodel: {num_layers: 1}\nstages: [finetune]\n")
    cfg = load_config(tmp_path / "child.yaml", ["train.lr=0.5"])
    assert cfg.model == {"name": "hstu", "d_model": 32, "num_layers": 1}
    assert (cfg.train.epochs, cfg.train.lr) == (5, 0.5)
    assert cfg.stages == ["finetune"]  # lists replace, they do not merge
    (tmp_path / "a.yaml").write_text("extends: b.yaml\n")
    (tmp_path / "b.yaml").write_text("extends: a.yaml\n")
    with pytest.raises(ConfigError, match="cycle"):
        load_config(tmp_path / "a.yaml")
    (tmp_path / "c.yaml").write_text("extends: missing.yaml\n")
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "c.yaml")


def test_ablation_applies_only_its_own_keys_over_another_recipe(tmp_path):
    """An ablation written against the full-size recipe keeps another recipe's sizes (e.g. a CPU budget)."""
    (tmp_path / "full.yaml").write_text("model: {name: hstu, d_model: 256, num_layers: 8, dropout: 0.1}\n"
                                        "train: {epochs: 100}\nsource: full\n")
    (tmp_path / "small.yaml").write_text("extends: full.yaml\nmodel: {d_model: 32, num_layers: 2}\n"
                                         "train: {epochs: 2}\nsource: small\n")
    (tmp_path / "abl.yaml").write_text("extends: full.yaml\nmodel: {dropout: 0.0}\nsource: ablation\n")
    cfg = load_config(tmp_path / "small.yaml", ["train.lr=0.5"], ablation=tmp_path / "abl.yaml")
    assert cfg.model == {"name": "hstu", "d_model": 32, "num_layers": 2, "dropout": 0.0}
    assert (cfg.train.epochs, cfg.train.lr, cfg.source) == (2, 0.5, "small")
    with pytest.raises(ConfigError, match="ablation recipe not found"):
        load_config(tmp_path / "small.yaml", ablation=tmp_path / "nope.yaml")
