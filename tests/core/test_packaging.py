"""A built wheel is a whole genrec (issue 20, defect 3): the recipes travel as package data, so a wheel installed
into a fresh virtual environment runs `genrec quickstart` from any folder.

No network: the wheel is built with the setuptools of this environment (no build isolation), and the new
environment reaches torch and the other dependencies through a path file naming this environment's
site-packages (a venv's ``--system-site-packages`` would reach the base interpreter's instead).
"""

import os
import shutil
import site
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

import genrec
from genrec.config import RECIPES_DIR, recipe_names

ROOT = Path(__file__).resolve().parents[2]


def _run(cmd: list[str], cwd: Path, env: dict[str, str] | None = None, timeout: int = 300) -> str:
    r = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, f"{' '.join(cmd)}\n{r.stdout[-2000:]}\n{r.stderr[-3000:]}"
    return r.stdout + r.stderr


def test_recipes_are_package_data_and_the_top_level_folder_is_their_source():
    assert RECIPES_DIR == Path(genrec.__file__).parent / "configs"
    assert RECIPES_DIR.resolve() == (ROOT / "configs").resolve()  # one folder: docs keep saying configs/NAME.yaml
    assert set(recipe_names()) == {p.stem for p in (ROOT / "configs").glob("*.yaml")}


def test_a_wheel_installed_in_a_fresh_venv_runs_the_quickstart(tmp_path):
    pytest.importorskip("setuptools", reason="building the wheel offline needs setuptools in this environment")
    src = tmp_path / "src"  # a copy: building in the checkout would leave build/ and egg-info behind
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    shutil.copytree(ROOT / "configs", src / "configs")
    shutil.copytree(ROOT / "src", src / "src", symlinks=True, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q", "-w",
          str(tmp_path / "dist"), "."], cwd=src)
    wheel = next((tmp_path / "dist").glob("genrec-*.whl"))
    with zipfile.ZipFile(wheel) as zf:
        shipped = {Path(n).stem for n in zf.namelist() if n.startswith("genrec/configs/") and n.endswith(".yaml")}
    assert shipped == set(recipe_names())

    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], cwd=tmp_path)
    py = venv / "bin" / "python"
    _run([sys.executable, "-m", "pip", "--python", str(py), "install", "--no-deps", "--no-index", "-q", str(wheel)],
         cwd=tmp_path)
    venv_site = Path(_run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], cwd=tmp_path)
                     .strip())
    ours = [p for p in {*site.getsitepackages(), sysconfig.get_paths()["purelib"]} if Path(p).is_dir()]
    (venv_site / "dependencies.pth").write_text("\n".join(ours) + "\n")  # torch & co., after the venv's own genrec

    work = tmp_path / "elsewhere"  # no configs/ folder and no source tree around
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["OMP_NUM_THREADS"] = "1"
    where = _run([str(py), "-c", "import genrec; print(genrec.__file__)"], cwd=work, env=env)
    assert where.strip().startswith(str(venv)), where
    out = _run([str(venv / "bin" / "genrec"), "quickstart", "--out", "qs", "--set", "train.epochs=1",
                "data.synthetic_users=120", "data.synthetic_items=60", "model.d_model=16", "model.num_layers=1",
                "train.num_threads=1"], cwd=work, env=env)
    assert "Quick start" in out and "sasrec" in out and "hstu" in out, out
    assert (work / "qs" / "hstu" / "results" / "test.json").is_file()
