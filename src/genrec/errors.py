"""One exception type for every user-facing failure.

The CLI catches :class:`GenrecError` and prints its message on one line with a
non-zero exit code; anything else is a bug and shows a traceback only with ``--debug``.
"""

from __future__ import annotations


class GenrecError(Exception):
    """A problem with the user's input (file, column, config key, checkpoint...).

    The message must name the offending file or key so the user can fix it.
    """


class DataError(GenrecError):
    """Malformed or unusable data files."""


class ConfigError(GenrecError):
    """Unknown or invalid configuration keys and values."""


class CheckpointError(GenrecError):
    """A checkpoint that cannot be loaded into the requested model."""
