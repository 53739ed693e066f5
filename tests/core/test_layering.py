"""One house, one direction: imports only go down the floors, and runs/train/eval/tune/serve never name a model.

Floors, lowest first: ``errors.py``, ``io.py`` and ``progress.py`` (the ground floor) < ``data/`` < ``config.py`` < ``nn/`` <
``sid/`` < ``models/`` < ``objectives/`` < ``runs/`` < ``eval/`` < ``train/`` < ``tune/`` < ``serve/`` < the command line
(``cli.py`` and every ``*/cli.py`` sub-command). A module may import its own floor and any floor below it.
``runs/`` (the run-folder layout, checkpoints, the run record, ``open_run``) sits below ``eval/`` because
evaluation, training and serving all open run folders.

Every import counts: module level, inside functions, under ``if TYPE_CHECKING:``, ``import genrec.x``,
``from genrec.x import y`` (``y`` resolved to a module when it is one) and relative imports.

The package root (``genrec/__init__.py``) is the front door: anything may import it, so its *eager* imports
may only reach the ground floor (``import genrec`` stays light and never drags a higher floor in); its lazy
imports (inside a function such as ``genrec.load``, or for type checking only) may reach any floor.

The allowlists below hold the edges still being removed by other parts of the re-partition. Each entry must
still exist: when the fix lands the test fails until the entry is deleted, so the lists can only shrink.
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import NamedTuple

import pytest

PKG = Path(__file__).resolve().parents[2] / "src" / "genrec"
FLOORS = ("ground", "data", "config", "nn", "sid", "models", "objectives", "runs", "eval", "train", "tune",
          "serve", "cli")
GROUND = ("errors", "io", "progress")

# (importing file under src/genrec, imported module) -> the part of the work that removes the edge
ALLOWED_EDGES: dict[tuple[str, str], str] = {}

# (file under src/genrec, model registry name written as a string literal) -> the part that removes it
ALLOWED_NAMES: dict[tuple[str, str], str] = {}
NAME_ROOMS = ("runs", "train", "eval", "tune", "serve")


class Edge(NamedTuple):
    file: str  # relative to src/genrec
    line: int
    target: str  # imported module, e.g. genrec.train.run
    lazy: bool  # inside a function or under TYPE_CHECKING


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PKG.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def room_of(module: str) -> str | None:
    """Floor of a ``genrec`` module ("root" for the package itself); None outside genrec."""
    parts = module.split(".")
    if parts[0] != "genrec":
        return None
    if len(parts) == 1:
        return "root"
    if parts[-1] == "cli":
        return "cli"
    if parts[1] in GROUND:
        return "ground"
    if parts[1] in ("config_checks", "config_sections"):  # the config floor's other files
        return "config"
    if parts[1] in FLOORS:
        return parts[1]
    raise AssertionError(f"{module}: no floor assigned; add it to FLOORS or GROUND in {Path(__file__).name}")


def _is_module(name: str) -> bool:
    p = PKG.parent.joinpath(*name.split("."))
    return p.with_suffix(".py").is_file() or (p / "__init__.py").is_file()


def _is_type_checking(node: ast.If) -> bool:
    t = node.test
    return (isinstance(t, ast.Name) and t.id == "TYPE_CHECKING") or (
        isinstance(t, ast.Attribute) and t.attr == "TYPE_CHECKING")


def imports_of(path: Path, source: str | None = None) -> list[Edge]:
    """Every genrec import in ``path`` (or in ``source``, read as if it were that file), with its line and
    whether it runs only lazily."""
    me = module_name(path)
    package = me if path.name == "__init__.py" else me.rpartition(".")[0]
    rel = str(path.relative_to(PKG))
    out: list[Edge] = []

    def visit(node: ast.AST, lazy: bool) -> None:
        for child in ast.iter_child_nodes(node):
            inner = lazy or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)) or (
                isinstance(child, ast.If) and _is_type_checking(child))
            if isinstance(child, ast.Import):
                out.extend(Edge(rel, child.lineno, a.name, lazy) for a in child.names)
            elif isinstance(child, ast.ImportFrom):
                if child.level:
                    base = package.split(".")[: len(package.split(".")) - (child.level - 1)]
                    src = ".".join(base + ([child.module] if child.module else []))
                else:
                    src = child.module or ""
                for a in child.names:
                    sub = f"{src}.{a.name}"
                    out.append(Edge(rel, child.lineno, sub if _is_module(sub) else src, lazy))
            visit(child, inner)

    visit(ast.parse(path.read_text() if source is None else source, str(path)), False)
    return [e for e in out if room_of(e.target) is not None]


def climbing(edge: Edge, importer: str) -> bool:
    target = room_of(edge.target)
    if target == "root" or target == importer:
        return False
    if importer == "root":
        return not edge.lazy and target != "ground"
    return FLOORS.index(target) > FLOORS.index(importer)  # type: ignore[arg-type]


def all_climbing_edges() -> list[tuple[Edge, str, str]]:
    found = []
    for path in sorted(PKG.rglob("*.py")):
        importer = room_of(module_name(path))
        for e in imports_of(path):
            if climbing(e, importer):  # type: ignore[arg-type]
                found.append((e, importer, room_of(e.target)))
    return found


def test_rooms_cover_every_module():
    rooms = {room_of(module_name(p)) for p in PKG.rglob("*.py")}
    assert rooms <= set(FLOORS) | {"root"}
    assert room_of("genrec.sid.cli") == room_of("genrec.cli") == "cli"
    assert room_of("genrec.io") == room_of("genrec.errors") == "ground"


def test_imports_only_go_down():
    edges = all_climbing_edges()
    bad = [f"{e.file}:{e.line}  {a} -> {b}  ({e.target})" for e, a, b in edges if (e.file, e.target)
           not in ALLOWED_EDGES]
    assert not bad, "imports that climb a floor (move the code down, or pass values in):\n" + "\n".join(bad)


def test_allowed_edges_still_exist():
    present = {(e.file, e.target) for e, _, _ in all_climbing_edges()}
    stale = [f"{f} -> {t}" for f, t in ALLOWED_EDGES if (f, t) not in present]
    assert not stale, "fixed edges still in ALLOWED_EDGES (delete them): " + ", ".join(stale)


def _name_literals() -> set[tuple[str, int, str]]:
    import genrec.models  # noqa: F401  (registers the built-in models)
    from genrec.models.registry import MODELS

    found = set()
    for room in NAME_ROOMS:
        for path in sorted((PKG / room).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in MODELS:
                    found.add((str(path.relative_to(PKG)), node.lineno, node.value))
    return found


def test_train_eval_serve_never_name_a_model():
    bad = sorted(f"{f}:{line}  \"{name}\"" for f, line, name in _name_literals() if (f, name) not in ALLOWED_NAMES)
    assert not bad, ("model registry names written as literals (dispatch on model.kinds or a capability):\n"
                     + "\n".join(bad))


def test_allowed_names_still_exist():
    present = {(f, name) for f, _, name in _name_literals()}
    stale = [f"{f}: {n}" for f, n in ALLOWED_NAMES if (f, n) not in present]
    assert not stale, "fixed names still in ALLOWED_NAMES (delete them): " + ", ".join(stale)


@pytest.mark.parametrize("source, expected", [
    ("from genrec.train.run import open_run\n", [("genrec.train.run", False)]),
    ("import genrec.serve.artifact\n", [("genrec.serve.artifact", False)]),
    ("def f():\n    from genrec.eval import retrieval\n", [("genrec.eval.retrieval", True)]),
    ("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from genrec.models.base import Retriever\n",
     [("genrec.models.base", True)]),
    ("from ..train import base\n", [("genrec.train.base", False)]),
    ("from . import codebook\n", [("genrec.sid.codebook", False)]),
    ("import numpy\nimport genrec\n", [("genrec", False)]),
])
def test_imports_of_reads_every_form(source, expected):
    """The reader must see each import form, or a climbing edge could hide behind it."""
    got = [(e.target, e.lazy) for e in imports_of(PKG / "sid" / "probe.py", source)]
    assert got == expected


def test_climbing_rules():
    """Same floor and downward are fine; upward is not; the root is lazy-only above the ground floor."""
    e = Edge("x.py", 1, "genrec.train.run", False)
    assert climbing(e, "sid") and not climbing(e, "serve") and not climbing(e, "train")
    assert climbing(e, "root") and not climbing(e._replace(lazy=True), "root")
    assert not climbing(Edge("x.py", 1, "genrec.errors", False), "root")
    assert not climbing(Edge("x.py", 1, "genrec", False), "data")
    assert climbing(Edge("x.py", 1, "genrec.data.cli", False), "train")  # sub-commands are the top floor
