"""Run configuration: dataclasses with working defaults, YAML files that override them, and
``section.key=value`` command-line overrides.

Unknown keys are errors (with a suggestion), never silently ignored: a typo in a recipe must not
train a different model than the one the user asked for.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib.resources
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from genrec.config_checks import check_ranges
from genrec.config_sections import (  # noqa: F401  (re-exported: the sections are part of this module's API)
    PRECISIONS,
    DataConfig,
    EvalConfig,
    GeneratorConfig,
    ObjectiveConfig,
    OptimConfig,
    RankingConfig,
    SIDConfig,
    TrainConfig,
    optim_knobs,
)
from genrec.data.multibehavior_config import MultiBehaviorConfig  # a recipe section kept beside its data
from genrec.errors import ConfigError


@dataclass
class RunConfig:
    model: dict[str, Any] = field(default_factory=lambda: {"name": "sasrec"})  # name + the model's keys
    data: DataConfig = field(default_factory=DataConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    ranking: RankingConfig = field(default_factory=RankingConfig)
    sid: SIDConfig = field(default_factory=SIDConfig)
    generator: GeneratorConfig = field(default_factory=GeneratorConfig)
    multibehavior: MultiBehaviorConfig = field(default_factory=MultiBehaviorConfig)
    pretrain: dict[str, Any] = field(default_factory=dict)  # HPGR stage 1 (genrec.train.pretrain.PretrainConfig)
    stages: list[str] = field(default_factory=list)  # e.g. [pretrain, finetune]; empty = the model's own stage
    source: str = ""  # where the recipe's numbers come from

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["train"]["betas"] = list(self.train.betas)
        return d


STAGES = ("pretrain", "finetune")

_SECTIONS = {"data": DataConfig, "objective": ObjectiveConfig, "train": TrainConfig, "eval": EvalConfig,
             "ranking": RankingConfig, "sid": SIDConfig, "generator": GeneratorConfig,
             "multibehavior": MultiBehaviorConfig}


def _suggest(key: str, options: list[str], prefix: str = "") -> str:
    close = difflib.get_close_matches(key, options, n=1)
    return f" (did you mean '{prefix}{close[0]}'?)" if close else f" (known: {', '.join(sorted(options))})"


def _coerce(value: Any, target_type: Any, where: str) -> Any:
    t = target_type if isinstance(target_type, str) else getattr(target_type, "__name__", str(target_type))
    t = str(t)
    if t.endswith(" | None"):  # an optional key: unset (as a run record writes it back), or of the type before
        if value is None:
            return None
        t = t.removesuffix(" | None")
    try:
        if t in ("int",) and not isinstance(value, bool):
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            return int(value)
        if t == "float":
            return float(value)
        if t == "bool":
            if isinstance(value, bool):
                return value
            raise ValueError
        if t == "str":
            return str(value)
        if t.startswith("tuple"):
            return tuple(float(v) for v in value)
        if t.startswith("list[int]"):
            return [int(v) for v in value]
        if t.startswith("list[str]"):
            if isinstance(value, str):
                return [v.strip() for v in value.split(",") if v.strip()]
            return [str(v) for v in value]
    except (TypeError, ValueError):
        raise ConfigError(f"{where}: expected {t}, got {value!r}") from None
    return value


def dataclass_from_dict(cls: type, data: dict[str, Any], where: str) -> Any:
    """Build ``cls`` from ``data``; unknown keys and wrongly typed values raise ConfigError."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(data).__name__}")
    known = {f.name: f for f in fields(cls)}
    kwargs = {}
    for key, value in data.items():
        if key not in known:
            raise ConfigError(f"unknown config key '{where}.{key}'" + _suggest(key, list(known), f"{where}."))
        kwargs[key] = _coerce(value, known[key].type, f"{where}.{key}")
    return cls(**kwargs)


