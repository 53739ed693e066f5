"""Serving: the artifact format (``format``), ``genrec export`` (``export``), loaded artifacts and the Python API
(``artifact``), a micro-batcher (``batcher``) and an HTTP app (``app``).

This package stays import-light on purpose: ``genrec.cli`` imports ``genrec.serve.cli`` on every
command, so torch-heavy modules and the optional FastAPI extras are only imported where used.
"""

from __future__ import annotations

from typing import Any

__all__ = ["Artifact", "export_run", "load_artifact"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from genrec.serve import artifact

        return getattr(artifact, name)
    raise AttributeError(f"module 'genrec.serve' has no attribute '{name}'")
