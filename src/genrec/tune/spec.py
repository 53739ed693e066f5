"""A recipe search spec (YAML): the base recipe, the search space, the metric and the per-trial budget.

::

    recipe: sasrec-beauty           # base recipe: a name from configs/ or a path (relative to this file)
    metric: ndcg@10                 # validation metric; default: the recipe's train.early_stop_metric
    budget: {seconds: 600, epochs: 60}   # per trial: training seconds (across resumes) and/or epochs
    fixed: {train.num_threads: 1}   # overrides every trial gets (and best.yaml keeps)
    trials: 12                      # how many trials (grid: the first N combinations; default all)
    baseline: true                  # trial 0000 = the base recipe as it is (counts as one of the trials)
    seed: 0
    random:                         # or grid: (lists only) or optuna: (same forms as random:)
      train.lr: {log_uniform: [3.0e-4, 3.0e-3]}
      model.dropout: [0.2, 0.5]     # a list = a choice
      model.num_layers: {int: [1, 4]}
      objective:                    # choices that are mappings set several keys together (a named group)
        - {objective.name: full_softmax}
        - {objective.name: sampled_softmax, objective.num_negatives: 256}

Every key must be a config key (``section.key``, ``model.KEY`` of the base model, ``pretrain.KEY``, ``stages``,
``source``); a spec that names another is refused in one line before any trial runs, and so is a value the
recipe checks would refuse.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from genrec.config import RunConfig, config_from_dict, load_yaml, resolve_recipe
from genrec.errors import ConfigError

METHODS = ("grid", "random", "optuna")
RANGES = ("choice", "uniform", "log_uniform", "int")
SPEC_KEYS = ("recipe", "metric", "budget", "fixed", "trials", "seed", "startup_trials", "baseline", *METHODS)
BUDGET_KEYS = ("seconds", "epochs")
TOP_LEVEL = ("stages", "source")  # config keys without a section
SIGNIFICANT = 6  # sampled floats keep 6 significant digits: readable recipes, and the same value on every replay


@dataclass
class Param:
    """One dimension of the space. ``kind`` is a :data:`RANGES` entry; ``values`` the choices (scalars, or
    ``{dotted key: value}`` mappings when ``group``) or ``[low, high]``."""

    name: str
    kind: str
    values: list[Any]
    group: bool = False

    def overrides(self, value: Any) -> dict[str, Any]:
        """The config overrides a drawn value stands for."""
        return dict(value) if self.group else {self.name: value}

    def keys(self) -> list[str]:
        return sorted({k for v in self.values for k in v}) if self.group else [self.name]

    def probes(self) -> list[Any]:
        """The values to check against the recipe: every choice, or both ends of a range."""
        if self.kind == "int":
            return [int(v) for v in self.values]
        return list(self.values)


@dataclass
class SearchSpec:
    """A parsed spec; ``base`` is the base recipe's raw mapping (``extends:`` resolved)."""

    path: Path
    recipe: str
    base: dict[str, Any]
    method: str
    params: list[Param]
    metric: str = ""
    budget: dict[str, float] = field(default_factory=dict)
    fixed: dict[str, Any] = field(default_factory=dict)
    trials: int = 0  # 0 = every grid combination
    seed: int = 0
    startup_trials: int = 0  # optuna: random trials before TPE; 0 = a third of the trials (at least 2)
    baseline: bool = False  # trial 0000 trains the base recipe as it is (under the same budget), before the rest

    def identity(self) -> dict[str, Any]:
        """What must not change between two calls of one search (``trials`` may grow: the search goes on)."""
        d = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("path", "trials", "params")}
        d["params"] = [dataclasses.asdict(p) for p in self.params]
        return d


