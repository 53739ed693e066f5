"""Prepare the staged public datasets and check the published counts (skipped when absent)."""

import gzip

import numpy as np
import pytest

from genrec.data.prepare import prepare
from genrec.data.schema import load_dataset
from genrec.data.sources import prepare_source
from genrec.data.sources.amazon_5core import read_amazon_5core
from genrec.data.sources.generic import read_generic
from genrec.data.sources.movielens import read_movielens
from genrec.data.sources.taobao import read_taobao
from genrec.data.stats import dataset_stats

pytestmark = pytest.mark.realdata


def test_movielens_100k(shared_data, need, tmp_path):
    path = need(shared_data / "movielens-100k" / "u.data.gz")
    ds = load_dataset(prepare(read_movielens(path), tmp_path / "ml", name="ml-100k"))
    c = ds.manifest["counts"]
    assert (c["users"], c["items"], c["interactions"]) == (943, 1682, 100000)
    assert ds.item_external_ids()[1] == "1"
    assert ds.items.column("title").to_pylist()[0] == "Toy Story (1995)"
    assert ds.items.column("categories").to_pylist()[0] == "Animation | Children's | Comedy"
    assert {s["path"].rsplit("/", 1)[-1] for s in ds.manifest["sources"]} == {"u.data.gz", "u.item.gz"}
    assert dataset_stats(ds)["sequence_length"]["min"] == 20


def test_movielens_1m_pieces(shared_data, need):
    partial = read_movielens(need(shared_data / "movielens-1m" / "ratings_reconstructed_partial_ts.csv.gz"))
    assert len(partial) == 1_000_209 and partial.counts["missing_timestamps"] == 199_665
    assert partial.items is not None and partial.items.num_rows == 3883  # movies.dat beside
    head = read_movielens(need(shared_data / "movielens-1m" / "ratings_users0001-2999.dat.gz"), item_text=False)
    assert len(head) == 487_650 and head.params["format"] == "ratings.dat"


def test_beauty_p5_with_dates(shared_data, need, tmp_path):
    folder = need(shared_data / "amazon2014-p5-beauty-sports-sequences" / "beauty")
    need(folder / "beauty_5core_user_item_time.csv.gz")
    ds = load_dataset(prepare_source("amazon_p5", folder, tmp_path / "beauty"))
    c = ds.manifest["counts"]
    assert (c["users"], c["items"], c["interactions"]) == (22363, 12101, 198502)
    assert ds.manifest["params"]["timestamps"].startswith("review date")
    # internal item id == P5 item id, user likewise
    assert ds.item_external_ids()[1:] == [str(k) for k in range(1, 12102)]
    assert ds.user_external_ids()[1:] == [str(k) for k in range(1, 22364)]
    titles = ds.items.column("title").to_pylist()
    assert sum(t is not None for t in titles) == 12101
    assert titles[0] == "OPI Nail Lacquer, Simmer and Shimmer, 0.5-Fluid Ounce"
    assert ds.items.column("asin").to_pylist()[0] == "B004756YJA"
    # per-user order equals sequential_data.txt even though dates tie within a day
    with gzip.open(folder / "sequential_data.txt.gz", "rt") as f:
        expected = [int(t) for line in f for t in line.split()[1:]]
    inter = ds.interactions
    assert inter.item_id.tolist() == expected
    assert np.all(np.diff(inter.user_id) >= 0)
    same_user = inter.user_id[1:] == inter.user_id[:-1]
    assert np.any(same_user & (np.diff(inter.timestamp) == 0))  # ties really occur


def test_taobao_sample(shared_data, need, tmp_path):
    path = need(shared_data / "taobao-userbehavior-sample" / "UserBehavior_head.csv.gz")
    all_rows = read_taobao(path, time_window=None)
    assert len(all_rows) == 84287
    raw = read_taobao(path)
    assert raw.counts["dropped_time_window"] == 35 and len(raw) == 84252
    ds = load_dataset(prepare(raw, tmp_path / "tb", name="taobao", dedup="none"))
    assert ds.manifest["behaviors"] == ["pv", "fav", "cart", "buy"]
    assert ds.num_users == 814 and len(ds.interactions) == 84252
    counts = dataset_stats(ds)["behaviors"]
    assert counts["pv"] > counts["cart"] > counts["fav"] > counts["buy"] > 0
    ts = ds.interactions.timestamp
    assert ts.min() >= 1511539200 and ts.max() < 1512316800
    assert ds.items.column("category_id").null_count == 0


def test_musical_instruments_zip(shared_data, need, tmp_path):
    path = need(shared_data / "amazon2014-musical-instruments-5core" / "Musical_Instruments.zip")
    ds = load_dataset(prepare(read_amazon_5core(path), tmp_path / "mi", name="mi"))
    c = ds.manifest["counts"]
    assert (c["users"], c["items"], c["interactions"]) == (1429, 900, 10261)
    assert ds.interactions.rating.min() == 1 and ds.interactions.rating.max() == 5


def test_generic_on_real_rows(shared_data, need, tmp_path):
    """The generic reader on a small temp CSV cut from a real file, and on the DIGINETICA sample."""
    src = need(shared_data / "movielens-100k" / "u.data.gz")
    with gzip.open(src, "rt") as f:
        lines = [next(f) for _ in range(500)]
    csv = tmp_path / "head.csv"
    csv.write_text("user,item,rating,ts\n" + "".join(line.replace("\t", ",") for line in lines))
    raw = read_generic(csv, user_col="user", item_col="item", time_col="ts", rating_col="rating")
    ds = load_dataset(prepare(raw, tmp_path / "g", name="head"))
    assert len(ds.interactions) == 500
    dig = shared_data / "diginetica-sample-srgnn" / "sample_train-item-views.csv.gz"
    if dig.exists():
        raw = read_generic(dig, user_col="session_id", item_col="item_id", time_col="eventdate",
                           time_format="%Y-%m-%d")
        assert raw.params["sep"] == ";" and len(raw) == 12391
