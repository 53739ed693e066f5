"""Any CSV/TSV/Parquet interaction log, given which columns hold user, item and time.

This is the escape hatch for data that has no dedicated reader, so it is strict and explicit:
ids are read as text (leading zeros survive), the time column is parsed with the declared
``time_format``, and the first unparsable value is reported with its row number.
"""

from __future__ import annotations

import csv
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from genrec.data.prepare import RawLog
from genrec.data.sources import _io
from genrec.errors import ConfigError, DataError

TIME_FORMATS = ("unix_s", "unix_ms", "iso")
_NUMBER_RE = r"^[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?$"
_SEPS = {"tab": "\t", "\\t": "\t", "comma": ",", "semicolon": ";", "pipe": "|"}


def _is_parquet(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(4) == b"PAR1"


def _sniff_sep(path: Path) -> str:
    name = path.name.lower().removesuffix(".gz")
    if name.endswith((".tsv", ".tab")):
        return "\t"
    line = _io.first_line(path)
    counts = {s: line.count(s) for s in (",", "\t", ";", "|")}
    best = max(counts, key=lambda s: counts[s])
    return best if counts[best] else ","


def _first_bad(bad: np.ndarray, values: pa.Array) -> tuple[int, str]:
    k = int(np.flatnonzero(bad)[0])
    return k, str(values[k].as_py())


def _row_text(k: int, csv: bool) -> str:
    return f"data row {k + 1} (line {k + 2})" if csv else f"row {k + 1}"


def parse_time(col: pa.Array, time_format: str, where: str, column: str, csv: bool = True) -> pa.Array:
    """Unix seconds (int64, nulls for empty cells) from a column in the declared format."""
    t = col.type
    if pa.types.is_timestamp(t) or pa.types.is_date(t):
        if pa.types.is_date(t):
            return pc.multiply(pc.cast(pc.cast(col, pa.date32()), pa.int64()), 86400)
        return pc.cast(pc.cast(col, pa.timestamp("s", tz=t.tz), safe=False), pa.int64())
    if time_format in ("unix_s", "unix_ms"):
        if pa.types.is_integer(t) or pa.types.is_floating(t):
            num = col
        else:
            s = pc.utf8_trim_whitespace(pc.cast(col, pa.string()))
            s = pc.if_else(pc.equal(s, ""), pa.scalar(None, pa.string()), s)
            try:
                num = pc.cast(s, pa.int64())
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                ok = pc.fill_null(pc.match_substring_regex(s, _NUMBER_RE), True)
                bad = ~ok.to_numpy(zero_copy_only=False)
                if bad.any():
                    k, v = _first_bad(bad, s)
                    raise DataError(
                        f"{where}: column '{column}' {_row_text(k, csv)}: {v!r} is not a number "
                        f"(time_format={time_format})"
                    ) from None
                num = pc.cast(s, pa.float64())
        if pa.types.is_floating(num.type):
            num = _io.whole_seconds(num, f"{where}: column '{column}'", lambda k: _row_text(k, csv))
        if time_format == "unix_ms":
            num = pc.divide(num, 1000)  # integer division on int64
        return pc.cast(num, pa.int64())
    if pa.types.is_integer(t) or pa.types.is_floating(t):
        raise DataError(f"{where}: column '{column}' is numeric; use time_format unix_s or unix_ms, not {time_format!r}")
    s = pc.utf8_trim_whitespace(pc.cast(col, pa.string()))
    s = pc.if_else(pc.equal(s, ""), pa.scalar(None, pa.string()), s)
    if time_format == "iso":
        for typ in (pa.timestamp("s"), pa.timestamp("s", tz="UTC")):
            try:
                return pc.cast(pc.cast(s, typ), pa.int64())
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                pass
        out: list[int | None] = []
        for k, v in enumerate(s.to_pylist()):
            if v is None:
                out.append(None)
                continue
            try:
                dt = datetime.fromisoformat(v.replace("Z", "+00:00") if v.endswith("Z") else v)
            except ValueError:
                raise DataError(
                    f"{where}: column '{column}' {_row_text(k, csv)}: {v!r} is not an ISO-8601 date/time"
                ) from None
            if dt.tzinfo is None:
                dt = dt.replace(tzinfo=timezone.utc)
            out.append(int(dt.timestamp()))
        return pa.array(out, pa.int64())
    try:
        parsed = pc.strptime(s, format=time_format, unit="s", error_is_null=True)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        raise ConfigError(f"time_format {time_format!r} is not a valid strptime format ({exc})") from None
    bad = (pc.is_null(parsed).to_numpy(zero_copy_only=False) & pc.is_valid(s).to_numpy(zero_copy_only=False))
    if bad.any():
        k, v = _first_bad(bad, s)
        raise DataError(f"{where}: column '{column}' {_row_text(k, csv)}: {v!r} does not match time_format {time_format!r}")
    return parse_time(parsed, "unix_s", where, column, csv)


def read_generic(
    path: str | Path,
    *,
    user_col: str | None = None,
    item_col: str | None = None,
    time_col: str | None = None,
    rating_col: str | None = None,
    behavior_col: str | None = None,
    sep: str | None = None,
    time_format: str = "unix_s",
    no_header: bool = False,
    names: list[str] | None = None,
) -> RawLog:
    """Read a CSV/TSV (plain/.gz/zip) or Parquet file with the given column mapping.

    ``time_format``: ``unix_s``, ``unix_ms``, ``iso`` or a strptime format such as ``%Y-%m-%d %H:%M``
    (times without a zone are UTC). A text file without a header row (MovieLens ``u.data``): ``no_header``
    names its columns ``1``, ``2``, ... by position, or ``names`` gives them (and implies no header).
    """
    _check_options(user_col, item_col, time_col, time_format)
    p = _io.require_file(path)
    mapping = {"user": user_col, "item": item_col, "timestamp": time_col, "rating": rating_col,
               "behavior": behavior_col}  # fmt: skip
    wanted = {role: col for role, col in mapping.items() if col}
    parquet = _is_parquet(p)
    if parquet and (no_header or names):
        raise ConfigError(f"{p}: --no-header / --names are for CSV/TSV files; a Parquet file names its columns")
    if not parquet:
        sep = _SEPS.get(sep, sep) if sep else _sniff_sep(p)
        if len(sep) != 1:
            raise ConfigError(f"sep must be a single character, got {sep!r}")
    headerless = _headerless_names(p, sep, names) if (no_header or names) and sep else None
    table = _read_table(p, wanted, None if parquet else sep, headerless)

    def col(role: str) -> pa.Array:
        return _as_array(table.column(wanted[role]))

    # row numbers name file lines: below a header row (csv=True) or from the first line
    ts = parse_time(col("timestamp"), time_format, str(p), time_col, csv=not (parquet or headerless))  # type: ignore[arg-type]
    rating = None
    if rating_col:
        try:
            rating = pc.cast(col("rating"), pa.float64())
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            raise DataError(f"{p}: column '{rating_col}' is not numeric") from None
    return RawLog(
        user=col("user"),
        item=col("item"),
        timestamp=ts,
        rating=rating,
        behavior=col("behavior") if behavior_col else None,
        source="generic",
        sources=[p],
        params={
            "columns": {k: v for k, v in wanted.items()},
            "time_format": time_format,
            **({} if parquet else {"sep": sep}),
            **({"header": False} if headerless else {}),
        },
        label=str(p),
    )


def _check_options(
    user_col: str | None, item_col: str | None, time_col: str | None, time_format: str
) -> None:
    """Config errors for a missing column option or an unknown time format, before any file is opened."""
    missing_opts = [k for k, v in (("user_col", user_col), ("item_col", item_col), ("time_col", time_col)) if not v]
    if missing_opts:
        flags = ", ".join("--" + k.replace("_", "-") for k in missing_opts)
        raise ConfigError(f"generic source needs {flags} (the columns that hold user, item and time; a file "
                          f"without a header row: add --no-header and give column numbers, or --names; "
                          f"in Python: {', '.join(missing_opts)})")
    if not time_format:
        raise ConfigError("time_format must not be empty")
    if time_format not in TIME_FORMATS and "%" not in time_format:
        raise ConfigError(
            f"time_format must be one of {', '.join(TIME_FORMATS)} or a strptime format with '%', got {time_format!r}"
        )


def _headerless_names(p: Path, sep: str, names: list[str] | None) -> list[str]:
    """The column names of a text file without a header row: ``names``, or ``1..N`` by position."""
    fields = len(next(csv.reader([_io.first_line(p).lstrip("\ufeff")], delimiter=sep)))
    if not names:
        return [str(k) for k in range(1, fields + 1)]
    if len(names) != fields:
        raise ConfigError(f"--names gives {len(names)} columns ({', '.join(names)}) but {p} has {fields} fields "
                          "per row")
    return list(names)


def _read_table(p: Path, wanted: dict[str, str], sep: str | None, headerless: list[str] | None = None) -> pa.Table:
    """The mapped columns of a Parquet file (``sep`` None) or a delimited text file, ids read as text;
    ``headerless``: the names of a text file's columns when it has no header row.

    The header is checked first, so a misspelt column is named before the whole file is parsed.
    """
    if sep is None:
        with _io.data_errors(str(p), "not a readable parquet file"):
            columns = pq.read_schema(p).names
    else:
        columns = headerless or _io.header_columns(p, sep)
    for col in wanted.values():
        if col not in columns:
            listed = ", ".join(columns)
            listed = listed if len(listed) <= 300 else listed[:300] + "..."
            hint = "; the file has no header row" if headerless else ""
            raise ConfigError(f"file {p} has no column '{col}' (columns: {listed}){hint}")
    cols = list(dict.fromkeys(wanted.values()))
    if sep is None:
        with _io.data_errors(str(p), "not a readable parquet file"):
            table = pq.read_table(p, columns=cols)
    else:
        # ids and times as text (leading zeros survive, times parse as declared), the rating as a number
        text_roles = ("user", "item", "timestamp", "behavior")
        types = {wanted[role]: pa.string() for role in text_roles if role in wanted}
        if "rating" in wanted:
            types[wanted["rating"]] = pa.float64()
        table = _io.read_csv(p, delimiter=sep, include_columns=cols, column_types=types, column_names=headerless)
    if table.num_rows == 0:
        raise DataError(f"{p}: no data rows")
    return table


def _as_array(x: pa.ChunkedArray | pa.Array) -> pa.Array:
    if isinstance(x, pa.ChunkedArray):
        return x.combine_chunks() if x.num_chunks != 1 else x.chunk(0)
    return x