def merge_overrides(raw: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """``raw`` (a recipe mapping) with ``{dotted key: value}`` set, values as given (no YAML re-parsing)."""
    out = dict(raw)
    for key, value in overrides.items():
        parts = key.split(".")
        if len(parts) == 1:
            out[key] = value
            continue
        node = out[parts[0]] = dict(out.get(parts[0]) or {})
        for part in parts[1:-1]:
            node[part] = dict(node.get(part) or {})
            node = node[part]
        node[parts[-1]] = value
    return out


def build_config(raw: dict[str, Any], where: str) -> RunConfig:
    """A config from a raw mapping, with the model's and ``pretrain:``'s own keys checked too."""
    from genrec.models.registry import model_config
    from genrec.train.pretrain import parse_pretrain_config

    cfg = config_from_dict(raw, where)
    model = dict(cfg.model)
    model_config(model.pop("name"), model)
    if cfg.pretrain:
        parse_pretrain_config(cfg.pretrain)
    return cfg


def _known_keys(section: str, base: dict[str, Any]) -> list[str] | None:
    """The keys a section takes; None for a section that does not exist."""
    import genrec.models  # noqa: F401  (registers the built-in models)
    from genrec.models.registry import get_model_class
    from genrec.train.pretrain import PretrainConfig

    if section == "model":
        name = (base.get("model") or {}).get("name") or RunConfig().model["name"]
        return ["name", *(f.name for f in fields(get_model_class(name).Config))]
    if section == "pretrain":
        return [f.name for f in fields(PretrainConfig)]
    sub = getattr(RunConfig(), section, None) if section not in TOP_LEVEL else None
    return [f.name for f in fields(sub)] if dataclasses.is_dataclass(sub) else None


def check_key(key: str, base: dict[str, Any], where: str) -> None:
    """Refuse a dotted key that is no config key, in one line naming it (and the closest real one)."""
    if key in TOP_LEVEL:
        return
    section, _, rest = key.partition(".")
    known = _known_keys(section, base) if rest else None
    name = rest.split(".")[0]
    if known is not None and (name in known or section == "pretrain" and name in ("sem", "mim")):
        return
    if known is not None:
        close = difflib.get_close_matches(key, [f"{section}.{k}" for k in known], n=1)
    else:  # an unknown section: the closest section with the same key
        sections = [f.name for f in fields(RunConfig) if f.name not in TOP_LEVEL]
        close = [f"{c}.{rest}" for c in difflib.get_close_matches(section, sections, n=1)] if rest else []
    hint = f" (did you mean '{close[0]}'?)" if close else " (write section.key, e.g. train.lr)"
    raise ConfigError(f"{where}: '{key}' is not a config key{hint}")


def _parse_param(name: str, entry: Any, method: str, where: str) -> Param:
    if isinstance(entry, dict) and method != "grid" and len(entry) == 1 and next(iter(entry)) in RANGES:
        kind, values = next(iter(entry.items()))
    elif isinstance(entry, list):
        kind, values = "choice", entry
    else:
        forms = "a list of values" if method == "grid" else f"a list of choices or {{{' | '.join(RANGES)}: ...}}"
        raise ConfigError(f"{where}: '{name}' must be {forms}")
    if not isinstance(values, list) or not values:
        raise ConfigError(f"{where}: '{name}': expected a non-empty list")
    if kind == "choice":
        group = all(isinstance(v, dict) for v in values)
        if not group and any(isinstance(v, (dict, list)) for v in values):
            raise ConfigError(f"{where}: '{name}': choices are scalars, or all mappings of config keys (a group)")
        return Param(name, kind, list(values), group)
    if len(values) != 2 or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        raise ConfigError(f"{where}: '{name}': {kind} takes [low, high]")
    low, high = (float(v) for v in values)
    if not low < high or (kind == "log_uniform" and low <= 0) or (kind == "int" and not (low.is_integer()
                                                                                          and high.is_integer())):
        raise ConfigError(f"{where}: '{name}': {kind} [{values[0]}, {values[1]}] is not a valid range")
    return Param(name, kind, [low, high])


def _base_recipe(recipe: Any, spec_path: Path) -> tuple[str, dict[str, Any]]:
    if not isinstance(recipe, str) or not recipe:
        raise ConfigError(f"{spec_path}: 'recipe' must name the base recipe (a configs/ name or a YAML path)")
    beside = spec_path.parent / recipe
    path = str(beside) if beside.is_file() else resolve_recipe(recipe)
    return str(path), load_yaml(path)


def parse_spec(raw: Any, spec_path: Path) -> SearchSpec:
    """Check a spec mapping and resolve its base recipe (not yet the values: :func:`check_values`)."""
    where = str(spec_path)
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: a search spec is a mapping (recipe:, grid: / random: / optuna:, ...)")
    for key in raw:
        if key not in SPEC_KEYS:
            close = difflib.get_close_matches(str(key), SPEC_KEYS, n=1)
            raise ConfigError(f"{where}: unknown spec key '{key}'" + (f" (did you mean '{close[0]}'?)" if close else ""))
    methods = [m for m in METHODS if m in raw]
    if len(methods) != 1:
        raise ConfigError(f"{where}: give exactly one search space: grid:, random: or optuna:")
    method = methods[0]
    space = raw[method]
    if not isinstance(space, dict) or not space:
        raise ConfigError(f"{where}: '{method}' must map config keys to their values")
    recipe, base = _base_recipe(raw.get("recipe"), spec_path)
    budget = raw.get("budget") or {}
    if not isinstance(budget, dict) or any(k not in BUDGET_KEYS for k in budget):
        raise ConfigError(f"{where}: 'budget' takes {', '.join(BUDGET_KEYS)}")
    fixed = raw.get("fixed") or {}
    if not isinstance(fixed, dict):
        raise ConfigError(f"{where}: 'fixed' must map config keys to values")
    spec = SearchSpec(spec_path, recipe, base, method, [_parse_param(str(k), v, method, where) for k, v in space.items()],
                      metric=str(raw.get("metric") or ""), budget={k: float(v) for k, v in budget.items()},
                      fixed=dict(fixed), trials=_count(raw, "trials", where), seed=_count(raw, "seed", where),
                      startup_trials=_count(raw, "startup_trials", where), baseline=_flag(raw, "baseline", where))
    if method != "grid" and not spec.trials:
        raise ConfigError(f"{where}: {method} search needs 'trials: N'")
    for key in [*spec.fixed, *(k for p in spec.params for k in p.keys())]:
        check_key(key, base, where)
    return spec


def _count(raw: dict[str, Any], key: str, where: str) -> int:
    value = raw.get(key, 0)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigError(f"{where}: '{key}' must be a whole number >= 0, got {value!r}")
    return value


def _flag(raw: dict[str, Any], key: str, where: str) -> bool:
    value = raw.get(key, False)
    if not isinstance(value, bool):
        raise ConfigError(f"{where}: '{key}' must be true or false, got {value!r}")
    return value


def load_spec(path: str | Path) -> SearchSpec:
    """Read and check a spec file (keys, forms, base recipe); see :func:`check_values` for the values."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{p}: search spec not found")
    try:
        raw = yaml.safe_load(p.read_text())
    except yaml.YAMLError:
        raise ConfigError(f"{p}: invalid YAML") from None
    return parse_spec(raw, p)


def check_values(spec: SearchSpec, base: dict[str, Any]) -> None:
    """Build the recipe with each choice (each end of each range) alone, so a value the recipe checks refuse
    stops the search before its first trial, naming the key."""
    for p in spec.params:
        for value in p.probes():
            over = p.overrides(value)
            try:
                build_config(merge_overrides(base, over), "config")
            except ConfigError as exc:
                raise ConfigError(f"{spec.path}: {p.name}={value!r}: {exc}") from None


def round_value(value: float, low: float, high: float) -> float:
    """A sampled float kept to :data:`SIGNIFICANT` digits, inside ``[low, high]``."""
    if value == 0 or not math.isfinite(value):
        return value
    return min(max(float(f"{value:.{SIGNIFICANT}g}"), low), high)
