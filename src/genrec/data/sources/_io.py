"""File access shared by the readers: transparent gzip/zip, and one-line errors for bad input.

Public datasets arrive plain, gzipped or zipped (and re-compressed copies keep the original
name), so compression is detected from the magic bytes, never from the extension. Every
low-level failure (missing file, corrupt archive, bad encoding, malformed CSV row) is turned
into a :class:`DataError` that names the file, because the CLI shows only that one line.
"""

from __future__ import annotations

import contextlib
import csv
import gzip
import zipfile
import zlib
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import IO, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv

from genrec.data.schema import check_float_seconds
from genrec.errors import DataError, GenrecError

_GZIP_MAGIC = b"\x1f\x8b"
_ZIP_MAGIC = b"PK\x03\x04"

_LOW_LEVEL_ERRORS = (
    pa.ArrowInvalid,
    OSError,
    EOFError,
    zipfile.BadZipFile,
    zlib.error,
    UnicodeDecodeError,
    ValueError,
)


def label(path: Path | str, member: str | None = None) -> str:
    return f"{path}:{member}" if member else str(path)


def require_file(path: str | Path, what: str = "file") -> Path:
    p = Path(path)
    if not p.exists():
        raise DataError(f"{p}: {what} not found")
    if p.is_dir():
        raise DataError(f"{p}: is a folder, expected a {what}")
    return p


def compression_of(path: str | Path) -> str | None:
    """'gzip', 'zip' or None, from the first bytes of the file."""
    with open(require_file(path), "rb") as f:
        head = f.read(4)
    if head.startswith(_GZIP_MAGIC):
        return "gzip"
    if head.startswith(_ZIP_MAGIC):
        return "zip"
    return None


@contextlib.contextmanager
def data_errors(where: str, doing: str = "cannot read") -> Iterator[None]:
    """Re-raise low-level parsing/IO failures as a one-line DataError naming ``where``."""
    try:
        yield
    except GenrecError:
        raise
    except FileNotFoundError:
        raise DataError(f"{where}: file not found") from None
    except UnicodeDecodeError as exc:
        raise DataError(f"{where}: {doing}: not valid {exc.encoding} text at byte {exc.start}") from None
    except _LOW_LEVEL_ERRORS as exc:
        raise DataError(f"{where}: {doing}: {describe(exc)}") from None


_CORRUPT_COMPRESSED = ("compression method", "Truncated compressed stream", "zlib inflate failed")  # + arrow's


def describe(exc: BaseException) -> str:
    """A short one-line description of a low-level read error."""
    if isinstance(exc, (gzip.BadGzipFile, zlib.error, EOFError)) or any(m in str(exc) for m in _CORRUPT_COMPRESSED):
        return "corrupt or truncated compressed data"
    text = str(exc).strip().strip("'\"")
    return (text.splitlines()[0] if text else type(exc).__name__)[:200]


def zip_members(path: str | Path) -> list[str]:
    with data_errors(str(path), "not a readable zip archive"), zipfile.ZipFile(path) as zf:
        return [n for n in zf.namelist() if not n.endswith("/") and "__MACOSX" not in n]


def find_zip_member(path: str | Path, names: Sequence[str]) -> str | None:
    """First member whose base name is one of ``names`` (in priority order), plain or .gz."""
    members = zip_members(path)
    for want in names:
        for m in members:
            base = m.rsplit("/", 1)[-1]
            if base == want or base == want + ".gz":
                return m
    return None


def _single_member(path: Path) -> str:
    members = zip_members(path)
    if len(members) != 1:
        raise DataError(f"{path}: zip holds {len(members)} files; cannot tell which one to read")
    return members[0]


@contextlib.contextmanager
def open_binary(path: str | Path, member: str | None = None) -> Iterator[IO[bytes]]:
    """A decompressed binary stream of a plain/.gz file, or of one member of a .zip.

    Only opening is guarded here; callers wrap their reading in :func:`data_errors` (or handle
    parser errors themselves, as :func:`read_csv` does to report row numbers).
    """
    p = require_file(path)
    kind = compression_of(p)
    with contextlib.ExitStack() as stack:
        with data_errors(label(p, member)):
            f: IO[bytes]
            if kind == "zip":
                member = member or _single_member(p)
                zf = stack.enter_context(zipfile.ZipFile(p))
                f = stack.enter_context(zf.open(member))
                if member.endswith(".gz"):
                    f = stack.enter_context(gzip.open(f))  # type: ignore[arg-type]
            elif kind == "gzip":
                f = stack.enter_context(gzip.open(p, "rb"))  # type: ignore[arg-type]
            else:
                f = stack.enter_context(open(p, "rb"))
        yield f


