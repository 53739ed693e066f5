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