def config_from_dict(raw: dict[str, Any], where: str = "config") -> RunConfig:
    """A :class:`RunConfig` from a recipe mapping (sections left out keep their defaults); an unknown section or
    key, a wrongly typed value or one out of range raises :class:`~genrec.errors.ConfigError` naming it."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: top level must be a mapping")
    allowed = {"model", "data", "objective", "train", "eval", "ranking", "sid", "generator", "multibehavior",
               "pretrain", "stages", "source"}
    for key in raw:
        if key not in allowed:
            raise ConfigError(f"{where}: unknown section '{key}'" + _suggest(key, list(allowed)))
    cfg = RunConfig()
    if "model" in raw:
        if not isinstance(raw["model"], dict):
            raise ConfigError(f"{where}: 'model' must be a mapping (name: ..., plus the model's keys)")
        cfg.model = {"name": "sasrec", **raw["model"]}
    for name, cls in _SECTIONS.items():
        if name in raw:
            setattr(cfg, name, dataclass_from_dict(cls, raw[name] or {}, name))
    if "pretrain" in raw:
        if not isinstance(raw["pretrain"] or {}, dict):
            raise ConfigError(f"{where}: 'pretrain' must be a mapping of HPGR stage-1 settings")
        cfg.pretrain = dict(raw["pretrain"] or {})
    if "stages" in raw:
        stages = raw["stages"] or []
        stages = [stages] if isinstance(stages, str) else stages
        if not isinstance(stages, list) or any(s not in STAGES for s in stages):
            raise ConfigError(f"{where}: stages {stages!r}: each must be one of {list(STAGES)}")
        cfg.stages = list(stages)
    if "source" in raw:
        cfg.source = str(raw["source"])
    check_ranges(cfg, where)
    return cfg


def _deep_merge(base: dict[str, Any], child: dict[str, Any]) -> dict[str, Any]:
    """``child`` over ``base``: mappings merge key by key, anything else (lists included) is replaced."""
    out = dict(base)
    for k, v in child.items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def load_yaml(path: str | Path, _seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """Read a recipe. ``extends: OTHER.yaml`` (relative to the recipe's folder) starts from OTHER and merges
    this file's keys over it, section by section, so an ablation recipe states only what it changes."""
    p = Path(path)
    if not p.exists():
        raise ConfigError(f"{p}: config file not found")
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{p}: invalid YAML{at}") from None
    data = data or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: top level must be a mapping of sections (model:, data:, train:, ...), "
                          f"not a {type(data).__name__}")
    if "extends" not in data:
        return data
    data = dict(data)
    parent = data.pop("extends")
    if not isinstance(parent, str) or not parent:
        raise ConfigError(f"{p}: 'extends' must be the path of another recipe")
    ppath = (p.parent / parent).resolve()
    if ppath in _seen or ppath == p.resolve():
        raise ConfigError(f"{p}: 'extends' forms a cycle through {ppath.name}")
    base = load_yaml(ppath, (*_seen, p.resolve()))
    if not isinstance(base, dict):
        raise ConfigError(f"{ppath}: top level must be a mapping")
    return _deep_merge(base, data)


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``section.key=value`` strings (values parsed as YAML) to a raw config mapping."""
    raw = dict(raw)
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"override '{item}': expected section.key=value")
        path, value = item.split("=", 1)
        parts = path.strip().split(".")
        try:
            parsed = yaml.safe_load(value)
        except yaml.YAMLError:
            parsed = value
        if parts == ["stages"] or parts == ["source"]:
            raw[parts[0]] = parsed
            continue
        if len(parts) < 2 or (len(parts) > 2 and parts[0] not in ("model", "pretrain")):
            raise ConfigError(f"override '{item}': expected section.key=value (e.g. train.lr=0.001)")
        node = dict(raw.get(parts[0]) or {})
        raw[parts[0]] = node
        for part in parts[1:-1]:  # nested keys (pretrain.sem.d_model=64)
            child = dict(node.get(part) or {})
            node[part] = child
            node = child
        node[parts[-1]] = parsed
    return raw


def with_ablation(raw: dict[str, Any], ablation: str | Path) -> dict[str, Any]:
    """``raw`` with the keys an ablation recipe states itself (not its ``extends`` or ``source``) merged over it:
    the same change applied to another size of the model (e.g. a CPU-budget recipe)."""
    p = Path(ablation)
    if not p.exists():
        raise ConfigError(f"{p}: ablation recipe not found")
    try:
        own = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError:
        raise ConfigError(f"{p}: invalid YAML") from None
    if not isinstance(own, dict):
        raise ConfigError(f"{p}: top level must be a mapping")
    return _deep_merge(raw, {k: v for k, v in own.items() if k not in ("extends", "source")})


def load_config(path: str | Path | None = None, overrides: list[str] | None = None,
                ablation: str | Path | list[str | Path] | None = None) -> RunConfig:
    """A recipe, then the own keys of each ``ablation`` recipe in order, then ``section.key=value`` overrides."""
    raw = load_yaml(path) if path else {}
    for abl in ([ablation] if isinstance(ablation, (str, Path)) else ablation or []):
        raw = with_ablation(raw, abl)
    raw = apply_overrides(raw, overrides or [])
    return config_from_dict(raw, str(path) if path else "config")


# The bundled recipes: package data (``genrec/configs``, in a source checkout a link to the top-level ``configs/``
# folder, copied into the wheel), so an installed genrec finds them too.
RECIPES_DIR = Path(str(importlib.resources.files("genrec") / "configs"))


def recipe_names() -> list[str]:
    """Names of the recipes in :data:`RECIPES_DIR` (``genrec train NAME``), sorted; empty without the folder."""
    return sorted(p.stem for p in RECIPES_DIR.glob("*.yaml")) if RECIPES_DIR.is_dir() else []


def resolve_recipe(name: str | None) -> str | None:
    """A recipe argument -> a YAML path: an existing path as given, else ``configs/NAME.yaml``; None stays None."""
    if name is None:
        return None
    p = Path(name)
    if p.exists():
        return str(p)
    cand = RECIPES_DIR / f"{name}.yaml"
    if cand.exists():
        return str(cand)
    raise ConfigError(f"config '{name}' not found (a YAML path, or one of: {', '.join(recipe_names())})")


def replace(cfg: Any, **kw: Any) -> Any:
    return dataclasses.replace(cfg, **kw)


def early_stop_metric(cfg: RunConfig, default: str) -> str:
    """``train.early_stop_metric``, with ``auto`` resolved to the trainer's default (ndcg@10 or auc)."""
    m = cfg.train.early_stop_metric
    return default if m in ("", "auto") else m
