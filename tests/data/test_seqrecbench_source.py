"""The seqrecbench reader (SeqRecBenchmark logs, e.g. the Amazon 2014 Books sample): strict rows, titles, ties,
checksums and counts against the staged notes."""

import gzip
import hashlib
import json

import numpy as np
import pytest

from genrec.cli import main
from genrec.data.schema import load_dataset
from genrec.data.sources import get_source, prepare_source
from genrec.data.sources.seqrecbench import read_seqrecbench
from genrec.errors import DataError

DAY = 86400
T0 = 1376870400  # 2013-08-19, a review date (UTC midnight)
HEADER = "user_id,item_id,timestamp\n"
# user 100: two same-day reviews (file order 24686 then 30219), then a later one; user 101 listed second
ROWS = [(100, 24686, T0), (100, 30219, T0), (100, 29863, T0 + 16 * DAY), (101, 30219, T0 + DAY),
        (101, 24686, T0 + DAY), (101, 29863, T0 + DAY)]
TITLES = {24686: "The Prophet", 30219: "Water For Elephants", 29863: "For Whom the Bell Tolls"}


def _gz(path, text):
    path.write_bytes(gzip.compress(text.encode(), mtime=0))
    return path


def _folder(tmp_path, rows=ROWS, titles=TITLES, summary=True, notes=True, name="books"):
    """A tiny copy of the staged layout: interactions, titles, the source's summary and a SOURCE.md table."""
    folder = tmp_path / name
    folder.mkdir()
    files = [_gz(folder / "interactions.csv.gz", HEADER + "".join(f"{u},{i},{t}\n" for u, i, t in rows))]
    if titles is not None:
        lines = "".join(json.dumps({"item_id": i, "title": t}) + "\n" for i, t in titles.items())
        files.append(_gz(folder / "items.jsonl.gz", lines))
    if summary:
        doc = {"user_size": len({r[0] for r in rows}), "item_size": len({r[1] for r in rows}),
               "interactions": len(rows), "density": 0.5}
        files.append(folder / "summary.json")
        files[-1].write_text(json.dumps(doc, indent=4))
    if notes:
        table = "".join(f"| {f.name} (gzip) | {f.stat().st_size} | {hashlib.sha256(f.read_bytes()).hexdigest()} | "
                        f"{'0' * 64} | 1 |\n" for f in files)
        (folder / "SOURCE.md").write_text("# toy\n\n| file | bytes | sha256 (stored) | sha256 (raw) | rows |\n"
                                          "|---|---|---|---|---|\n" + table)
    return folder


def test_prepare_keeps_titles_ids_and_stamps_the_checks(tmp_path):
    ds = load_dataset(prepare_source("seqrecbench", _folder(tmp_path), tmp_path / "out"))
    m = ds.manifest
    assert m["source"] == "seqrecbench"
    assert (m["counts"]["users"], m["counts"]["items"], m["counts"]["interactions"]) == (2, 3, 6)
    assert m["params"]["checksums"] == {"interactions.csv.gz": "verified", "items.jsonl.gz": "verified",
                                        "summary.json": "verified"}
    assert m["params"]["summary_checked"] is True and m["params"]["item_text"] == "items.jsonl.gz"
    assert m["params"]["session_gap"] == DAY and m["params"]["dedup"] == "first"  # source default, project dedup
    assert m["counts"]["dropped_duplicates"] == 0
    assert [s["path"].rsplit("/", 1)[-1] for s in m["sources"]] == ["interactions.csv.gz", "items.jsonl.gz",
                                                                     "summary.json"]
    ext = ds.item_external_ids()
    titles = dict(zip(ds.items.column("item_id").to_pylist(), ds.items.column("title").to_pylist()))
    assert {ext[i]: t for i, t in titles.items()} == {str(k): v for k, v in TITLES.items()}
    assert ds.user_external_ids()[1:] == ["100", "101"]


