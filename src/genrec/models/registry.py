"""``@register`` maps a model name to its class; train/ and eval/ dispatch on the class's ``kinds``."""

from __future__ import annotations

from typing import Any

from genrec.config import dataclass_from_dict
from genrec.errors import ConfigError

MODELS: dict[str, type] = {}


def register(name: str):
    def deco(cls: type) -> type:
        if name in MODELS:
            raise RuntimeError(f"model '{name}' registered twice")
        cls.registry_name = name
        MODELS[name] = cls
        return cls

    return deco


def get_model_class(name: str) -> type:
    if name not in MODELS:
        raise ConfigError(f"unknown model '{name}' (registered: {', '.join(sorted(MODELS))})")
    return MODELS[name]


def model_config(name: str, params: dict[str, Any]) -> Any:
    cls = get_model_class(name)
    return dataclass_from_dict(cls.Config, params, "model")


def build_model(params: dict[str, Any], num_items: int, max_len: int):
    """Build a model from the ``model:`` section of a run config (``name`` plus its config keys)."""
    params = dict(params)
    name = params.pop("name", None)
    if name is None:
        raise ConfigError("model: missing 'name'")
    cls = get_model_class(name)
    cfg = model_config(name, params)
    return cls(cfg, num_items=num_items, max_len=max_len)
