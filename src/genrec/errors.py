"""One exception type for every user-facing failure, and the one policy that turns any exception into a line.

A command ends in :func:`error_report` whatever it raises: a :class:`GenrecError` (the user's input: a file, a
column, a config key, a checkpoint) is its own one-line message and exit status 2; a run that cannot go on (a
NaN loss, out of memory, a file the system refuses) is one line and status 1; anything else is a bug in genrec,
said so in one line naming the exception type, status 1. ``genrec --debug`` re-raises instead (the traceback).
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


EXIT_INPUT = 2  # the user's input: fix the named file, key or folder and run again
EXIT_FAILED = 1  # the run could not go on (or a bug): Python's own status for an uncaught exception
EXIT_INTERRUPTED = 130  # 128 + SIGINT
DEBUG_HINT = "run `genrec --debug ...` for the traceback"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else ""


def error_report(exc: BaseException) -> tuple[str, int]:
    """The one line standard error shows for an exception that ended a command, and the exit status.

    Why one place: every room raises, only the top formats, so a new kind of failure cannot print a traceback
    at a user by accident: what is not a known kind is reported as a bug, with the hint to see its traceback.
    """
    if isinstance(exc, GenrecError):
        return f"genrec: error: {exc}", EXIT_INPUT
    if isinstance(exc, FloatingPointError):  # a NaN/inf loss: the message names the knobs that cure it
        return f"genrec: error: {exc}", EXIT_FAILED
    if isinstance(exc, MemoryError):
        return f"genrec: error: {_first_line(exc) or 'out of memory'}", EXIT_FAILED
    if isinstance(exc, OSError) and exc.filename is not None and exc.strerror:  # the system refused a named file
        return f"genrec: error: {exc.filename}: {exc.strerror}", EXIT_FAILED
    what = type(exc).__name__ + (f": {_first_line(exc)}" if _first_line(exc) else "")
    return f"genrec: internal error (a bug in genrec, please report it): {what}; {DEBUG_HINT}", EXIT_FAILED
