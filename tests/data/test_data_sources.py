import gzip
import io
import json
import zipfile

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from genrec.data.prepare import prepare
from genrec.data.schema import load_dataset
from genrec.data.sources import SOURCES, get_source, prepare_source
from genrec.data.sources.amazon_5core import read_amazon_5core
from genrec.data.sources.amazon_p5 import read_amazon_p5
from genrec.data.sources.generic import read_generic
from genrec.data.sources.movielens import read_movielens
from genrec.data.sources.taobao import most_frequent, read_taobao
from genrec.errors import ConfigError, DataError

U_DATA = "1\t10\t4\t100\n2\t20\t3\t200\n1\t20\t5\t150\n"
U_ITEM = (
    "10|Caf\xe9 Society (1995)|01-Jan-1995||http://x|0|1|0|0|0|1|0|0|0|0|0|0|0|0|0|0|0|0|0\n"
    "20|Heat (1995)|01-Jan-1995||http://y|0|0|0|0|0|0|1|0|0|0|0|0|0|0|0|0|1|0|0\n"
)
RATINGS_DAT = "1::10::4::100\n2::20::3::200\n1::20::5::150\n"
MOVIES_DAT = "10::Star Wars: Episode IV (1977)::Action|Sci-Fi\n20::Heat (1995)::Crime\n"


def _zip(path, members):
    with zipfile.ZipFile(path, "w") as zf:
        for name, text in members.items():
            zf.writestr(name, text.encode("latin-1"))
    return path


# ---------------------------------------------------------------- movielens


@pytest.mark.parametrize("gz", [False, True])
def test_movielens_u_data_with_item_text(tmp_path, write, gz):
    write(tmp_path / ("u.data.gz" if gz else "u.data"), U_DATA, gz=gz)
    write(tmp_path / ("u.item.gz" if gz else "u.item"), U_ITEM, gz=gz, encoding="latin-1")
    raw = read_movielens(tmp_path / ("u.data.gz" if gz else "u.data"))
    assert len(raw) == 3 and raw.params["format"] == "u.data"
    ds = load_dataset(prepare(raw, tmp_path / "out", name="ml"))
    assert ds.items.column("title").to_pylist() == ["Caf\xe9 Society (1995)", "Heat (1995)"]
    assert ds.items.column("categories").to_pylist() == ["Action | Comedy", "Crime | Thriller"]
    assert ds.interactions.rating.tolist() == [4.0, 5.0, 3.0]


def test_movielens_ratings_dat_and_movies_dat(tmp_path, write):
    write(tmp_path / "ratings.dat.gz", RATINGS_DAT, gz=True)
    write(tmp_path / "movies.dat", MOVIES_DAT, encoding="latin-1")
    raw = read_movielens(tmp_path)  # a folder works too
    assert raw.params["format"] == "ratings.dat"
    assert raw.items.column("title").to_pylist()[0] == "Star Wars: Episode IV (1977)"
    assert raw.items.column("categories").to_pylist() == ["Action | Sci-Fi", "Crime"]
    assert np.asarray(raw.timestamp).tolist() == [100, 200, 150]


def test_movielens_ratings_csv_and_movies_csv(tmp_path, write):
    write(tmp_path / "ratings.csv", "userId,movieId,rating,timestamp\n1,10,3.5,100\n2,20,4.0,200\n")
    write(tmp_path / "movies.csv", 'movieId,title,genres\n10,"American President, The (1995)",Comedy|Drama\n'
          "20,Heat (1995),(no genres listed)\n")
    raw = read_movielens(tmp_path / "ratings.csv")
    assert raw.items.column("title").to_pylist()[0] == "American President, The (1995)"
    assert raw.items.column("categories").to_pylist() == ["Comedy | Drama", ""]


