import argparse
import hashlib
import json

import pytest

from genrec.data import cli
from genrec.data import fetch as fetch_mod
from genrec.data.fetch import KNOWN_DATASETS, KnownDataset, fetch
from genrec.data.prepare import prepare
from genrec.data.schema import load_dataset
from genrec.data.stats import dataset_stats, format_stats
from genrec.errors import ConfigError, DataError, GenrecError


def test_stats_on_a_small_log(raw_log, tmp_path):
    rows = [("a", "x", 0, "pv"), ("a", "y", 10, "buy"), ("a", "z", 99999, "pv"), ("b", "x", 5, "pv"),
            ("a", "x", 100000, "buy")]
    raw = raw_log(rows, behavior=True, behavior_order=["pv", "buy"])
    ds = load_dataset(prepare(raw, tmp_path / "d", name="s", dedup="none"))
    d = dataset_stats(ds)
    assert (d["users"], d["items"], d["interactions"]) == (2, 3, 5)
    assert d["density"] == pytest.approx(5 / 6)
    assert d["item_frequency"]["max"] == 3 and d["items_seen_once_fraction"] == pytest.approx(2 / 3)
    assert d["repeat_fraction"] == pytest.approx(1 / 5)  # a's second x; b's x is b's first
    assert d["sequence_length"]["min"] == 1 and d["sequence_length"]["max"] == 4
    assert d["sequence_length"]["median"] == 2.5
    assert d["sessions"]["count"] == 3
    assert d["sessions"]["per_user"]["max"] == 2
    assert d["sessions"]["singleton_fraction"] == pytest.approx(1 / 3)  # a: {x, y}, {z, x}; b: {x}
    assert d["behaviors"] == {"pv": 3, "buy": 2}
    assert d["time"]["min"] == 0 and d["time"]["max"] == 100000
    text = format_stats(d)
    for word in ("users", "interactions", "density", "sessions", "pv 3", "1970-01-01", "seen once", "repeats"):
        assert word in text
    json.dumps(d)  # JSON-serialisable for `genrec data stats --json`


def _pin(monkeypatch, sha):
    monkeypatch.setitem(KNOWN_DATASETS, "toy", KnownDataset("https://example.invalid/toy.zip", sha, "toy"))


def _no_network(*a, **k):
    raise AssertionError("fetch must not touch the network with from_file")


def test_fetch_from_file_verifies_checksum(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(fetch_mod.urllib.request, "urlopen", _no_network)
    src = tmp_path / "local.zip"
    src.write_bytes(b"archive bytes")
    digest = hashlib.sha256(b"archive bytes").hexdigest()
    _pin(monkeypatch, digest)
    out = fetch("toy", tmp_path / "out", from_file=src)
    assert out == tmp_path / "out" / "toy.zip" and out.read_bytes() == b"archive bytes"
    _pin(monkeypatch, None)  # unknown checksum: printed so the user can pin it
    fetch("toy", tmp_path / "out2", from_file=src)
    assert digest in capsys.readouterr().err


def test_fetch_checksum_mismatch_leaves_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(fetch_mod.urllib.request, "urlopen", _no_network)
    src = tmp_path / "local.zip"
    src.write_bytes(b"tampered")
    _pin(monkeypatch, "0" * 64)
    with pytest.raises(DataError, match=r"local.zip: sha256 .* does not match"):
        fetch("toy", tmp_path / "out", from_file=src)
    assert list((tmp_path / "out").iterdir()) == []
    with pytest.raises(DataError, match="nothere.zip: file not found"):
        fetch("toy", tmp_path / "out", from_file=tmp_path / "nothere.zip")
    with pytest.raises(ConfigError, match=r"unknown dataset 'ml-7m' \(known: ml-100k"):
        fetch("ml-7m", tmp_path / "out")


def test_known_datasets_have_official_urls():
    assert KNOWN_DATASETS["ml-100k"].url == "https://files.grouplens.org/datasets/movielens/ml-100k.zip"
    assert {"ml-100k", "ml-1m", "ml-20m"} <= set(KNOWN_DATASETS)


def _parser():
    ap = argparse.ArgumentParser(prog="genrec")
    sub = ap.add_subparsers(dest="command")
    cli.register(sub)
    return ap


def _run(argv):
    args = _parser().parse_args(argv)
    return args.func(args)


def test_cli_synth_stats_and_prepare(tmp_path, write, capsys):
    assert _run(["data", "synth", "--out", str(tmp_path / "syn"), "--users", "40", "--items", "30", "--seed", "2"]) == 0
    out = capsys.readouterr().out
    assert "fingerprint" in out and "users 40" in out
    assert _run(["data", "stats", str(tmp_path / "syn")]) == 0
    assert "sessions" in capsys.readouterr().out
    assert _run(["data", "stats", "--json", str(tmp_path / "syn")]) == 0
    assert json.loads(capsys.readouterr().out)["users"] == 40

    log = write(tmp_path / "log.csv", "u,i,t,b\n1,a,100,view\n1,b,200,buy\n2,a,300,view\n")
    argv = ["data", "prepare", "generic", str(log), "--out", str(tmp_path / "g"), "--user-col", "u",
            "--item-col", "i", "--time-col", "t", "--behavior-col", "b", "--behavior-order", "view,buy",
            "--session-gap", "50", "--max-session-len", "5", "--dedup", "last", "--name", "tiny"]
    assert _run(argv) == 0
    m = load_dataset(tmp_path / "g").manifest
    assert m["name"] == "tiny" and m["behaviors"] == ["view", "buy"]
    assert m["params"]["session_gap"] == 50 and m["params"]["dedup"] == "last"
    assert m["counts"]["sessions"] == 3


def test_cli_user_errors_are_genrec_errors(tmp_path, write):
    log = write(tmp_path / "u.data", "1\t2\t3\t4\n")
    with pytest.raises(ConfigError, match="unknown data source 'nope'"):
        _run(["data", "prepare", "nope", str(log), "--out", str(tmp_path / "o")])
    with pytest.raises(ConfigError, match="does not take --user-col"):
        _run(["data", "prepare", "movielens", str(log), "--out", str(tmp_path / "o"), "--user-col", "x"])
    with pytest.raises(GenrecError, match="missing.csv"):
        _run(["data", "prepare", "generic", str(tmp_path / "missing.csv"), "--out", str(tmp_path / "o"),
              "--user-col", "u", "--item-col", "i", "--time-col", "t"])
    with pytest.raises(DataError, match="dataset folder not found"):
        _run(["data", "stats", str(tmp_path / "none")])
    with pytest.raises(DataError, match="user_core=5"):
        _run(["data", "prepare", "movielens", str(log), "--out", str(tmp_path / "o"), "--user-core", "5"])
