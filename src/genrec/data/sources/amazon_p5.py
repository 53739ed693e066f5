"""Amazon 2014 5-core sequences in the P5/TIGER format (``sequential_data.txt``).

These files are what the generative-retrieval papers report on, so the reader keeps their ids:
P5's numeric item ids become the external ids and, being 1..N, the internal ids too. The P5
order of each user's items is the chronological order; when per-interaction review dates are
available they are attached by (user, item) and, being day-granular, rely on the stable sort in
:func:`~genrec.data.prepare.prepare` to keep P5's order inside a day.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.json as pjson

from genrec.data.prepare import RawLog
from genrec.data.sources import _io
from genrec.errors import DataError

SEQ_FILE = "sequential_data.txt"
DATAMAPS_FILE = "datamaps.json"
DATES_GLOB = "*_user_item_time.csv*"


def _find(folder: Path, name: str) -> Path | None:
    for cand in (folder / name, folder / (name + ".gz")):
        if cand.is_file():
            return cand
    return None


def parse_sequences(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(user, item, position) int64 arrays from ``user item item ...`` lines, in file order."""
    text = _io.read_text(path)
    users: list[int] = []
    lengths: list[int] = []
    tokens: list[str] = []
    for lineno, line in enumerate(text.splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) < 2:
            raise DataError(f"{path}: malformed row {lineno}: a user id followed by no items")
        try:
            users.append(int(parts[0]))
        except ValueError:
            raise DataError(f"{path}: malformed row {lineno}: user id {parts[0]!r} is not an integer") from None
        lengths.append(len(parts) - 1)
        tokens.extend(parts[1:])
    if not users:
        raise DataError(f"{path}: no sequences")
    try:
        items = np.array(tokens, dtype=np.int64)
    except ValueError:
        bad = next(t for t in tokens if not t.lstrip("-").isdigit())
        pos = tokens.index(bad)
        row = int(np.searchsorted(np.cumsum(lengths), pos, side="right")) + 1
        raise DataError(f"{path}: malformed sequence of user {users[row - 1]}: item id {bad!r} is not an integer") from None
    lens = np.asarray(lengths, dtype=np.int64)
    user = np.repeat(np.asarray(users, dtype=np.int64), lens)
    starts = np.repeat(np.cumsum(lens) - lens, lens)
    position = np.arange(items.shape[0], dtype=np.int64) - starts + 1
    return user, items, position


def attach_dates(user: np.ndarray, item: np.ndarray, path: Path) -> tuple[np.ndarray, int]:
    """Review date of each (user, item) pair from the ``*_user_item_time.csv`` file.

    Returns the timestamps and how many had to be raised to keep each user's P5 order
    non-decreasing (the P5 order is authoritative).
    """
    need = ["p5_user_id", "p5_item_id", "unix_review_time"]
    cols = _io.header_columns(path, ",")
    missing = [c for c in need if c not in cols]
    if missing:
        raise DataError(f"{path}: no column {', '.join(repr(m) for m in missing)} (columns: {', '.join(cols)})")
    t = _io.read_csv(path, include_columns=need, column_types={c: pa.int64() for c in need})
    du = t.column("p5_user_id").to_numpy(zero_copy_only=False)
    di = t.column("p5_item_id").to_numpy(zero_copy_only=False)
    dt = t.column("unix_review_time").to_numpy(zero_copy_only=False)
    if t.num_rows == 0:
        raise DataError(f"{path}: no rows")
    base = int(max(item.max(), di.max())) + 1
    dkey = du * base + di
    order = np.argsort(dkey, kind="stable")
    dkey, dt = dkey[order], dt[order]
    key = user * base + item
    pos = np.minimum(np.searchsorted(dkey, key), dkey.shape[0] - 1)
    found = dkey[pos] == key
    if not found.all():
        k = int(np.flatnonzero(~found)[0])
        raise DataError(
            f"{path}: no date for {int((~found).sum())} of {key.shape[0]} (user, item) pairs "
            f"(first: user {int(user[k])}, item {int(item[k])})"
        )
    ts = dt[pos].astype(np.int64)
    # keep the P5 order: a date earlier than the previous item's is raised to it
    new_user = np.concatenate([[True], user[1:] != user[:-1]])
    seg = np.cumsum(new_user)
    offset = seg * (int(ts.max() - ts.min()) + 1)
    fixed = np.maximum.accumulate(ts - ts.min() + offset) - offset + ts.min()
    return fixed, int((fixed != ts).sum())


