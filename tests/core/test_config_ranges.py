"""Issue 21, recipes and configs: each out-of-range value is refused when the config loads, naming the key
(before, each was a torch traceback deep in training, or a run of zero steps recorded as a result), and every
field of every section has its check (a new knob without one fails here)."""

from __future__ import annotations

import re
import subprocess
import sys
from dataclasses import fields, is_dataclass
from pathlib import Path

import pytest

from genrec.config import RunConfig, config_from_dict, load_config
from genrec.config_checks import FREE_FORM, RULES
from genrec.errors import ConfigError

pytestmark = pytest.mark.reliability


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


# -- every knob has its check -----------------------------------------------------------------------------


def _section_fields() -> set[str]:
    """``section.key`` of every field of every section dataclass of a RunConfig."""
    cfg = RunConfig()
    return {f"{s.name}.{f.name}" for s in fields(RunConfig) if is_dataclass(getattr(cfg, s.name))
            for f in fields(getattr(cfg, s.name))}


def test_every_config_field_has_a_rule_or_says_why_it_is_free_form() -> None:
    keys = _section_fields()
    missing = sorted(keys - RULES.keys() - FREE_FORM.keys())
    assert not missing, f"config fields without a check (add a rule in genrec/config_checks.py): {missing}"
    assert not sorted((RULES.keys() | FREE_FORM.keys()) - keys), "a rule for a field that no longer exists"
    assert not RULES.keys() & FREE_FORM.keys() and len(FREE_FORM) <= 8  # the allowlist stays small


@pytest.mark.parametrize("key", sorted(RULES))
def test_each_rule_refuses_its_bad_value_when_the_config_loads(key: str) -> None:
    section, name = key.split(".")
    with pytest.raises(ConfigError, match=re.escape(key)):
        config_from_dict({section: {name: RULES[key].bad}})


@pytest.mark.parametrize("raw, key", [
    ({"train": {"lr": float("nan")}}, "train.lr"),
    ({"train": {"max_seconds": float("inf")}}, "train.max_seconds"),
    ({"train": {"betas": [0.9]}}, "train.betas"),
    ({"train": {"seed": -3}}, "train.seed"),
    ({"train": {"batch_size": 10**30}}, "train.batch_size"),
    ({"data": {"split": "random"}}, "data.split"),
    ({"data": {"split": "temporal", "valid_frac": 0.5, "test_frac": 0.5}}, "data.valid_frac + data.test_frac"),
    ({"objective": {"name": "softmax"}}, "objective.name"),
    ({"sid": {"quantizer": "kmeans"}}, "sid.quantizer"),
    ({"eval": {"metrics": ["ndcg", ""]}}, "eval.metrics"),
    ({"multibehavior": {"warmup_ratio": 1.0}}, "multibehavior.warmup_ratio"),
])  # fmt: skip
def test_values_that_failed_late_or_never_are_refused_at_load(raw: dict, key: str) -> None:
    """Each of these loaded before and failed deep inside a run (or trained with a NaN learning rate)."""
    with pytest.raises(ConfigError, match=re.escape(key) + " must be"):
        config_from_dict(raw)


def test_mode_lists_agree_with_the_rooms_that_implement_them() -> None:
    from genrec.config import PRECISIONS
    from genrec.data.multibehavior_config import CANDIDATE_MODES, WINDOW_MODES
    from genrec.objectives.next_item import OBJECTIVES
    from genrec.runs.ranking_data import LABEL_MODES
    from genrec.sid.build import EMBEDDINGS, QUANTIZERS

    def options(key: str) -> set[str]:
        return set(RULES[key].need.removeprefix("one of ").split(", "))

    assert options("objective.name") == set(OBJECTIVES) and options("ranking.labels") == set(LABEL_MODES)
    assert options("sid.embeddings") == set(EMBEDDINGS) and options("sid.quantizer") == set(QUANTIZERS)
    assert options("multibehavior.candidates") == set(CANDIDATE_MODES)
    assert options("multibehavior.train_windows") == set(WINDOW_MODES)
    assert options("train.precision") == set(PRECISIONS)


def test_every_bundled_recipe_passes_its_checks() -> None:
    from genrec.config import RECIPES_DIR, recipe_names

    for name in recipe_names():
        load_config(RECIPES_DIR / f"{name}.yaml")
