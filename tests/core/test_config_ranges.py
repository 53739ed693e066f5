"""Issue 21, recipes and configs: each out-of-range value is refused when the config loads, naming the key
(before, each was a torch traceback deep in training, or a run of zero steps recorded as a result)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from genrec.config import config_from_dict, load_config
from genrec.errors import ConfigError


@pytest.mark.parametrize("section, values, key", [
    ("train", {"lr": -1.0}, "train.lr"),
    ("train", {"lr": 0.0}, "train.lr"),
    ("train", {"batch_size": 0}, "train.batch_size"),
    ("train", {"batch_size": -4}, "train.batch_size"),
    ("train", {"epochs": 0}, "train.epochs"),
    ("train", {"betas": [0.9, 1.5]}, "train.betas"),
    ("data", {"max_len": 0}, "data.max_len"),
    ("eval", {"ks": [0, 10]}, "eval.ks"),
    ("eval", {"ks": [-5]}, "eval.ks"),
    ("eval", {"ks": []}, "eval.ks"),
    ("objective", {"temperature": 0.0}, "objective.temperature"),
    ("model", {"name": "sasrec", "dropout": 1.5}, "model.dropout"),
    ("model", {"name": "hstu", "linear_dropout": -0.1}, "model.linear_dropout"),
    ("model", {"name": "sasrec", "d_model": 64, "num_heads": 3}, "model.num_heads"),
    ("model", {"name": "sasrec", "num_heads": 0}, "model.num_heads"),
])  # fmt: skip
def test_out_of_range_values_are_refused_naming_the_key(section: str, values: dict, key: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(key) + " must be"):
        config_from_dict({section: values})


def test_per_head_widths_allow_heads_that_do_not_divide_the_width() -> None:
    config_from_dict({"model": {"name": "hstu", "d_model": 64, "num_heads": 3, "dqk": 16, "dv": 16}})


def test_a_recipe_whose_top_level_is_a_list_is_one_line(tmp_path: Path) -> None:
    p = tmp_path / "list.yaml"
    p.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(p, ["train.lr=0.1"])
    root = Path(__file__).resolve().parents[2]
    r = subprocess.run([sys.executable, "-m", "genrec.cli", "train", str(p), "--out", str(tmp_path / "r")],
                       capture_output=True, text=True, env={"PYTHONPATH": str(root / "src")}, timeout=120)
    assert r.returncode == 2 and "Traceback" not in r.stderr and r.stderr.count("\n") == 1, r.stderr