def test_same_day_ties_keep_the_file_order_and_hstu_order_is_stamped(tmp_path, capsys):
    rows = [(7, 3, T0 + DAY), (7, 1, T0), (7, 2, T0), (7, 4, T0 + DAY), (7, 5, T0 + DAY)]
    titles = {i: f"book {i}" for i in range(1, 6)}
    folder = _folder(tmp_path, rows, titles)
    ds = load_dataset(prepare_source("seqrecbench", folder, tmp_path / "out"))
    ext = ds.item_external_ids()
    # chronological, and inside a day the file's order (3 before 4 before 5 although 3 came first in the file)
    assert [ext[i] for i in ds.interactions.item_id] == ["1", "2", "3", "4", "5"]
    assert "tie_order" not in ds.manifest["params"]  # the default (stable) is not recorded: old fingerprints hold
    assert main(["data", "prepare", "seqrecbench", str(folder), "--out", str(tmp_path / "h"), "--tie-order",
                 "hstu"]) == 0
    assert "users 1  items 5  interactions 5" in capsys.readouterr().out
    assert json.loads((tmp_path / "h" / "manifest.json").read_text())["params"]["tie_order"] == "hstu"


def test_dedup_keeps_the_project_semantics(tmp_path):
    rows = [(1, 10, T0), (1, 11, T0 + DAY), (1, 10, T0 + 2 * DAY)]  # a repeated pair (not in the staged data)
    folder = _folder(tmp_path, rows, {10: "a", 11: "b"})
    first = load_dataset(prepare_source("seqrecbench", folder, tmp_path / "first"))
    assert first.manifest["counts"]["dropped_duplicates"] == 1 and len(first.interactions.item_id) == 2
    kept = load_dataset(prepare_source("seqrecbench", folder, tmp_path / "none", dedup="none"))
    assert kept.manifest["counts"]["dropped_duplicates"] == 0 and kept.manifest["params"]["dedup"] == "none"


def test_optional_files_and_the_file_argument(tmp_path):
    folder = _folder(tmp_path, titles=None, summary=False, notes=False)
    raw = read_seqrecbench(folder / "interactions.csv.gz")  # the file itself works as well as its folder
    assert raw.items is None and raw.params["item_text"] is None and raw.params["summary_checked"] is False
    assert raw.params["checksums"] == {"interactions.csv.gz": "no SOURCE.md"}
    (folder / "SOURCE.md").write_text("# notes without a table\n")
    assert read_seqrecbench(folder).params["checksums"] == {"interactions.csv.gz": "not listed"}
    np.testing.assert_array_equal(np.asarray(raw.timestamp), [r[2] for r in ROWS])
    assert get_source("seqrecbench").options == ()
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="empty: no interactions.csv.gz in this folder"):
        read_seqrecbench(tmp_path / "empty")


@pytest.mark.parametrize("body, message", [
    ("1,10,1376870400\n1,11\n", r"interactions.csv.gz: malformed row 3: expected 3 fields, got 2"),
    ("1,10,1376870400\nx1,11,1376870400\n", r"interactions.csv.gz: line 3: user_id 'x1' is not an unsigned"),
    ("1,10,1376870400\n1,-11,1376870400\n", r"interactions.csv.gz: line 3: item_id '-11' is not an unsigned"),
    ("1,10,1376870400.5\n", r"interactions.csv.gz: line 2: timestamp '1376870400.5' is not whole unix seconds"),
    ("1,10,1376870400\n1,11,\n", r"interactions.csv.gz: line 3: timestamp '' is not whole unix seconds"),
    ("1,10,2013-08-19\n", r"interactions.csv.gz: line 2: timestamp '2013-08-19' is not whole unix seconds"),
])
def test_malformed_interaction_rows_name_file_and_line(tmp_path, body, message):
    path = _gz(tmp_path / "interactions.csv.gz", HEADER + body)
    with pytest.raises(DataError, match=message):
        read_seqrecbench(path)


def test_missing_column_names_the_header_line(tmp_path):
    path = _gz(tmp_path / "interactions.csv.gz", "user_id,item_id\n1,10\n")
    with pytest.raises(DataError, match=r"interactions.csv.gz: line 1: missing column\(s\) timestamp"):
        read_seqrecbench(path)


