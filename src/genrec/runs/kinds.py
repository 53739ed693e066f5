"""A run's kind: how it is evaluated and opened, read from the model class (its kinds and capabilities), never
from its name."""

from __future__ import annotations

from typing import Any

from genrec.config import RunConfig
from genrec.models.base import GENERATOR, MULTI_BEHAVIOR, RANKER, RETRIEVER

# MULTI_BEHAVIOR: a generator whose protocol decodes per behavior (GAMER): session split, multi-target
RUN_KINDS = (RETRIEVER, RANKER, GENERATOR, MULTI_BEHAVIOR)


def kind_of(model_cls: Any) -> str:
    """The primary kind of a model class (or instance): generator before ranker before retriever, and a
    generator that takes behavior levels is a multi-behavior one."""
    kinds = model_cls.kinds
    if GENERATOR in kinds:
        return MULTI_BEHAVIOR if model_cls.protocol == MULTI_BEHAVIOR else GENERATOR
    return RANKER if RANKER in kinds else RETRIEVER


def config_kind(cfg: RunConfig) -> str:
    """The kind of the model a config names, read from the registry without building it."""
    import genrec.models  # noqa: F401  (registers the built-in models)
    from genrec.models.registry import get_model_class

    return kind_of(get_model_class(cfg.model["name"]))
