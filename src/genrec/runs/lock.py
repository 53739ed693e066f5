"""One writer per run folder: an ``flock`` on ``RUN_DIR/.lock``, held while a process trains into the folder.

Two trainings started into one ``--out`` would prune each other's checkpoints; the second is refused in one line
instead. The kernel drops an ``flock`` when its process ends, however it ends, so a crashed or killed run never
leaves a lock behind: the file may stay, with the dead writer's pid in it, and the next run takes it. Within one
process the lock is re-entrant (a script may build several trainers on one folder in turn). Under ``torchrun``
only the main process takes it (the others write nothing).
"""

from __future__ import annotations

import errno
import fcntl
import os
from pathlib import Path

from genrec.errors import CheckpointError
from genrec.runs.layout import LOCK_FILE

_HELD: dict[Path, tuple[int, int]] = {}  # lock file -> (open descriptor, holders in this process)


def pid_alive(pid: int) -> bool:
    """Whether a process with this id exists (on this machine)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OSError:
        return False
    return True


def _holder(path: Path) -> str:
    try:
        pid = path.read_text().strip()
    except OSError:
        return "another process"
    return f"process {pid}" if pid.isdigit() else "another process"


def acquire(run_dir: str | Path) -> Path:
    """Take the writer's lock of ``run_dir`` (created if needed); returns the lock file to :func:`release`.

    Raises a one-line :class:`CheckpointError` when another live process holds it.
    """
    path = (Path(run_dir) / LOCK_FILE).resolve()
    if path in _HELD:
        fd, n = _HELD[path]
        _HELD[path] = (fd, n + 1)
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        os.close(fd)
        if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            raise CheckpointError(f"{path}: cannot lock the run folder ({exc.strerror})") from None
        raise CheckpointError(f"{path.parent}: {_holder(path)} is already training into this run folder; "
                              "wait for it to finish or use another --out") from None
    os.ftruncate(fd, 0)
    os.write(fd, str(os.getpid()).encode())
    _HELD[path] = (fd, 1)
    return path


def release(path: Path) -> None:
    """Give back one hold of a lock taken with :func:`acquire` (the last one unlocks the file)."""
    if path not in _HELD:
        return
    fd, n = _HELD[path]
    if n > 1:
        _HELD[path] = (fd, n - 1)
        return
    del _HELD[path]
    fcntl.flock(fd, fcntl.LOCK_UN)
    os.close(fd)