@pytest.mark.parametrize("lines, message", [
    ('{"item_id": 10, "title": "a"}\n{"item_id": 11, "title": "b"\n', r"items.jsonl.gz: line 2: not a JSON object"),
    ('[10, "a"]\n', r"items.jsonl.gz: line 1: not a JSON object"),
    ('{"item_id": "10", "title": "a"}\n', r"items.jsonl.gz: line 1: item_id '10' is not an unsigned integer id"),
    ('{"item_id": 10.0, "title": "a"}\n', r"items.jsonl.gz: line 1: item_id 10.0 is not an unsigned integer id"),
    ('{"item_id": 10, "title": "a"}\n{"item_id": 11, "title": " "}\n',
     r"items.jsonl.gz: line 2: title ' ' is not a non-empty string"),
    ('{"item_id": 10, "title": "a"}\n{"item_id": 11}\n', r"items.jsonl.gz: line 2: title None is not a non-empty"),
    ('{"item_id": 10, "title": "a"}\n\n{"item_id": 11, "title": "b"}\n', r"items.jsonl.gz: line 2: not a JSON"),
    ('{"item_id": 10, "title": "a"}\n{"item_id": 10, "title": "b"}\n',
     r"items.jsonl.gz: line 2: item_id 10 repeats line 1"),
    ('{"item_id": 10, "title": "a"}\n', r"interactions.csv.gz: line 3: item_id 11 has no row in items.jsonl.gz "
                                        r"\(1 items lack one\)"),
])
def test_malformed_title_rows_name_file_and_line(tmp_path, lines, message):
    _gz(tmp_path / "interactions.csv.gz", HEADER + f"1,10,{T0}\n1,11,{T0}\n")
    _gz(tmp_path / "items.jsonl.gz", lines)
    with pytest.raises(DataError, match=message):
        read_seqrecbench(tmp_path)


def test_checksum_and_summary_mismatches_are_one_line_errors(tmp_path, capsys):
    folder = _folder(tmp_path)
    notes = (folder / "SOURCE.md").read_text()
    good = hashlib.sha256((folder / "items.jsonl.gz").read_bytes()).hexdigest()
    (folder / "SOURCE.md").write_text(notes.replace(good, "f" * 64))
    with pytest.raises(DataError, match=r"items.jsonl.gz: sha256 [0-9a-f]{64} does not match f{64} listed in "):
        read_seqrecbench(folder)
    assert main(["data", "prepare", "seqrecbench", str(folder), "--out", str(tmp_path / "out")]) == 2
    assert "does not match" in capsys.readouterr().err and not (tmp_path / "out" / "manifest.json").exists()
    other = _folder(tmp_path, notes=False, name="other")
    (other / "summary.json").write_text(json.dumps({"user_size": 2, "item_size": 3, "interactions": 7}))
    with pytest.raises(DataError, match=r"summary.json: interactions 7 but the interactions file has 6"):
        read_seqrecbench(other)


# ---------------------------------------------------------------- the staged Amazon Books sample

BOOKS = "amazon2014-books-sample-seqrecbench"


@pytest.mark.realdata
def test_staged_books_sample(shared_data, need, tmp_path):
    """The staged sample prepares with its documented counts, every file's sha256 verified, every title kept,
    and each user's sequence in the file's order (it is chronological, ties in file order)."""
    folder = need(shared_data / BOOKS)
    need(folder / "interactions.csv.gz")
    ds = load_dataset(prepare_source("seqrecbench", folder, tmp_path / "books"))
    m = ds.manifest
    c = m["counts"]
    assert (c["users"], c["items"], c["interactions"]) == (38_234, 38_519, 517_167)
    assert c["dropped_duplicates"] == 0 and c["dropped_rows"] == 0
    assert set(m["params"]["checksums"].values()) == {"verified"}
    titles = ds.items.column("title").to_pylist()
    assert sum(t is not None for t in titles) == 38_519
    ext = ds.item_external_ids()
    assert titles[ext.index("100") - 1] == "The Prophet"
    with gzip.open(folder / "interactions.csv.gz", "rt") as f:
        next(f)
        expected = [line.split(",", 2)[1] for line in f]
    assert [ext[i] for i in ds.interactions.item_id] == expected
    lengths = np.diff(np.flatnonzero(np.r_[True, np.diff(ds.interactions.user_id) != 0, True]))
    assert (int(lengths.min()), int(lengths.max())) == (5, 1_491)