@pytest.mark.parametrize(
    "members",
    [
        {"ml-100k/u.data": U_DATA, "ml-100k/u.item": U_ITEM, "ml-100k/README": "x"},
        {"ml-1m/ratings.dat": RATINGS_DAT, "ml-1m/movies.dat": MOVIES_DAT, "ml-1m/users.dat": "1::F::1::10::4"},
    ],
)
def test_movielens_official_zip(tmp_path, members):
    path = _zip(tmp_path / "ml.zip", members)
    raw = read_movielens(path)
    assert len(raw) == 3
    assert raw.items is not None and raw.items.num_rows == 2
    assert raw.sources == [path]


def test_movielens_partial_timestamps(tmp_path, write):
    path = write(tmp_path / "partial.csv.gz", "UserID,MovieID,Rating,Timestamp\n1,10,5,100\n1,20,3,\n2,10,4,\n"
                 "2,20,1,300\n", gz=True)
    raw = read_movielens(path)
    assert raw.counts["missing_timestamps"] == 2
    ds = load_dataset(prepare(raw, tmp_path / "o", name="p"))
    assert ds.manifest["counts"]["dropped_rows"] == 2 and len(ds.interactions) == 2
    with pytest.raises(DataError, match=r"partial.csv.gz: 2 rows have an empty timestamp \(first at data row 2\)"):
        read_movielens(path, drop_missing_time=False)


def test_movielens_bad_inputs(tmp_path, write):
    with pytest.raises(DataError, match="nope.dat: file not found"):
        read_movielens(tmp_path / "nope.dat")
    bad = write(tmp_path / "a" / "u.data", "1\t10\t4\t100\n2\t20\t3\n")
    with pytest.raises(DataError, match=r"u.data: malformed row 2: expected 4 fields, got 3"):
        read_movielens(bad)
    bad = write(tmp_path / "b" / "ratings.csv", "userId,movieId,rating,timestamp\n1,10,4,yesterday\n")
    with pytest.raises(DataError, match=r"ratings.csv.*yesterday"):
        read_movielens(bad)
    corrupt = tmp_path / "c" / "u.data.gz"
    corrupt.parent.mkdir()
    corrupt.write_bytes(gzip.compress(U_DATA.encode())[:25])
    with pytest.raises(DataError, match=r"u.data.gz"):
        read_movielens(corrupt)
    with pytest.raises(DataError, match=r"no MovieLens ratings file"):
        read_movielens(_zip(tmp_path / "x.zip", {"other.txt": "x"}))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"empty: no MovieLens ratings file"):
        read_movielens(tmp_path / "empty")


# ---------------------------------------------------------------- amazon p5


def _p5(tmp_path, write, dates=None, text=True):
    folder = tmp_path / "toy"
    write(folder / "sequential_data.txt.gz", "1 3 1 2\n2 2 4\n3 4 3 1\n", gz=True)
    if dates is not None:
        write(folder / "toy_5core_user_item_time.csv.gz", dates, gz=True)
    if text:
        lines = [
            {"p5_item_id": 1, "asin": "A1", "title": "One", "categories": [["Beauty", "Makeup"], ["Beauty", "Nails"]]},
            {"p5_item_id": 2, "asin": "A2", "title": "Two", "categories": [["Beauty"]]},
        ]
        write(tmp_path / "toy_item_text.jsonl.gz", "\n".join(json.dumps(x) for x in lines) + "\n", gz=True)
    return folder


DATES = (
    "user_asin,item_asin,unix_review_time,p5_user_id,p5_item_id\n"
    "U1,A3,86400,1,3\nU1,A1,86400,1,1\nU1,A2,172800,1,2\n"
    "U2,A2,0,2,2\nU2,A4,0,2,4\n"
    "U3,A4,5,3,4\nU3,A3,5,3,3\nU3,A1,5,3,1\n"
)


def test_p5_without_dates_uses_positions(tmp_path, write):
    raw = read_amazon_p5(_p5(tmp_path, write))
    assert raw.params["timestamps"] == "sequence position"
    ds = load_dataset(prepare(raw, tmp_path / "o", name="toy"))
    assert ds.manifest["params"]["timestamps"] == "sequence position"
    assert ds.interactions.item_id.tolist() == [3, 1, 2, 2, 4, 4, 3, 1]  # internal id == P5 id, P5 order
    assert ds.interactions.timestamp.tolist() == [1, 2, 3, 1, 2, 1, 2, 3]
    titles = dict(zip(ds.items.column("item_id").to_pylist(), ds.items.column("title").to_pylist()))
    assert titles[1] == "One" and titles[3] is None
    cats = ds.items.column("categories").to_pylist()
    assert cats[0] == "Beauty > Makeup | Beauty > Nails"


