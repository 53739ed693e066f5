import json

import numpy as np
import pyarrow as pa
import pytest

from genrec.data.prepare import RawLog, prepare
from genrec.data.schema import load_dataset
from genrec.errors import ConfigError, DataError


def run(raw, tmp_path, sub="ds", **params):
    return load_dataset(prepare(raw, tmp_path / sub, name="t", **params))


def ext_rows(ds):
    """(external user, external item, timestamp) tuples in table order."""
    users, items = ds.user_external_ids(), ds.item_external_ids()
    i = ds.interactions
    return [(users[u], items[t], int(ts)) for u, t, ts in zip(i.user_id, i.item_id, i.timestamp)]


def test_dedup_first_last_none(raw_log, tmp_path):
    rows = [("a", "x", 30), ("a", "x", 10), ("a", "y", 20), ("a", "x", 40)]
    first = run(raw_log(rows), tmp_path, "f")
    assert ext_rows(first) == [("a", "x", 10), ("a", "y", 20)]
    assert first.manifest["counts"]["dropped_duplicates"] == 2
    last = run(raw_log(rows), tmp_path, "l", dedup="last")
    assert ext_rows(last) == [("a", "y", 20), ("a", "x", 40)]
    none = run(raw_log(rows), tmp_path, "n", dedup="none")
    assert len(none.interactions) == 4


def test_dedup_same_time_keeps_file_order(raw_log, tmp_path):
    rows = [("a", "x", 5, 1.0), ("a", "x", 5, 2.0)]
    assert run(raw_log(rows, rating=True), tmp_path, "f").interactions.rating.tolist() == [1.0]
    assert run(raw_log(rows, rating=True), tmp_path, "l", dedup="last").interactions.rating.tolist() == [2.0]


def test_multi_behavior_dedup_on_user_item_behavior(raw_log, tmp_path):
    rows = [("a", "x", 1, "pv"), ("a", "x", 2, "pv"), ("a", "x", 3, "buy"), ("a", "x", 4, "buy")]
    ds = run(raw_log(rows, behavior=True, behavior_order=["pv", "buy"]), tmp_path)
    assert ds.interactions.timestamp.tolist() == [1, 3]
    assert ds.interactions.behavior.tolist() == [0, 1]
    assert ds.interactions.behavior.dtype == np.int8
    assert ds.manifest["behaviors"] == ["pv", "buy"]


def test_behavior_order_override_and_unknown_name(raw_log, tmp_path):
    rows = [("a", "x", 1, "pv"), ("a", "y", 2, "buy")]
    ds = run(raw_log(rows, behavior=True, behavior_order=["pv", "buy"]), tmp_path, behavior_order="buy,pv")
    assert ds.interactions.behavior.tolist() == [1, 0]
    assert ds.manifest["params"]["behavior_order"] == ["buy", "pv"]
    with pytest.raises(DataError, match="'?buy'? not in behavior_order|buy not in behavior_order"):
        run(raw_log(rows, behavior=True, behavior_order=["pv", "fav"]), tmp_path, "b")


def test_iterative_kcore_reaches_fixed_point(tmp_path):
    rng = np.random.default_rng(1)
    n = 3000
    users = rng.zipf(1.6, n) % 300
    items = rng.zipf(1.4, n) % 400
    raw = RawLog(user=users, item=items, timestamp=np.arange(n), source="test", label="kcore.log")
    ds = run(raw, tmp_path, user_core=5, item_core=4)
    i = ds.interactions
    assert np.bincount(i.user_id)[1:].min() >= 5
    assert np.bincount(i.item_id)[1:].min() >= 4
    c = ds.manifest["counts"]
    assert c["core_rounds"] >= 2  # one pass is not enough on this data
    assert c["dropped_core"] + c["interactions"] + c["dropped_duplicates"] == n
    # the fixed point is maximal: re-running the filter on its own output removes nothing
    again = RawLog(user=i.user_id, item=i.item_id, timestamp=i.timestamp, source="test")
    ds2 = run(again, tmp_path, "again", user_core=5, item_core=4, dedup="none")
    assert ds2.manifest["counts"]["dropped_core"] == 0


def test_kcore_that_empties_names_the_parameters(raw_log, tmp_path):
    rows = [("a", "x", 1), ("b", "y", 2)]
    with pytest.raises(DataError, match=r"test.log.*user_core=3, item_core=0"):
        run(raw_log(rows), tmp_path, user_core=3)


