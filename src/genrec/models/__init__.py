"""Models: one registry maps a name to a class, its config dataclass and the kinds it implements."""

from genrec.models import gamer, glass, hpgr, hstu, hstu_ranker, mtgr, recency, sasrec, tiger  # noqa: F401  (registration)
from genrec.models.registry import MODELS, build_model, get_model_class

__all__ = ["MODELS", "build_model", "get_model_class"]