def test_p5_with_dates_keeps_p5_order_on_ties(tmp_path, write):
    raw = read_amazon_p5(_p5(tmp_path, write, dates=DATES))
    assert raw.params["timestamps"].startswith("review date")
    ds = load_dataset(prepare(raw, tmp_path / "o", name="toy"))
    assert ds.interactions.item_id.tolist() == [3, 1, 2, 2, 4, 4, 3, 1]
    assert ds.interactions.timestamp.tolist() == [86400, 86400, 172800, 0, 0, 5, 5, 5]


def test_p5_missing_date_is_an_error_naming_the_file(tmp_path, write):
    folder = _p5(tmp_path, write, dates=DATES.replace("U3,A1,5,3,1\n", ""))
    with pytest.raises(DataError, match=r"toy_5core_user_item_time.csv.gz: no date for 1 of 8.*user 3, item 1"):
        read_amazon_p5(folder)
    assert read_amazon_p5(folder, dates=False).params["timestamps"] == "sequence position"


def test_p5_bad_inputs(tmp_path, write):
    with pytest.raises(DataError, match="no sequential_data.txt"):
        read_amazon_p5(tmp_path)
    bad = write(tmp_path / "b" / "sequential_data.txt", "1 2 3\n2 x 4\n")
    with pytest.raises(DataError, match=r"sequential_data.txt.*user 2.*'x'"):
        read_amazon_p5(bad)


# ---------------------------------------------------------------- amazon 5-core


REVIEWS = [
    {"reviewerID": "R1", "asin": "B2", "overall": 5.0, "unixReviewTime": 200, "reviewText": "great"},
    {"reviewerID": "R1", "asin": "B1", "overall": 3.0, "unixReviewTime": 100, "helpful": [0, 1]},
    {"reviewerID": "R2", "asin": "B1", "overall": 4.0, "unixReviewTime": 100},
]


@pytest.mark.parametrize("kind", ["plain", "gz", "zip"])
def test_amazon_5core_formats(tmp_path, write, kind):
    text = "\n".join(json.dumps(r) for r in REVIEWS) + "\n"
    if kind == "zip":
        path = tmp_path / "Cat.zip"
        with zipfile.ZipFile(path, "w") as zf:
            zf.writestr("Cat.json", text)
    else:
        path = write(tmp_path / ("reviews_Cat_5.json" + (".gz" if kind == "gz" else "")), text, gz=kind == "gz")
    ds = load_dataset(prepare(read_amazon_5core(path), tmp_path / "o", name="cat"))
    assert ds.item_external_ids()[1:] == ["B1", "B2"]
    assert ds.interactions.item_id.tolist() == [1, 2, 1]
    assert ds.interactions.rating.tolist() == [3.0, 5.0, 4.0]


def test_amazon_5core_malformed_json(tmp_path, write):
    path = write(tmp_path / "reviews_X_5.json", json.dumps(REVIEWS[0]) + "\n{not json\n")
    with pytest.raises(DataError, match="reviews_X_5.json"):
        read_amazon_5core(path)


# ---------------------------------------------------------------- taobao


TAOBAO = (
    "1,100,7,pv,1511600000\n1,100,7,cart,1511600100\n1,101,8,buy,1511600200\n"
    "2,100,9,fav,1511700000\n2,101,8,pv,1400000000\n3,102,5,pv,1511800000\n"
)


