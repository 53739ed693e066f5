"""MovieLens ratings (100K ``u.data``, 1M/10M ``ratings.dat``, 20M/25M ``ratings.csv``).

The official archives differ in separator, header and item file, so the format is sniffed from
the first line instead of trusted from the name: the same reader takes a plain file, its .gz,
the official zip or a folder, and picks up movie titles/genres when they sit beside the ratings.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from genrec.data.prepare import RawLog
from genrec.data.sources import _io
from genrec.errors import DataError

RATING_FILES = ("ratings.csv", "ratings.dat", "u.data")
# a folder without an official ratings file: the staged ML-1M with reconstructed timestamps (see its SOURCE.md;
# the rows it still lacks a timestamp for are dropped and counted as missing_timestamps)
RECONSTRUCTED_FILES = ("ratings_reconstructed_ts.csv",)
ITEM_FILES = {"u.data": ("u.item",), "ratings.dat": ("movies.dat",), "ratings.csv": ("movies.csv",)}
ALL_ITEM_FILES = ("u.item", "movies.dat", "movies.csv")
ML100K_GENRES = (
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary", "Drama",
    "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller", "War", "Western",
)  # fmt: skip

_USER_NAMES = ("userid", "user_id", "user")
_ITEM_NAMES = ("movieid", "movie_id", "itemid", "item_id", "item")
_TYPES = {"user": pa.int64(), "item": pa.int64(), "rating": pa.float64(), "timestamp": pa.int64()}


def _beside(folder: Path, names: tuple[str, ...]) -> Path | None:
    for n in names:
        for cand in (folder / n, folder / (n + ".gz")):
            if cand.is_file():
                return cand
    return None


def _locate(path: Path) -> tuple[Path, str | None]:
    """(file, zip member) of the ratings table for a file, zip or folder argument."""
    if not path.exists():
        raise DataError(f"{path}: file not found")
    if path.is_dir():
        found = _beside(path, RATING_FILES) or _beside(path, RECONSTRUCTED_FILES)
        if found is None:
            zips = sorted(path.glob("ml-*.zip"))
            if zips:
                return _locate(zips[0])
            raise DataError(f"{path}: no MovieLens ratings file ({', '.join(RATING_FILES)}) in this folder")
        return found, None
    if _io.compression_of(path) == "zip":
        member = _io.find_zip_member(path, RATING_FILES)
        if member is None:
            raise DataError(f"{path}: zip has no MovieLens ratings file ({', '.join(RATING_FILES)})")
        return path, member
    return path, None


def _kind_of_line(line: str, where: str) -> str:
    if "::" in line:
        return "ratings.dat"
    if "\t" in line:
        return "u.data"
    if "," in line:
        return "ratings.csv"
    raise DataError(f"{where}: not a MovieLens ratings file (first line {line[:60]!r})")


def _read_ratings(path: Path, member: str | None) -> tuple[pa.Table, str]:
    where = _io.label(path, member)
    line = _io.first_line(path, member)
    kind = _kind_of_line(line, where)
    if kind == "ratings.dat":
        # "u::i::r::t" read with ':' as separator: the empty fields in between are skipped
        names = ["user", "_a", "item", "_b", "rating", "_c", "timestamp"]
        table = _io.read_csv(
            path, member=member, delimiter=":", column_names=names, column_types=_TYPES,
            include_columns=["user", "item", "rating", "timestamp"], quote_char=False,
        )  # fmt: skip
    elif kind == "u.data":
        table = _io.read_csv(
            path, member=member, delimiter="\t", column_names=["user", "item", "rating", "timestamp"],
            column_types=_TYPES, quote_char=False,
        )  # fmt: skip
    else:
        first = line.split(",")[0].strip().strip('"')
        if first.lstrip("-").isdigit():
            table = _io.read_csv(
                path, member=member, column_names=["user", "item", "rating", "timestamp"], column_types=_TYPES
            )
        else:
            header = [h.strip().strip('"') for h in line.split(",")]
            lower = [h.lower() for h in header]

            def pick(options: tuple[str, ...], role: str) -> str:
                for o in options:
                    if o in lower:
                        return header[lower.index(o)]
                raise DataError(f"{where}: no {role} column (columns: {', '.join(header)})")

            mapping = {
                pick(_USER_NAMES, "user"): "user",
                pick(_ITEM_NAMES, "movie"): "item",
                pick(("rating",), "rating"): "rating",
                pick(("timestamp",), "timestamp"): "timestamp",
            }
            table = _io.read_csv(
                path, member=member, column_types={k: _TYPES[v] for k, v in mapping.items()},
                include_columns=list(mapping),
            )  # fmt: skip
            table = table.rename_columns([mapping[c] for c in table.column_names])
    return table, kind


def _split_genres(text: str) -> str:
    return " | ".join(g for g in text.strip().split("|") if g and g != "(no genres listed)")


def read_movie_text(path: Path, member: str | None = None) -> pa.Table:
    """Titles and genres from ``u.item``, ``movies.dat`` or ``movies.csv`` (plain, .gz or zip member)."""
    where = _io.label(path, member)
    base = (member or path.name).rsplit("/", 1)[-1].removesuffix(".gz")
    ids: list[str] = []
    titles: list[str] = []
    cats: list[str] = []
    if base == "movies.csv":
        t = _io.read_csv(path, member=member, column_types={"movieId": pa.string()})
        for col in ("movieId", "title", "genres"):
            if col not in t.column_names:
                raise DataError(f"{where}: no column '{col}' (columns: {', '.join(t.column_names)})")
        ids = t.column("movieId").to_pylist()
        titles = t.column("title").to_pylist()
        cats = [_split_genres(g or "") for g in t.column("genres").to_pylist()]
    else:
        text = _io.read_text(path, member, encoding="latin-1")
        for lineno, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            if base == "u.item":
                f = line.split("|")
                if len(f) != 5 + len(ML100K_GENRES):
                    raise DataError(
                        f"{where}: malformed row {lineno}: expected {5 + len(ML100K_GENRES)} fields, got {len(f)}"
                    )
                flags = f[5:]
                ids.append(f[0].strip())
                titles.append(f[1])
                cats.append(" | ".join(g for g, v in zip(ML100K_GENRES, flags) if v.strip() == "1"))
            else:
                f = line.split("::")
                if len(f) != 3:
                    raise DataError(f"{where}: malformed row {lineno}: expected 3 '::'-separated fields, got {len(f)}")
                ids.append(f[0].strip())
                titles.append(f[1])
                cats.append(_split_genres(f[2]))
    return pa.table(
        {"external_id": pa.array(ids, pa.string()), "title": pa.array(titles, pa.string()),
         "categories": pa.array(cats, pa.string())}
    )  # fmt: skip


def read_movielens(
    path: str | Path,
    *,
    drop_missing_time: bool = True,
    items_path: str | Path | None = None,
    item_text: bool = True,
) -> RawLog:
    """Read MovieLens ratings (+ movie text found beside them, or at ``items_path``).

    Rows with an empty timestamp (the partial ML-1M reconstruction) are kept as missing so that
    :func:`~genrec.data.prepare.prepare` drops and counts them; with ``drop_missing_time=False``
    they are an error instead.
    """
    rpath, member = _locate(Path(path))
    where = _io.label(rpath, member)
    table, kind = _read_ratings(rpath, member)
    if table.num_rows == 0:
        raise DataError(f"{where}: no rating rows")
    ts = table.column("timestamp")
    missing = int(ts.null_count)
    if missing and not drop_missing_time:
        first = int(np.flatnonzero(pc.is_null(ts).to_numpy(zero_copy_only=False))[0]) + 1
        raise DataError(
            f"{where}: {missing} rows have an empty timestamp (first at data row {first}); "
            "use drop_missing_time=True to drop them"
        )
    sources = [rpath]
    items = None
    if item_text:
        ipath, imember = None, None
        if items_path is not None:
            ipath = _io.require_file(items_path, "movie file")
        elif member is not None:
            imember = _io.find_zip_member(rpath, ITEM_FILES[kind] + ALL_ITEM_FILES)
            ipath = rpath if imember else None
        else:
            ipath = _beside(rpath.parent, ITEM_FILES[kind] + ALL_ITEM_FILES)
        if ipath is not None:
            items = read_movie_text(ipath, imember)
            if ipath != rpath:
                sources.append(ipath)
    return RawLog(
        user=table.column("user"),
        item=table.column("item"),
        timestamp=ts,
        rating=table.column("rating"),
        items=items,
        source="movielens",
        sources=sources,
        params={"format": kind, "drop_missing_time": drop_missing_time},
        counts={"missing_timestamps": missing},
        label=where,
    )
