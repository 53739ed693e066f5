"""Training objectives, separate from backbones so every encoder can reuse them."""

from genrec.objectives.next_item import OBJECTIVES, build_objective

__all__ = ["OBJECTIVES", "build_objective"]