def test_taobao_behaviors_window_and_categories(tmp_path, write):
    path = write(tmp_path / "UserBehavior.csv.gz", TAOBAO, gz=True)
    raw = read_taobao(path)
    assert raw.counts["dropped_time_window"] == 1
    ds = load_dataset(prepare(raw, tmp_path / "o", name="tb"))
    assert ds.manifest["behaviors"] == ["pv", "fav", "cart", "buy"]
    assert ds.interactions.behavior.tolist() == [0, 2, 3, 1, 0]
    assert ds.manifest["counts"]["dropped_time_window"] == 1
    assert ds.manifest["params"]["time_window"] == [1511539200, 1512316800]
    cats = dict(zip(ds.item_external_ids()[1:], ds.items.column("category_id").to_pylist()))
    assert cats == {"100": 7, "101": 8, "102": 5}
    assert len(read_taobao(path, time_window=None)) == 6


def test_taobao_unknown_behavior_and_bad_window(tmp_path, write):
    path = write(tmp_path / "ub.csv", "1,100,7,click,1511600000\n")
    with pytest.raises(DataError, match=r"ub.csv: behavior value\(s\) click not in behavior_order"):
        prepare(read_taobao(path), tmp_path / "o", name="x")
    with pytest.raises(ConfigError, match="time_window"):
        read_taobao(path, time_window="5")


def test_most_frequent_ties_pick_smallest():
    k, v = most_frequent(np.array([1, 1, 1, 2, 2, 3]), np.array([5, 4, 5, 9, 8, 1]))
    assert k.tolist() == [1, 2, 3] and v.tolist() == [5, 8, 1]


# ---------------------------------------------------------------- generic


def test_generic_csv_iso_and_behaviors(tmp_path, write):
    path = write(tmp_path / "log.csv", "uid,iid,when,kind,stars\n"
                 "007,a,2020-01-01T00:00:10Z,view,1\n007,b,2020-01-01 00:00:00,buy,\n8,a,,view,3\n")
    raw = read_generic(path, user_col="uid", item_col="iid", time_col="when", behavior_col="kind",
                       rating_col="stars", time_format="iso")
    ds = load_dataset(prepare(raw, tmp_path / "o", name="g", behavior_order=["view", "buy"]))
    assert ds.manifest["counts"]["dropped_rows"] == 1  # empty time
    assert ds.user_external_ids()[1:] == ["007"]  # ids read as text: leading zeros survive
    assert ds.interactions.timestamp.tolist() == [1577836800, 1577836810]
    assert ds.interactions.behavior.tolist() == [1, 0]


def test_generic_tsv_unix_ms_and_strptime(tmp_path, write):
    path = write(tmp_path / "log.tsv.gz", "u\ti\tt\n1\t2\t1500000000123\n", gz=True)
    raw = read_generic(path, user_col="u", item_col="i", time_col="t", time_format="unix_ms")
    assert np.asarray(raw.timestamp).tolist() == [1500000000]
    path = write(tmp_path / "d.csv", "u;i;t\n1;2;25/12/2020 10:00\n")
    raw = read_generic(path, user_col="u", item_col="i", time_col="t", time_format="%d/%m/%Y %H:%M")
    assert np.asarray(raw.timestamp).tolist() == [1608890400]


def test_generic_parquet(tmp_path):
    path = tmp_path / "log.parquet"
    pq.write_table(pa.table({"u": [1, 2], "i": ["x", "y"], "t": [10.0, 20.0]}), path)
    raw = read_generic(path, user_col="u", item_col="i", time_col="t")
    ds = load_dataset(prepare(raw, tmp_path / "o", name="pq"))
    assert len(ds.interactions) == 2 and ds.interactions.timestamp.tolist() == [10, 20]


def test_generic_unknown_column(tmp_path, write):
    path = write(tmp_path / "log.csv", "a,b,c\n1,2,3\n")
    with pytest.raises(ConfigError, match=r"file .*log.csv has no column 'foo' \(columns: a, b, c\)"):
        read_generic(path, user_col="a", item_col="foo", time_col="c")
    with pytest.raises(ConfigError, match="time_col"):
        read_generic(path, user_col="a", item_col="b")