def read_item_text(path: Path) -> pa.Table:
    """``external_id`` (P5 id), ``asin``, ``title``, ``categories`` from ``*_item_text.jsonl.gz``."""
    with _io.arrow_input(path) as f, _io.data_errors(str(path), "not valid JSON lines"):
        t = pjson.read_json(f)
    if "p5_item_id" not in t.column_names:
        raise DataError(f"{path}: no column 'p5_item_id' (columns: {', '.join(t.column_names)})")
    n = t.num_rows
    titles = t.column("title").to_pylist() if "title" in t.column_names else [None] * n
    cats_raw = t.column("categories").to_pylist() if "categories" in t.column_names else [None] * n
    cats = [" | ".join(" > ".join(p) for p in (c or []) if p) or None for c in cats_raw]
    cols = {"external_id": pa.array([str(v) for v in t.column("p5_item_id").to_pylist()], pa.string())}
    if "asin" in t.column_names:
        cols["asin"] = t.column("asin").combine_chunks().cast(pa.string())
    cols["title"] = pa.array(titles, pa.string())
    cols["categories"] = pa.array(cats, pa.string())
    return pa.table(cols)


def _asins_from_datamaps(path: Path) -> pa.Table:
    with _io.data_errors(str(path), "not valid JSON"):
        maps = json.loads(_io.read_text(path))
    id2item = maps.get("id2item") if isinstance(maps, dict) else None
    if not isinstance(id2item, dict):
        raise DataError(f"{path}: no 'id2item' map")
    return pa.table(
        {"external_id": pa.array(list(id2item), pa.string()), "asin": pa.array(list(id2item.values()), pa.string())}
    )


def read_amazon_p5(
    path: str | Path,
    *,
    dates: bool | str | Path = True,
    item_text: bool | str | Path = True,
    datamaps: bool = True,
) -> RawLog:
    """Read a P5 dataset folder (or its ``sequential_data.txt``).

    ``dates``: True = use the ``*_user_item_time.csv(.gz)`` found beside the sequences (if any),
    a path = that file, False = ignore; without dates, timestamps are the sequence position
    (1, 2, 3, ...). ``item_text``: True = look for ``<folder>_item_text.jsonl.gz`` in the folder or
    its parent, a path = that file, False = none.
    """
    p = Path(path)
    if not p.exists():
        raise DataError(f"{p}: file not found")
    if p.is_dir():
        folder = p
        seq = _find(folder, SEQ_FILE)
        if seq is None:
            raise DataError(f"{folder}: no {SEQ_FILE} (or .gz) in this folder")
    else:
        seq, folder = p, p.parent
    user, item, position = parse_sequences(seq)
    sources = [seq]
    params: dict[str, object] = {"dataset": folder.name}
    counts: dict[str, int] = {}

    date_file: Path | None = None
    if isinstance(dates, (str, Path)):
        date_file = _io.require_file(dates, "dates file")
    elif dates:
        found = sorted(folder.glob(DATES_GLOB))
        date_file = found[0] if found else None
    if date_file is not None:
        ts, clamped = attach_dates(user, item, date_file)
        sources.append(date_file)
        params["timestamps"] = "review date (day resolution)"
        counts["dates_raised_to_keep_order"] = clamped
    else:
        ts = position
        params["timestamps"] = "sequence position"

    text_file: Path | None = None
    if isinstance(item_text, (str, Path)):
        text_file = _io.require_file(item_text, "item text file")
    elif item_text:
        stem = folder.name
        for cand in (*sorted(folder.glob("*item_text.jsonl*")), folder.parent / f"{stem}_item_text.jsonl.gz",
                     folder.parent / f"{stem}_item_text.jsonl"):  # fmt: skip
            if cand.is_file():
                text_file = cand
                break
    items = None
    if text_file is not None:
        items = read_item_text(text_file)
        sources.append(text_file)
    elif datamaps:
        dm = _find(folder, DATAMAPS_FILE)
        if dm is not None:
            items = _asins_from_datamaps(dm)
            sources.append(dm)
    return RawLog(
        user=user,
        item=item,
        timestamp=ts,
        items=items,
        source="amazon_p5",
        sources=sources,
        params=params,
        counts=counts,
        label=str(seq),
    )
