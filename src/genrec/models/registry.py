"""``@register`` maps a model name to its class and names the class; train/ and eval/ dispatch on the class's
``kinds`` and capabilities (:mod:`genrec.models.base`), never on the name."""

from __future__ import annotations

from typing import Any

from genrec.config import dataclass_from_dict
from genrec.errors import ConfigError
from genrec.models.base import Model

MODELS: dict[str, type] = {}
DEFAULT_RERANKER = "hpgr"  # the ranker a two-stage re-rank trains unless its rerank.model.name says otherwise


def register(name: str):
    """Class decorator: ``@register("name")`` on a subclass of a kind (Retriever, Ranker or Generator) that has a
    ``Config`` dataclass and takes ``(cfg, num_items, max_len)``."""

    def deco(cls: type) -> type:
        if name in MODELS:
            raise RuntimeError(f"model '{name}' registered twice")
        if not (isinstance(cls, type) and issubclass(cls, Model) and cls.kinds):
            raise TypeError(f"model '{name}': subclass Retriever, Ranker or Generator (genrec.models.base)")
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


def _parsed(params: dict[str, Any]) -> tuple[type, Any]:
    """(class, ``Config``) of a ``model:`` section (``name`` plus its config keys), keys and types checked."""
    params = dict(params)
    name = params.pop("name", None)
    if name is None:
        raise ConfigError("model: missing 'name'")
    return get_model_class(name), model_config(name, params)


def build_model(params: dict[str, Any], num_items: int, max_len: int):
    """Build a model from the ``model:`` section of a run config (``name`` plus its config keys)."""
    cls, cfg = _parsed(params)
    return cls(cfg, num_items=num_items, max_len=max_len)


def check_model_config(params: dict[str, Any]) -> None:
    """Refuse a ``model:`` section before any work: its keys and types (the ``Config`` dataclass), then the class's
    own data-free checks (``check_config``, where a model has one)."""
    cls, cfg = _parsed(params)
    check = getattr(cls, "check_config", None)
    if check is not None:
        check(cfg)