def test_generic_bad_timestamps_name_file_column_row_value(tmp_path, write):
    path = write(tmp_path / "log.csv", "u,i,t\n1,2,100\n1,3,12:30\n")
    with pytest.raises(DataError, match=r"log.csv: column 't' data row 2 \(line 3\): '12:30' is not a number"):
        read_generic(path, user_col="u", item_col="i", time_col="t")
    with pytest.raises(DataError, match=r"log.csv: column 't' data row 1 \(line 2\): '100' is not an ISO"):
        read_generic(path, user_col="u", item_col="i", time_col="t", time_format="iso")
    with pytest.raises(DataError, match=r"column 't' data row 1.*does not match time_format"):
        read_generic(path, user_col="u", item_col="i", time_col="t", time_format="%Y-%m-%d")


def test_generic_malformed_row_and_missing_file(tmp_path, write):
    path = write(tmp_path / "log.csv", "u,i,t\n1,2,100\n1,3\n")
    with pytest.raises(DataError, match=r"log.csv: malformed row 3: expected 3 fields, got 2"):
        read_generic(path, user_col="u", item_col="i", time_col="t")
    with pytest.raises(DataError, match=r"missing.csv: file not found"):
        read_generic(tmp_path / "missing.csv", user_col="u", item_col="i", time_col="t")


# ---------------------------------------------------------------- registry


def test_registry_and_unknown_source(tmp_path, write):
    assert set(SOURCES) >= {"movielens", "amazon_p5", "amazon_5core", "taobao", "generic"}
    assert get_source("taobao").defaults["behavior_order"] == ["pv", "fav", "cart", "buy"]
    assert "user_col" in get_source("generic").options
    with pytest.raises(ConfigError, match=r"unknown data source 'movielen' \(known: amazon_5core, .*taobao"):
        get_source("movielen")
    path = write(tmp_path / "u.data", U_DATA)
    with pytest.raises(ConfigError, match="does not take user_col"):
        prepare_source("movielens", path, tmp_path / "o", user_col="x")
    out = prepare_source("movielens", path, tmp_path / "o2", user_core=2)
    assert load_dataset(out).manifest["params"]["user_core"] == 2


def test_zip_member_is_streamed(tmp_path):
    # a zip holding a gzipped member is read through both layers
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("ml-100k/u.data.gz", gzip.compress(U_DATA.encode()))
    (tmp_path / "ml-100k.zip").write_bytes(buf.getvalue())
    assert len(read_movielens(tmp_path / "ml-100k.zip", item_text=False)) == 3


def test_a_movielens_folder_with_only_the_reconstructed_ml1m_file_is_read(tmp_path):
    """The staged ML-1M has no ratings.dat, only ratings_reconstructed_ts.csv.gz (header, some empty timestamps)
    beside movies.dat: the folder reads, titles come along, the rows without a time are dropped and counted."""
    folder = tmp_path / "ml-1m"
    folder.mkdir()
    (folder / "ratings_reconstructed_ts.csv.gz").write_bytes(
        gzip.compress(b"UserID,MovieID,Rating,Timestamp\n1,10,4,100\n2,20,3,\n1,20,5,150\n"))
    (folder / "movies.dat").write_text(MOVIES_DAT, encoding="latin-1")
    raw = read_movielens(folder)
    assert raw.counts["missing_timestamps"] == 1 and raw.items is not None
    ds = load_dataset(prepare(raw, tmp_path / "out", name="ml-1m"))
    assert ds.manifest["counts"]["interactions"] == 2 and ds.manifest["counts"]["dropped_rows"] == 1


def test_p5_keeps_repeated_pairs_as_the_published_split_does(tmp_path, write):
    folder = tmp_path / "rep"
    write(folder / "sequential_data.txt", "1 3 1 3 2\n2 2 4\n")  # user 1 buys item 3 twice
    ds = load_dataset(prepare_source("amazon_p5", folder, tmp_path / "out", dates=False))
    assert ds.manifest["params"]["dedup"] == "none" and ds.manifest["counts"]["dropped_duplicates"] == 0
    assert len(ds.interactions) == 6
    first = load_dataset(prepare_source("amazon_p5", folder, tmp_path / "first", dates=False, dedup="first"))
    assert len(first.interactions) == 5 and first.manifest["params"]["dedup"] == "first"
