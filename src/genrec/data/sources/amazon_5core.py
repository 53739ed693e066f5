"""Amazon 2014 per-category 5-core review files (``reviews_<Category>_5.json``).

Only the four fields a recommender needs are parsed (reviewer, ASIN, rating, review day); the
review text is skipped at parse time so large categories stay cheap to read.
"""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.json as pjson

from genrec.data.prepare import RawLog
from genrec.data.sources import _io
from genrec.errors import DataError

_SCHEMA = pa.schema(
    [("reviewerID", pa.string()), ("asin", pa.string()), ("overall", pa.float64()), ("unixReviewTime", pa.int64())]
)


def _locate(path: Path) -> tuple[Path, str | None]:
    if not path.exists():
        raise DataError(f"{path}: file not found")
    if path.is_dir():
        cands = sorted(path.glob("reviews_*_5.json*")) or sorted(path.glob("*.zip")) or sorted(path.glob("*.json*"))
        if not cands:
            raise DataError(f"{path}: no reviews_*_5.json(.gz) or .zip in this folder")
        return _locate(cands[0])
    if _io.compression_of(path) == "zip":
        members = [m for m in _io.zip_members(path) if ".json" in m.rsplit("/", 1)[-1]]
        if len(members) != 1:
            raise DataError(f"{path}: expected one .json file in the zip, found {len(members)}")
        return path, members[0]
    return path, None


def read_meta(path: str | Path) -> pa.Table:
    """``external_id`` (ASIN), ``title``, ``categories`` from a 2014 ``meta_<Category>.json(.gz)``.

    Those files hold Python dict literals rather than JSON; they are parsed with
    ``ast.literal_eval`` (never ``eval``).
    """
    p = _io.require_file(path, "meta file")
    asins: list[str] = []
    titles: list[str | None] = []
    cats: list[str | None] = []
    for lineno, line in enumerate(_io.read_text(p).splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except ValueError:
            try:
                rec = ast.literal_eval(line)
            except (ValueError, SyntaxError):
                raise DataError(f"{p}: malformed row {lineno}: neither JSON nor a Python literal") from None
        if not isinstance(rec, dict) or "asin" not in rec:
            raise DataError(f"{p}: malformed row {lineno}: no 'asin'")
        asins.append(str(rec["asin"]))
        titles.append(rec.get("title"))
        paths = rec.get("categories") or []
        cats.append(" | ".join(" > ".join(map(str, c)) for c in paths if c) or None)
    return pa.table(
        {"external_id": pa.array(asins, pa.string()), "title": pa.array(titles, pa.string()),
         "categories": pa.array(cats, pa.string())}
    )  # fmt: skip


def read_amazon_5core(path: str | Path, *, meta: str | Path | None = None) -> RawLog:
    """Read a 5-core review file (plain, .gz or a zip holding one .json; or a folder with one)."""
    fpath, member = _locate(Path(path))
    where = _io.label(fpath, member)
    opts = pjson.ParseOptions(explicit_schema=_SCHEMA, unexpected_field_behavior="ignore")
    with _io.arrow_input(fpath, member) as f, _io.data_errors(where, "not valid JSON lines"):
        table = pjson.read_json(f, parse_options=opts)
    if table.num_rows == 0:
        raise DataError(f"{where}: no reviews")
    sources = [fpath]
    items = None
    if meta is not None:
        items = read_meta(meta)
        sources.append(Path(meta))
    return RawLog(
        user=table.column("reviewerID"),
        item=table.column("asin"),
        timestamp=table.column("unixReviewTime"),
        rating=table.column("overall"),
        items=items,
        source="amazon_5core",
        sources=sources,
        params={"timestamps": "review date (day resolution)"},
        label=where,
    )
