"""The CML multi-behavior readers (tmall_cml, retailrocket_cml): levels, published split, strict row checks."""

import gzip
import itertools
import json

import numpy as np
import pytest

from genrec.cli import main
from genrec.data.schema import HELDOUT_FILE, load_dataset, load_heldout
from genrec.data.sources import get_source, prepare_source
from genrec.data.sources.cml import read_retailrocket_cml, read_tmall_cml
from genrec.errors import DataError

T0 = 1511600000  # inside Tmall's window (2017-11-25 .. 12-03)
HEADER = "user_id,item_id,behavior,timestamp\n"
TMALL_ROWS = [(0, 10, "fav", T0), (0, 11, "cart", T0 + 5), (0, 10, "buy", T0 + 60), (1, 12, "cart", T0 + 1),
              (1, 12, "buy", T0 + 1), (2, 10, "cart", T0 + 9)]


def _folder(tmp_path, write, rows=TMALL_ROWS, heldout="user_id,item_id\n0,12\n1,99\n7,10\n", name="d"):
    folder = tmp_path / name
    write(folder / "interactions.csv.gz", HEADER + "".join(f"{u},{i},{b},{t}\n" for u, i, b, t in rows), gz=True)
    if heldout is not None:
        write(folder / "test_buy.csv.gz", heldout, gz=True)
    return folder


def test_tmall_levels_counts_and_published_split(tmp_path, write):
    ds = load_dataset(prepare_source("tmall_cml", _folder(tmp_path, write), tmp_path / "out"))
    m = ds.manifest
    assert m["source"] == "tmall_cml" and m["behaviors"] == ["fav", "cart", "buy"]
    assert m["behavior_counts"] == {"fav": 1, "cart": 3, "buy": 2}
    assert m["params"]["time_window"] == [1511539200, 1512316800]
    assert m["params"]["published_split"] == "test_buy.csv.gz"
    assert [s["path"].rsplit("/", 1)[-1] for s in m["sources"]] == ["interactions.csv.gz", "test_buy.csv.gz"]
    inter = ds.interactions  # sorted by (user, time), levels fav=0 < cart=1 < buy=2
    assert inter.behavior.tolist() == [0, 1, 2, 1, 2, 1]
    assert inter.timestamp.tolist() == [T0, T0 + 5, T0 + 60, T0 + 1, T0 + 1, T0 + 9]
    split = m["published_split"]  # 1,99: item 99 has no training row; 7,10: user 7 has none
    assert (split["rows"], split["pairs"], split["dropped_unknown_item"], split["dropped_unknown_user"]) == (3, 1, 1, 1)
    users, items = load_heldout(tmp_path / "out")
    assert ds.user_external_ids()[users[0]] == "0" and ds.item_external_ids()[items[0]] == "12"


def test_retailrocket_levels_and_no_heldout_file(tmp_path, write):
    rows = [(5, 1, "view", 1430700000), (5, 1, "cart", 1430700100), (5, 1, "buy", 1430700200)]
    folder = _folder(tmp_path, write, rows, heldout=None)
    raw = read_retailrocket_cml(folder / "interactions.csv.gz")  # the file itself works as well as its folder
    assert raw.behavior_order == ["view", "cart", "buy"] and raw.heldout is None
    ds = load_dataset(prepare_source("retailrocket_cml", folder, tmp_path / "out"))
    assert ds.interactions.behavior.tolist() == [0, 1, 2] and "published_split" not in ds.manifest
    assert not (tmp_path / "out" / HELDOUT_FILE).exists()
    with pytest.raises(DataError, match="no published held-out split"):
        load_heldout(tmp_path / "out")


def _gz_text(path, text):
    path.write_bytes(gzip.compress(text.encode(), mtime=0))


@pytest.mark.parametrize("body, message", [
    ("0,10,fav,1511600000\n0,11,cart\n", r"interactions.csv.gz: malformed row 3: expected 4 fields, got 3"),
    ("0,10,fav,1511600000\n0,11,cart,soon\n", r"interactions.csv.gz: line 3: timestamp 'soon' is not whole unix"),
    ("0,10,fav,1511600000.5\n", r"interactions.csv.gz: line 2: timestamp '1511600000.5' is not whole unix"),
    ("0,10,fav,1511600000\n0,11,pv,1511600001\n", r"interactions.csv.gz: line 3: behavior 'pv' is not one of "
                                                  r"fav, cart, buy"),
    ("0,x7,fav,1511600000\n", r"interactions.csv.gz: line 2: item_id 'x7' is not an unsigned integer id"),
    ("0,7,fav,1511600000\n,8,cart,1511600001\n", r"interactions.csv.gz: line 3: user_id '' is not an unsigned"),
    ("0,7,fav,1511600000\n0,8,cart,1400000000\n", r"interactions.csv.gz: line 3: timestamp 1400000000 lies outside "
                                                  r"the log's window 2017-11-25..2017-12-03"),
])
def test_malformed_rows_name_file_and_line(tmp_path, body, message):
    path = tmp_path / "interactions.csv.gz"
    _gz_text(path, HEADER + body)
    with pytest.raises(DataError, match=message):
        read_tmall_cml(path)


