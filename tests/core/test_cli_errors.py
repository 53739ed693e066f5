"""The one error policy of the command line (genrec.errors.error_report): the user's input is one line naming
the file or key with exit status 2; a run that cannot go on is one line with status 1; any other exception is
one line saying it is a bug, naming its type and how to see the traceback (status 1); ``--debug`` re-raises."""

from __future__ import annotations

import errno
import subprocess
import sys
from pathlib import Path

import pytest

import genrec.cli as cli
from genrec.errors import DEBUG_HINT, ConfigError, error_report

pytestmark = pytest.mark.reliability
ROOT = Path(__file__).resolve().parents[2]


def failing(exc: BaseException):
    def cmd(args):
        raise exc

    return cmd


def one_line(capsys) -> str:
    out, err = capsys.readouterr()
    lines = [x for x in err.splitlines() if x.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


@pytest.mark.parametrize("exc, code, needles", [
    (ConfigError("recipe.yaml: train.lr must be > 0, got -1"), 2, ["genrec: error: recipe.yaml: train.lr"]),
    (KeyError("config"), 1, ["genrec: internal error (a bug in genrec", "KeyError: 'config'", DEBUG_HINT]),
    (AttributeError("'NoneType' object has no attribute 'x'\nsecond line"), 1, ["AttributeError: 'NoneType'"]),
    (RuntimeError(), 1, ["internal error", "RuntimeError;"]),
    (PermissionError(errno.EACCES, "Permission denied", "/data/out"), 1, ["genrec: error: /data/out: Permission"]),
    (FloatingPointError("training loss is nan at step 3; lower train.lr"), 1, ["genrec: error: training loss"]),
    (MemoryError(), 1, ["genrec: error: out of memory"]),
])  # fmt: skip
def test_every_exception_is_one_line_with_its_status(monkeypatch, capsys, exc, code, needles):
    monkeypatch.setattr(cli, "_cmd_models", failing(exc))
    assert cli.main(["models"]) == code
    line = one_line(capsys)
    assert all(n in line for n in needles), line
    assert (line, code) == error_report(exc)


def test_debug_re_raises_with_the_traceback(monkeypatch):
    monkeypatch.setattr(cli, "_cmd_models", failing(KeyError("config")))
    with pytest.raises(KeyError):
        cli.main(["--debug", "models"])
    monkeypatch.setattr(cli, "_cmd_models", failing(ConfigError("x: bad")))
    with pytest.raises(ConfigError):
        cli.main(["--debug", "models"])


def test_interrupt_and_closed_pipe_keep_their_statuses(monkeypatch, capsys):
    monkeypatch.setattr(cli, "_cmd_models", failing(KeyboardInterrupt()))
    assert cli.main(["models"]) == 130 and "interrupted" in one_line(capsys)
    monkeypatch.setattr(cli, "_cmd_models", failing(BrokenPipeError()))
    monkeypatch.setattr(cli, "_reader_gone", lambda: cli.BROKEN_PIPE)
    assert cli.main(["models"]) == 141


def test_the_installed_entry_point_prints_one_line_for_a_bug(tmp_path):
    """What a user runs (``sys.exit(main())``): a bug is one line on stderr, status 1, no traceback."""
    code = ("import sys, genrec.cli as c\n"
            "def boom(args): raise ValueError('x' * 5)\n"
            "c._cmd_models = boom\nsys.exit(c.main(['models']))\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                       env={"PYTHONPATH": str(ROOT / "src")}, cwd=tmp_path)
    assert r.returncode == 1 and r.stderr.count("\n") == 1 and "Traceback" not in r.stderr, r.stderr
    assert "internal error" in r.stderr and "ValueError: xxxxx" in r.stderr and "--debug" in r.stderr


def test_the_reliability_page_lists_the_whole_corpus():
    """docs/reliability.md names every test file marked ``reliability`` (what `make reliability` runs)."""
    import re

    page = (ROOT / "docs" / "reliability.md").read_text()
    listed = set(re.findall(r"`(tests/[\w/]+\.py)`", page.split("## The corpus", 1)[1]))
    marked = {str(p.relative_to(ROOT)) for p in (ROOT / "tests").rglob("test_*.py")
              if "pytestmark = pytest.mark.reliability" in p.read_text()}
    assert listed == marked
    assert "reliability:" in (ROOT / "Makefile").read_text() and "-m reliability" in (ROOT / "Makefile").read_text()