def test_min_rating_filter_and_its_empty_result(raw_log, tmp_path):
    rows = [("a", "x", 1, 5.0), ("a", "y", 2, 2.0), ("b", "x", 3, 4.0)]
    ds = run(raw_log(rows, rating=True), tmp_path, min_rating=4)
    assert ds.manifest["counts"]["dropped_min_rating"] == 1
    assert ds.interactions.rating.dtype == np.float32
    with pytest.raises(DataError, match="min_rating=6"):
        run(raw_log(rows, rating=True), tmp_path, "e", min_rating=6)
    with pytest.raises(ConfigError, match="no rating column"):
        run(raw_log([("a", "x", 1)]), tmp_path, "r", min_rating=3)


def test_id_remap_numeric_when_all_integers(raw_log, tmp_path):
    rows = [("10", "100", 1), ("9", "2", 2), ("10", "33", 3), ("9", "100", 1)]
    ds = run(raw_log(rows), tmp_path)
    assert ds.user_external_ids()[1:] == ["9", "10"]
    assert ds.item_external_ids()[1:] == ["2", "33", "100"]
    i = ds.interactions
    for col, n in ((i.user_id, 2), (i.item_id, 3)):
        assert col.min() == 1 and sorted(set(col.tolist())) == list(range(1, n + 1))  # 0 unused, contiguous
    assert ds.items.column("item_id").to_pylist() == [1, 2, 3]


def test_id_remap_lexicographic_for_text_ids_and_int_ids_kept(raw_log, tmp_path):
    ds = run(raw_log([("u", "b10", 1), ("u", "b9", 2), ("u", "a", 3)]), tmp_path, "s")
    assert ds.item_external_ids()[1:] == ["a", "b10", "b9"]
    # P5-style ids 1..N map to themselves
    ids = np.array([3, 1, 2, 5, 4])
    raw = RawLog(user=np.ones(5, dtype=np.int64), item=ids, timestamp=np.arange(5), source="test")
    ds = run(raw, tmp_path, "p5")
    assert ds.item_external_ids()[1:] == ["1", "2", "3", "4", "5"]
    assert ds.interactions.item_id.tolist() == ids.tolist()


def test_sort_is_per_user_chronological_with_file_order_ties(raw_log, tmp_path):
    rows = [("b", "p", 5), ("a", "z", 7), ("a", "y", 3), ("a", "x", 7), ("a", "w", 3), ("b", "q", 1)]
    ds = run(raw_log(rows), tmp_path)
    assert ext_rows(ds) == [("a", "y", 3), ("a", "w", 3), ("a", "z", 7), ("a", "x", 7), ("b", "q", 1), ("b", "p", 5)]


def test_missing_values_are_dropped_and_counted(raw_log, tmp_path):
    raw = RawLog(user=["a", None, "a", "", "b"], item=["x", "y", None, "z", "y"],
                 timestamp=np.array([1, 2, 3, 4, np.nan]), source="test", label="m.csv")
    ds = run(raw, tmp_path)
    assert len(ds.interactions) == 1
    assert ds.manifest["counts"]["dropped_rows"] == 4
    bad = RawLog(user=[None, None], item=["x", "y"], timestamp=[1, 2], source="test", label="bad.csv")
    with pytest.raises(DataError, match=r"bad.csv: all 2 rows"):
        run(bad, tmp_path, "bad")


def test_manifest_fields(raw_log, tmp_path, write):
    src = write(tmp_path / "in.txt", "hello")
    items = pa.table({"external_id": ["x", "q"], "title": ["Ex", "Qu"], "categories": ["A > B", "C"],
                      "category_id": [7, 8]})
    raw = raw_log([("a", "x", 1), ("a", "y", 5000)], items=items, sources=[src], params={"timestamps": "t"})
    ds = run(raw, tmp_path)
    m = json.loads((tmp_path / "ds" / "manifest.json").read_text())
    assert m["name"] == "t" and m["source"] == "test" and m["created_by"].startswith("genrec ")
    assert m["sources"][0]["bytes"] == 5 and len(m["sources"][0]["sha256"]) == 64
    for k in ("min_rating", "dedup", "user_core", "item_core", "session_gap", "max_session_len", "timestamps"):
        assert k in m["params"]
    assert m["counts"]["users"] == 1 and m["counts"]["items"] == 2 and m["counts"]["interactions"] == 2
    assert m["counts"]["sessions"] == 2  # 4999 s > default gap 3600
    assert m["counts"]["dropped_rows"] == 0
    assert ds.items.column("title").to_pylist() == ["Ex", None]
    assert ds.items.column("category_id").to_pylist() == [7, None]
    assert ds.users.column("external_id").to_pylist() == ["a"]