def test_missing_column_and_bad_heldout_row(tmp_path, write):
    path = tmp_path / "interactions.csv.gz"
    _gz_text(path, "user_id,item_id,behavior\n0,10,fav\n")
    with pytest.raises(DataError, match=r"interactions.csv.gz: line 1: missing column\(s\) timestamp"):
        read_tmall_cml(path)
    folder = _folder(tmp_path, write, heldout="user_id,item_id\n0,12\n1,-3\n")
    with pytest.raises(DataError, match=r"test_buy.csv.gz: line 3: item_id '-3' is not an unsigned integer id"):
        read_tmall_cml(folder)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="empty: no interactions.csv.gz in this folder"):
        read_tmall_cml(tmp_path / "empty")


def test_time_window_option(tmp_path, write):
    rows = [(0, 1, "fav", 1400000000), (0, 1, "buy", 1400000100)]
    folder = _folder(tmp_path, write, rows, heldout=None)
    with pytest.raises(DataError, match="time_window none skips this check"):
        read_tmall_cml(folder)
    raw = read_tmall_cml(folder, time_window="none")
    assert np.asarray(raw.timestamp).tolist() == [1400000000, 1400000100] and raw.params["time_window"] is None
    assert read_tmall_cml(folder, time_window="1399999999,1400000101").params["time_window"] == [1399999999,
                                                                                                  1400000101]
    assert get_source("tmall_cml").options == ("time_window",)


def test_cli_prepare_prints_split_and_force_drops_stale_heldout(tmp_path, write, capsys):
    folder = _folder(tmp_path, write)
    out = tmp_path / "out"
    assert main(["data", "prepare", "tmall_cml", str(folder), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "behaviors fav < cart < buy" in printed and "published held-out pairs 1 of 3 -> heldout.parquet" in printed
    (folder / "test_buy.csv.gz").unlink()
    assert main(["data", "prepare", "tmall_cml", str(folder), "--out", str(out), "--force"]) == 0
    assert not (out / HELDOUT_FILE).exists()  # a replaced dataset keeps no split of the old one
    assert "published_split" not in json.loads((out / "manifest.json").read_text())
    assert main(["data", "prepare", "tmall_cml", str(folder), "--out", str(out), "--force", "--time-window",
                 "1,2"]) == 2
    assert "lies outside the log's window 1970-01-01..1970-01-01" in capsys.readouterr().err


# ---------------------------------------------------------------- slices of the staged files

SLICE_ROWS = 4000


@pytest.mark.realdata
@pytest.mark.parametrize("source, folder, behaviors", [
    ("tmall_cml", "cml-tmall-multibehavior-nopv", ["fav", "cart", "buy"]),
    ("retailrocket_cml", "retailrocket-multibehavior-cml", ["view", "cart", "buy"]),
])
def test_staged_file_slices(shared_data, need, tmp_path, source, folder, behaviors):
    """The first rows of each staged file (and the held-out pairs of their users) prepare with the documented
    levels, every row kept, and the held-out pairs of users in the slice mapped to their ids."""
    src = need(shared_data / folder / "interactions.csv.gz")
    with gzip.open(src, "rt") as f:
        lines = list(itertools.islice(f, SLICE_ROWS + 1))
    assert lines[0] == HEADER
    rows = [line.rstrip("\n").split(",") for line in lines[1:]]
    users = {r[0] for r in rows}
    with gzip.open(need(shared_data / folder / "test_buy.csv.gz"), "rt") as f:
        held = [line for line in f.readlines()[1:] if line.split(",")[0] in users]
    part = tmp_path / "slice"
    part.mkdir()
    _gz_text(part / "interactions.csv.gz", "".join(lines))
    _gz_text(part / "test_buy.csv.gz", "user_id,item_id\n" + "".join(held))
    ds = load_dataset(prepare_source(source, part, tmp_path / "out"))
    m = ds.manifest
    assert m["behaviors"] == behaviors and m["counts"]["interactions"] == len(rows)
    assert m["behavior_counts"] == {b: sum(r[2] == b for r in rows) for b in behaviors}
    assert m["counts"]["users"] == len(users) and m["counts"]["items"] == len({r[1] for r in rows})
    split = m["published_split"]
    assert split["rows"] == len(held) and split["dropped_unknown_user"] == 0
    u, i = load_heldout(tmp_path / "out")
    ext_u, ext_i = ds.user_external_ids(), ds.item_external_ids()
    mapped = {(ext_u[a], ext_i[b]) for a, b in zip(u, i)}
    assert mapped <= {tuple(line.strip().split(",")) for line in held} and len(mapped) == split["pairs"]