def arrow_buffer(data: bytes) -> pa.Buffer:
    """A copy of ``data`` in memory arrow owns (a buffer over the bytes object would keep a Python reference)."""
    sink = pa.BufferOutputStream()
    sink.write(data)
    return sink.getvalue()


@contextlib.contextmanager
def arrow_input(path: str | Path, member: str | None = None) -> Iterator[pa.NativeFile]:
    """The decompressed content of a plain/.gz file or a .zip member as a stream arrow reads natively.

    Why not a Python file object: arrow reads it from its own worker threads, and the worker that drops the last
    reference to it takes the GIL to do so; when that happens while the interpreter exits (right after a reader's
    one-line error), the process aborts with "terminate called without an active exception" (exit 134, about one
    run in a hundred on a loaded machine). Plain and gzip files are read by arrow itself; a zip member is
    decompressed here into a buffer arrow owns, so no Python object is left for a worker to release.
    """
    p = require_file(path)
    kind = compression_of(p)
    if kind == "zip":
        stream: pa.NativeFile = pa.BufferReader(arrow_buffer(read_bytes(p, member)))
    else:
        with data_errors(label(p, member)):
            stream = pa.OSFile(str(p))
            if kind == "gzip":
                stream = pa.CompressedInputStream(stream, "gzip")
    try:
        yield stream
    finally:
        stream.close()


def read_bytes(path: str | Path, member: str | None = None) -> bytes:
    with open_binary(path, member) as f, data_errors(label(path, member)):
        return f.read()


def read_text(path: str | Path, member: str | None = None, encoding: str = "utf-8") -> str:
    data = read_bytes(path, member)
    with data_errors(label(path, member)):
        return data.decode(encoding)


def first_line(path: str | Path, member: str | None = None, limit: int = 1 << 16) -> str:
    """The first line (for sniffing the format), decoded leniently."""
    with open_binary(path, member) as f, data_errors(label(path, member)):
        head = f.read(limit)
    return head.decode("utf-8", errors="replace").splitlines()[0] if head.strip() else ""


def _bad_row(source: Any, read_opts: pcsv.ReadOptions, parse_opts: pcsv.ParseOptions) -> str | None:
    """Locate the first malformed row (single-threaded re-parse; only on the error path)."""
    found: list[str] = []

    def handler(row: Any) -> str:
        if not found:
            text = (row.text or "")[:80]
            found.append(
                f"row {row.number}: expected {row.expected_columns} fields, got {row.actual_columns}: {text!r}"
            )
        return "skip"

    ro = pcsv.ReadOptions(
        use_threads=False,
        column_names=read_opts.column_names or None,
        autogenerate_column_names=read_opts.autogenerate_column_names,
        skip_rows=read_opts.skip_rows,
    )
    po = pcsv.ParseOptions(delimiter=parse_opts.delimiter, quote_char=parse_opts.quote_char, invalid_row_handler=handler)
    try:
        pcsv.read_csv(source, read_options=ro, parse_options=po, convert_options=pcsv.ConvertOptions())
    except (pa.ArrowInvalid, OSError):
        pass
    return found[0] if found else None