def test_fingerprint_is_deterministic_and_tracks_params(raw_log, tmp_path):
    rows = [("a", "x", 1), ("a", "y", 5), ("b", "x", 9000), ("b", "y", 20000)]
    f1 = run(raw_log(rows), tmp_path, "1").fingerprint
    f2 = run(raw_log(rows), tmp_path, "2").fingerprint
    f3 = run(raw_log(rows), tmp_path, "3", session_gap=7200).fingerprint
    f4 = run(raw_log(rows), tmp_path, "4", max_session_len=10).fingerprint
    assert f1 == f2
    assert len({f1, f3, f4}) == 3


def test_bad_params_are_config_errors(raw_log, tmp_path):
    raw = raw_log([("a", "x", 1)])
    with pytest.raises(ConfigError, match="unknown prepare parameter.*bogus"):
        prepare(raw, tmp_path / "x", name="t", bogus=1)
    with pytest.raises(ConfigError, match="dedup"):
        prepare(raw, tmp_path / "x", name="t", dedup="most")
    with pytest.raises(ConfigError, match="user_core"):
        prepare(raw, tmp_path / "x", name="t", user_core=-1)
    with pytest.raises(ConfigError, match="behavior_order"):
        prepare(raw, tmp_path / "x", name="t", behavior_order=["a"])


def test_length_mismatch_is_data_error(tmp_path):
    raw = RawLog(user=[1, 2], item=[1], timestamp=[1, 2], source="test", label="len.csv")
    with pytest.raises(DataError, match="len.csv.*'item'"):
        prepare(raw, tmp_path / "x", name="t")


def test_numeric_behavior_names_sort_numerically_without_an_order(raw_log, tmp_path):
    rows = [("a", "x", 1, "10"), ("a", "y", 2, "2"), ("a", "z", 3, "1")]
    ds = run(raw_log(rows, behavior=True), tmp_path)
    assert ds.manifest["behaviors"] == ["1", "2", "10"]
    assert ds.interactions.behavior.tolist() == [2, 1, 0]


def test_output_path_that_is_a_file(raw_log, tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(DataError, match="f: exists and is not a folder"):
        prepare(raw_log([("a", "x", 1)]), tmp_path / "f", name="t")


def test_tie_order_hstu_applies_the_reference_codes_rule(raw_log, tmp_path):
    """`tie_order: hstu` orders each user's same-second events as the HSTU code's MovieLens preprocessing does (one
    non-stable sort of the whole log by time, then grouping by user); the default keeps the file's order."""
    rng = np.random.default_rng(0)
    n = 3000
    users, ts = rng.integers(0, 5, n), rng.integers(0, 40, n)  # many events share a second
    rows = [(f"u{u}", f"i{k}", 1_000 + int(t)) for k, (u, t) in enumerate(zip(users, ts))]
    stable, hstu = run(raw_log(rows), tmp_path, "s"), run(raw_log(rows), tmp_path, "h", tie_order="hstu")
    by_time = np.argsort(1_000 + ts, kind="quicksort")
    want = [rows[k] for u in range(5) for k in by_time if users[k] == u]
    assert ext_rows(hstu) == want
    assert ext_rows(stable) == sorted(rows, key=lambda r: (r[0], r[2]))  # Python's sort is stable: file order
    assert ext_rows(hstu) != ext_rows(stable) and sorted(ext_rows(hstu)) == sorted(ext_rows(stable))
    assert hstu.manifest["params"]["tie_order"] == "hstu" and "tie_order" not in stable.manifest["params"]
    assert hstu.fingerprint != stable.fingerprint
    with pytest.raises(ConfigError, match="tie_order must be one of stable, hstu"):
        run(raw_log(rows), tmp_path, "x", tie_order="random")
