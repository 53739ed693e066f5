"""docs/architecture.md is the map of the house: every source file must be on it, and nothing on it may be gone."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PKG = ROOT / "src" / "genrec"
DOC = ROOT / "docs" / "architecture.md"


def source_files() -> list[Path]:
    return sorted(p for p in PKG.rglob("*.py") if p.name != "__init__.py")


def test_every_source_file_is_on_the_map():
    text = DOC.read_text()
    missing = [str(p.relative_to(PKG)) for p in source_files() if f"`{p.name}`" not in text
               and f"{p.name}`" not in text and f"/{p.name}" not in text]
    assert not missing, f"docs/architecture.md does not mention: {missing}"


def test_every_file_on_the_map_exists():
    names = {p.name for p in source_files()}
    cited = set(re.findall(r"`(?:[\w/]+/)?(\w+\.py)`", DOC.read_text()))
    gone = sorted(n for n in cited - names - {"__init__.py"} if not n.startswith("test_"))
    assert not gone, f"docs/architecture.md names files that no longer exist: {gone}"
