"""The generic reader on files without a header row (issue 20, defect 5), e.g. MovieLens ``u.data``: columns by
position (``--no-header``) or by the names given (``--names``); its messages name the real flags."""

import pytest

from genrec.cli import main
from genrec.data.schema import load_dataset
from genrec.data.sources.generic import read_generic
from genrec.errors import ConfigError, DataError

U_DATA = "196\t242\t3\t881250949\n186\t302\t3\t891717742\n22\t377\t1\t878887116\n196\t377\t4\t881250950\n"


def test_prepare_a_headerless_file_by_position_and_by_names(tmp_path, write, capsys):
    """Before: no such flags (argparse refused them), and the first data row was read as the header."""
    log = write(tmp_path / "u.data", U_DATA)
    assert main(["data", "prepare", "generic", str(log), "--out", str(tmp_path / "a"), "--no-header",
                 "--user-col", "1", "--item-col", "2", "--rating-col", "3", "--time-col", "4"]) == 0
    assert main(["data", "prepare", "generic", str(log), "--out", str(tmp_path / "b"), "--names",
                 "user,item,rating,ts", "--user-col", "user", "--item-col", "item", "--time-col", "ts",
                 "--rating-col", "rating", "--min-rating", "2"]) == 0
    a, b = load_dataset(tmp_path / "a"), load_dataset(tmp_path / "b")
    assert (a.num_users, a.num_items, len(a.interactions.item_id)) == (3, 3, 4)  # no row lost to a header
    assert sorted(a.user_external_ids()[1:]) == ["186", "196", "22"]
    assert len(b.interactions.item_id) == 3  # the rating-1 row is dropped: the names reach the rating column
    assert a.manifest["params"]["header"] is False


def test_headerless_errors_name_columns_rows_and_flags(tmp_path, write):
    log = write(tmp_path / "u.data", U_DATA.replace("878887116", "noon"))
    with pytest.raises(ConfigError, match=r"no column 'user' \(columns: 1, 2, 3, 4\); the file has no header row"):
        read_generic(log, user_col="user", item_col="2", time_col="4", no_header=True)
    with pytest.raises(ConfigError, match=r"--names gives 3 columns \(u, i, t\) but .*u.data has 4 fields"):
        read_generic(log, user_col="u", item_col="i", time_col="t", names=["u", "i", "t"])
    with pytest.raises(DataError, match=r"column '4' row 3: 'noon' is not a number"):  # line 3: no header line
        read_generic(log, user_col="1", item_col="2", time_col="4", no_header=True)


def test_missing_columns_message_names_the_command_line_flags(tmp_path, write, capsys):
    """Before: 'generic source needs user_col, item_col, time_col', names no flag of `genrec data prepare`."""
    log = write(tmp_path / "u.data", U_DATA)
    assert main(["data", "prepare", "generic", str(log), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "needs --user-col, --item-col, --time-col" in err and "--no-header" in err
    parquet = tmp_path / "log.parquet"
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"u": ["1"], "i": ["2"], "t": [3]}), parquet)
    with pytest.raises(ConfigError, match="Parquet file names its columns"):
        read_generic(parquet, user_col="u", item_col="i", time_col="t", no_header=True)