def read_csv(
    path: str | Path,
    *,
    member: str | None = None,
    delimiter: str = ",",
    column_names: list[str] | None = None,
    column_types: dict[str, pa.DataType] | None = None,
    include_columns: list[str] | None = None,
    quote_char: str | bool = '"',
) -> pa.Table:
    """Read a delimited file (plain/.gz/.zip member) into an Arrow table with named errors.

    ``column_names`` means the file has no header row.
    """
    where = label(path, member)
    read_opts = pcsv.ReadOptions(column_names=column_names or [], block_size=1 << 22)
    parse_opts = pcsv.ParseOptions(delimiter=delimiter, quote_char=quote_char)
    conv = pcsv.ConvertOptions(
        column_types=column_types or {},
        include_columns=include_columns or [],
        strings_can_be_null=False,
    )
    try:
        with arrow_input(path, member) as f:
            return pcsv.read_csv(f, read_options=read_opts, parse_options=parse_opts, convert_options=conv)
    except pa.ArrowInvalid as exc:
        msg = str(exc).splitlines()[0]
        if any(m in msg for m in _CORRUPT_COMPRESSED):
            raise DataError(f"{where}: cannot read: {describe(exc)}") from None
        if "CSV parse error" in msg or "Expected" in msg:
            with open_binary(path, member) as f, data_errors(where):
                # valid UTF-8 so pyarrow can hand the offending row's text to the handler
                data = f.read().decode("utf-8", errors="replace").encode("utf-8")
            bad = _bad_row(pa.BufferReader(arrow_buffer(data)), read_opts, parse_opts)
            raise DataError(f"{where}: malformed {bad}" if bad else f"{where}: {msg[:200]}") from None
        if "conversion error" in msg.lower() or "In CSV column" in msg:
            raise DataError(f"{where}: {msg[:200]}") from None
        raise DataError(f"{where}: cannot parse: {msg[:200]}") from None
    except GenrecError:
        raise
    except _LOW_LEVEL_ERRORS as exc:
        raise DataError(f"{where}: cannot read: {describe(exc)}") from None


def header_columns(path: str | Path, delimiter: str, member: str | None = None) -> list[str]:
    """Column names from the header row, without parsing the rest of the file."""
    line = first_line(path, member).lstrip("\ufeff")
    if not line.strip():
        raise DataError(f"{label(path, member)}: empty file, expected a header row")
    return [c.strip() for c in next(csv.reader([line], delimiter=delimiter))]


def whole_seconds(values: pa.Array, where: str, row: Callable[[int], str]) -> pa.Array:
    """int64 seconds (floored) from a float column, NaN as a missing value (null) as pandas writes it.

    An infinite value or one beyond int64 (a 23-digit number) is a one-line :class:`DataError` naming its row
    (``row(k)``), where pyarrow's cast would raise a traceback.
    """
    vals = values.to_numpy(zero_copy_only=False).astype(np.float64, copy=False)  # nulls -> NaN
    check_float_seconds(vals, where, row)
    missing = np.isnan(vals)
    return pa.array(np.floor(np.where(missing, 0.0, vals)).astype(np.int64), mask=missing)


# ---------------------------------------------------------------- strict readers of processed CSV files
# A processed file has nothing left to clean, so a row that is off means a broken copy: these read every column as
# text and stop at the first bad row with the file and line (the header is line 1) instead of dropping it.

UNSIGNED_DIGITS = r"^[0-9]{1,18}$"


def read_text_columns(path: Path, columns: tuple[str, ...]) -> pa.Table:
    """The named columns as text (every other header column is ignored), the header checked first."""
    header = header_columns(path, ",")
    missing = [c for c in columns if c not in header]
    if missing:
        raise DataError(f"{path}: line 1: missing column(s) {', '.join(missing)} (header: {','.join(header)})")
    table = read_csv(path, column_types={c: pa.string() for c in header}, include_columns=list(columns),
                     quote_char=False)
    if table.num_rows == 0:
        raise DataError(f"{path}: no data rows")
    return table


def column_array(table: pa.Table, name: str) -> pa.Array:
    col = table.column(name)
    return col.combine_chunks() if col.num_chunks != 1 else col.chunk(0)


def first_bad_line(path: Path, ok: pa.Array, values: pa.Array, what: str) -> None:
    """A DataError naming the file line (header = line 1) of the first row where ``ok`` is false."""
    bad = ~ok.to_numpy(zero_copy_only=False)
    if bad.any():
        k = int(np.flatnonzero(bad)[0])
        raise DataError(f"{path}: line {k + 2}: {what.format(value=values[k].as_py())}")


def unsigned_integers(path: Path, table: pa.Table, name: str, what: str) -> np.ndarray:
    """(n,) int64 of a column that must hold unsigned integers, or a DataError naming the first bad line."""
    s = column_array(table, name)
    first_bad_line(path, pc.match_substring_regex(s, UNSIGNED_DIGITS), s, f"{name} {{value!r}} is not {what}")
    return pc.cast(s, pa.int64()).to_numpy(zero_copy_only=False)
