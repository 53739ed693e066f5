"""genrec: generative recommendation on one data pipeline and one evaluation protocol."""

from __future__ import annotations

from typing import TYPE_CHECKING

__version__ = "0.1.0"

from genrec.errors import GenrecError  # noqa: E402

if TYPE_CHECKING:
    from pathlib import Path

    from genrec.serve.artifact import Artifact

__all__ = ["GenrecError", "__version__", "load"]


def load(path: str | Path, device: str = "cpu") -> Artifact:
    """Open an artifact written by ``genrec export`` (see :mod:`genrec.serve.artifact`).

    Imports the serving code only when called, so ``import genrec`` stays light.
    """
    from genrec.serve.artifact import load_artifact

    return load_artifact(path, device=device)
