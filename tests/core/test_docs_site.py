"""The documentation site (issue 20, item 6): the strict MkDocs build passes, the configuration reference is what
the generator writes from the config dataclasses, and the commands and code of the guides run as written."""

from __future__ import annotations

import datetime
import importlib.util
import os
import random
import re
import shlex
import subprocess
import sys
from dataclasses import fields, is_dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"


def _hook(name: str):
    spec = importlib.util.spec_from_file_location(f"docs_hook_{name}", DOCS / "hooks" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_config_reference_is_what_the_generator_writes():
    gen = _hook("config_reference")
    assert not gen.is_stale(), "docs/reference/config.md is stale: run python docs/hooks/config_reference.py"


def test_config_reference_covers_every_section_and_key():
    from genrec.config import RunConfig
    from genrec.models.registry import MODELS

    page = _hook("config_reference").render()
    for f in fields(RunConfig):
        default = f.default_factory() if callable(f.default_factory) else f.default
        assert f"`{f.name}" in page
        for key in fields(default) if is_dataclass(default) else ():
            assert f"| `{key.name}` |" in page, (f.name, key.name)
    for name, cls in MODELS.items():
        if not cls.__module__.startswith("genrec.models."):
            assert f"`{name}`" not in page  # a model registered outside genrec (here, by another test)
            continue
        assert f"### `{name}`" in page
        assert all(f"| `{k.name}` |" in page for k in fields(cls.Config)), name
    assert "| `lr` | `float` | `0.001` | > 0 |" in page  # ranges come from genrec.config_checks.BOUNDS


def test_docstring_roles_become_code():
    strip = _hook("docstring_roles").strip_roles
    assert strip("see :class:<code>~genrec.serve.artifact.Artifact</code>.") == "see <code>Artifact</code>."
    assert strip(":mod:<code>genrec.serve</code>") == "<code>genrec.serve</code>"


def test_site_builds_strict(tmp_path):
    for mod in ("mkdocs", "mkdocstrings", "mkdocstrings_handlers.python"):
        pytest.importorskip(mod, reason="the docs site needs the docs extra: pip install -e '.[docs]'")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    r = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(ROOT / "mkdocs.yml"),
                        "-d", str(tmp_path / "site")], cwd=ROOT, env=env, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-5000:]
    assert "WARNING" not in r.stderr, r.stderr[-5000:]
    api = (tmp_path / "site" / "reference" / "api" / "index.html").read_text()
    assert "train_run" in api and ":class:" not in api
    assert "| `" not in (tmp_path / "site" / "reference" / "config" / "index.html").read_text()  # tables render


def write_sample_logs(folder: Path) -> None:
    """The guides' example files: clicks.csv (header, ISO times, pv/cart/buy), u.data and log.tsv (no header)."""
    rng = random.Random(0)
    t0 = datetime.datetime(2024, 3, 1, 8, 0, 0, tzinfo=datetime.timezone.utc)
    rows = []
    for u in range(1, 41):
        t = t0 + datetime.timedelta(hours=rng.randint(0, 200))
        for _ in range(rng.randint(8, 20)):
            t += datetime.timedelta(seconds=rng.choice([30, 120, 600, 4000, 90000]))
            item = f"sku{rng.randint(1, 30):03d}"
            rows.append((u, item, t, "pv"))
            if rng.random() < 0.3:
                t += datetime.timedelta(seconds=60)
                rows.append((u, item, t, rng.choice(["cart", "buy"])))
    (folder / "clicks.csv").write_text("uid,sku,ts,event\n" + "".join(
        f"u{u},{i},{t:%Y-%m-%dT%H:%M:%S},{e}\n" for u, i, t, e in rows))
    (folder / "u.data").write_text("".join(
        f"{u}\t{int(i[3:])}\t{rng.randint(1, 5)}\t{int(t.timestamp())}\n" for u, i, t, _ in rows))
    (folder / "log.tsv").write_text("".join(f"u{u}\t{i}\t{t:%Y-%m-%d %H:%M:%S}\t{e}\n" for u, i, t, e in rows))


def shell_commands(page: Path) -> list[list[str]]:
    """The commands of a page's ```bash blocks, continuation lines joined and comments dropped."""
    out = []
    for block in re.findall(r"```bash\n(.*?)```", page.read_text(), re.S):
        for line in block.replace("\\\n", " ").splitlines():
            argv = shlex.split(line, comments=True)
            if argv:
                out.append(argv)
    return out


def test_own_logs_guide_data_commands_run_as_written(tmp_path, monkeypatch, capsys):
    from genrec.cli import main

    write_sample_logs(tmp_path)
    monkeypatch.chdir(tmp_path)
    data = [argv for argv in shell_commands(DOCS / "own-logs.md") if argv[:2] == ["genrec", "data"]]
    assert len(data) >= 6
    for argv in data:
        assert main(argv[1:]) == 0, argv
    out = capsys.readouterr().out
    assert "behaviors pv < cart < buy" in out and "dropped_min_rating" in out
    assert (tmp_path / "data_cache" / "log" / "manifest.json").exists()


@pytest.mark.slow
def test_python_api_page_runs_as_written(tmp_path):
    write_sample_logs(tmp_path)
    blocks = re.findall(r"```python\n(.*?)```", (DOCS / "python-api.md").read_text(), re.S)
    assert len(blocks) == 2
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    for n, code in enumerate(blocks):
        script = tmp_path / f"block{n}.py"
        script.write_text(code)
        r = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True,
                           timeout=600)
        assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]
    assert (tmp_path / "artifacts" / "clicks-sasrec" / "artifact.json").exists()
