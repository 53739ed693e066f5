"""Datasets of the SeqRecBenchmark processing (Amazon 2014 Books sample and its siblings), as staged as text.

The repository ``Tiny-Snow/SeqRecBenchmark-Datasets`` ships pandas pickles; the staged copy rewrites them as

- ``interactions.csv.gz``: header ``user_id,item_id,timestamp``, integer ids, whole unix seconds (review dates at
  day resolution for Amazon), rows grouped by user in the source's chronological order;
- ``items.jsonl.gz`` (optional): one ``{"item_id": int, "title": str}`` object per line, the item text that
  semantic IDs are built from (``sid.text_fields: [title]``);
- ``summary.json`` (optional): the source's own counts (``user_size``, ``item_size``, ``interactions``);
- ``SOURCE.md`` (optional): provenance, with the sha256 of each staged file in its table.

Why strict: the files are already processed (5-core, re-indexed), so there is nothing to clean and a row that is
off means a broken copy. Every row is checked (integer ids, whole unix seconds; in the items file an integer id,
a non-empty title, each id once) and the first bad one is a one-line error naming the file and line. The sha256
values of SOURCE.md and the counts of summary.json are checked when present, and what was checked is stamped in
the manifest. Same-day events are tied and the source's sort put them in arbitrary order; the prepare default
(``tie_order: stable``) keeps the file's order, so the dataset is the same on every machine.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pyarrow as pa

from genrec.data.prepare import RawLog
from genrec.data.schema import sha256_file
from genrec.data.sources import _io
from genrec.errors import DataError

INTERACTIONS_NAME = "interactions.csv.gz"
ITEMS_NAME = "items.jsonl.gz"
SUMMARY_NAME = "summary.json"
PROVENANCE_NAME = "SOURCE.md"
_COLUMNS = ("user_id", "item_id", "timestamp")
_SHA256 = re.compile(r"\b[0-9a-f]{64}\b")


def _beside(inter: Path, name: str) -> Path | None:
    p = inter.parent / name
    return p if p.is_file() and p != inter else None


def _interactions_file(path: Path) -> Path:
    if path.is_dir():
        inter = path / INTERACTIONS_NAME
        if not inter.exists():
            raise DataError(f"{path}: no {INTERACTIONS_NAME} in this folder")
        return inter
    return _io.require_file(path)


def documented_sha256(source_md: Path, name: str) -> str | None:
    """The stored-file sha256 SOURCE.md lists for ``name``: the first 64-hex value on its table row, if any.

    The staging notes put one table row per file (``| name ... | bytes | sha256 (stored) | sha256 (uncompressed)
    |``), so the first hash on the row is the one of the bytes on disk.
    """
    with _io.data_errors(str(source_md)):
        text = source_md.read_text(encoding="utf-8")
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.lstrip().startswith("|") and cells and cells[0].split()[:1] == [name]:
            found = _SHA256.search(line)
            return found.group(0) if found else None
    return None


def verify_checksums(files: list[Path], source_md: Path | None) -> dict[str, str]:
    """Each file's sha256 against SOURCE.md when it lists one; a mismatch is a one-line DataError.

    Returns what was done per file (``verified``, ``not listed``, or ``no SOURCE.md``) for the manifest.
    """
    if source_md is None:
        return {f.name: f"no {PROVENANCE_NAME}" for f in files}
    done = {}
    for f in files:
        want = documented_sha256(source_md, f.name)
        if want is None:
            done[f.name] = "not listed"
            continue
        got = sha256_file(f)
        if got != want:
            raise DataError(f"{f}: sha256 {got} does not match {want} listed in {source_md} (a changed or "
                            "truncated copy)")
        done[f.name] = "verified"
    return done


def read_titles(path: Path) -> pa.Table:
    """``external_id`` and ``title`` from the JSON-lines items file, every line checked."""
    ids: list[int] = []
    titles: list[str] = []
    seen: dict[int, int] = {}
    lines = _io.read_text(path).split("\n")
    if lines and lines[-1] == "":
        lines.pop()  # the final newline
    for lineno, line in enumerate(lines, 1):
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}: line {lineno}: not a JSON object ({exc.msg})") from None
        if not isinstance(obj, dict):
            raise DataError(f"{path}: line {lineno}: not a JSON object")
        item, title = obj.get("item_id"), obj.get("title")
        if type(item) is not int or item < 0:
            raise DataError(f"{path}: line {lineno}: item_id {item!r} is not an unsigned integer id")
        if not isinstance(title, str) or not title.strip():
            raise DataError(f"{path}: line {lineno}: title {title!r} is not a non-empty string")
        if item in seen:
            raise DataError(f"{path}: line {lineno}: item_id {item} repeats line {seen[item]}")
        seen[item] = lineno
        ids.append(item)
        titles.append(title)
    if not ids:
        raise DataError(f"{path}: no item rows")
    return pa.table({"external_id": pa.array([str(i) for i in ids], pa.string()),
                     "title": pa.array(titles, pa.string())})


def _check_titled(inter: Path, item: np.ndarray, items_path: Path, titled: pa.Table) -> None:
    """Every item of the log has a row in the items file (the first line without one is the error)."""
    known = np.asarray(titled.column("external_id").to_pylist(), dtype=np.int64)
    missing = ~np.isin(item, known)
    if missing.any():
        k = int(np.flatnonzero(missing)[0])
        raise DataError(f"{inter}: line {k + 2}: item_id {int(item[k])} has no row in {items_path.name} "
                        f"({int(np.unique(item[missing]).size)} items lack one)")


def check_summary(summary: Path, user: np.ndarray, item: np.ndarray) -> None:
    """The log's users, items and rows against the counts the source wrote in ``summary.json``."""
    with _io.data_errors(str(summary), "not valid JSON"):
        doc = json.loads(_io.read_text(summary))
    have = {"user_size": int(np.unique(user).size), "item_size": int(np.unique(item).size),
            "interactions": int(user.size)}
    for key, n in have.items():
        want = doc.get(key) if isinstance(doc, dict) else None
        if want is not None and want != n:
            raise DataError(f"{summary}: {key} {want} but the interactions file has {n}: the files do not belong "
                            "together")


def read_seqrecbench(path: str | Path) -> RawLog:
    """Read a SeqRecBenchmark folder (or its ``interactions.csv.gz``) with the item titles beside it."""
    inter = _interactions_file(Path(path))
    items_path = _beside(inter, ITEMS_NAME)
    summary = _beside(inter, SUMMARY_NAME)
    files = [inter] + [p for p in (items_path, summary) if p is not None]
    checksums = verify_checksums(files, _beside(inter, PROVENANCE_NAME))
    table = _io.read_text_columns(inter, _COLUMNS)
    user = _io.unsigned_integers(inter, table, "user_id", "an unsigned integer id")
    item = _io.unsigned_integers(inter, table, "item_id", "an unsigned integer id")
    ts = _io.unsigned_integers(inter, table, "timestamp", "whole unix seconds")
    titles = None
    if items_path is not None:
        titles = read_titles(items_path)
        _check_titled(inter, item, items_path, titles)
    if summary is not None:
        check_summary(summary, user, item)
    return RawLog(
        user=user,
        item=item,
        timestamp=ts,
        items=titles,
        source="seqrecbench",
        sources=files,
        params={"timestamps": "unix seconds as staged (review dates: day resolution)",
                "item_text": ITEMS_NAME if items_path is not None else None,
                "summary_checked": summary is not None, "checksums": checksums},
        label=str(inter),
    )
