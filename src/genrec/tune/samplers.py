"""Which point of the space trial ``i`` trains: grid enumeration, seeded random draws, or Optuna's TPE.

Every point is a pure function of the spec, the trial's index and (TPE only) the results of the trials before
it, so a search that was killed and run again proposes the same trials, and a random search is reproduced by
its seed alone. A point maps each :class:`~genrec.tune.spec.Param` name to its drawn value (a group's value is
its mapping of overrides).
"""

from __future__ import annotations

import itertools
import math
from typing import Any

import numpy as np

from genrec.errors import ConfigError
from genrec.tune.spec import Param, SearchSpec, round_value

Point = dict[str, Any]


def grid_points(params: list[Param]) -> list[Point]:
    """Every combination, the first key varying slowest (the order of the spec)."""
    return [dict(zip((p.name for p in params), combo)) for combo in itertools.product(*(p.values for p in params))]


def grid_size(spec: SearchSpec) -> int:
    """Every combination (and the baseline trial, when the spec asks for one)."""
    return math.prod(len(p.values) for p in spec.params) + spec.baseline


def _draw(p: Param, rng: np.random.Generator) -> Any:
    if p.kind == "choice":
        return p.values[int(rng.integers(len(p.values)))]
    low, high = p.values
    if p.kind == "int":
        return int(rng.integers(int(low), int(high) + 1))
    if p.kind == "log_uniform":
        return round_value(math.exp(rng.uniform(math.log(low), math.log(high))), low, high)
    return round_value(float(rng.uniform(low, high)), low, high)


def random_point(params: list[Param], seed: int, index: int) -> Point:
    """Trial ``index``'s draw from numpy's generator seeded with ``(seed, index)``: the same trial whatever the
    number of trials or the order they run in."""
    rng = np.random.default_rng([seed, index])
    return {p.name: _draw(p, rng) for p in params}


def _distributions(params: list[Param]) -> dict[str, Any]:
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    out: dict[str, Any] = {}
    for p in params:
        if p.kind == "choice":  # by index: groups (mappings) and mixed scalars alike
            out[p.name] = CategoricalDistribution(list(range(len(p.values))))
        elif p.kind == "int":
            out[p.name] = IntDistribution(int(p.values[0]), int(p.values[1]))
        else:
            out[p.name] = FloatDistribution(p.values[0], p.values[1], log=p.kind == "log_uniform")
    return out


def _to_optuna(params: list[Param], point: Point) -> dict[str, Any]:
    return {p.name: p.values.index(point[p.name]) if p.kind == "choice" else point[p.name] for p in params}


def _from_optuna(params: list[Param], values: dict[str, Any]) -> Point:
    out: Point = {}
    for p in params:
        v = values[p.name]
        if p.kind == "choice":
            out[p.name] = p.values[int(v)]
        elif p.kind == "int":
            out[p.name] = int(v)
        else:
            out[p.name] = round_value(float(v), *p.values)
    return out


def optuna_point(spec: SearchSpec, index: int, history: list[tuple[Point, float]], minimize: bool) -> Point:
    """Trial ``index`` proposed by a TPE sampler seeded with ``(seed, index)`` that has seen ``history`` (the
    earlier trials with a value, in order): replaying it after a restart proposes the same point."""
    try:
        import optuna
    except ModuleNotFoundError:
        raise ConfigError("an optuna: search needs Optuna: pip install 'genrec[tune]' "
                          "(or use random:, which needs nothing more)") from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    startup = spec.startup_trials or max(2, spec.trials // 3)
    sampler = optuna.samplers.TPESampler(seed=(spec.seed * 1_000_003 + index) % 2**32, n_startup_trials=startup)
    study = optuna.create_study(direction="minimize" if minimize else "maximize", sampler=sampler)
    dists = _distributions(spec.params)
    for point, value in history:
        study.add_trial(optuna.trial.create_trial(params=_to_optuna(spec.params, point), distributions=dists,
                                                  value=value))
    return _from_optuna(spec.params, study.ask(dists).params)


def propose(spec: SearchSpec, index: int, history: list[tuple[Point, float]], minimize: bool) -> Point:
    """The point trial ``index`` trains (``history`` is read by TPE only). With ``baseline:`` trial 0 is the base
    recipe (the empty point) and trial ``i`` draws what trial ``i - 1`` would without it."""
    if spec.baseline:
        if index == 0:
            return {}
        index -= 1
        history = [(p, v) for p, v in history if p]  # the base recipe is no point of the space
    if spec.method == "grid":
        return grid_points(spec.params)[index]
    if spec.method == "random":
        return random_point(spec.params, spec.seed, index)
    return optuna_point(spec, index, history, minimize)


def overrides_of(params: list[Param], point: Point) -> dict[str, Any]:
    """The ``{dotted key: value}`` overrides a point stands for, in the spec's order."""
    out: dict[str, Any] = {}
    for p in params:
        if p.name in point:  # the baseline's empty point sets nothing
            out.update(p.overrides(point[p.name]))
    return out
