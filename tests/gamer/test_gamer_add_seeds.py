"""benchmarks/gamer.py --add-seeds joins seeds that decoded the record's SID table, and refuses another table."""

from __future__ import annotations

import json

import numpy as np
import pytest

from genrec.sid import SIDTable
from tests.conftest import load_benchmark
from tests.gamer.conftest import NUM_ITEMS, bench_toy, toy_table


def test_added_seeds_must_decode_the_records_sid_table(tmp_path):
    bench = load_benchmark("gamer")
    bench_toy(tmp_path, "toy.yaml")
    common = ["--recipe", str(tmp_path / "toy.yaml"), "--data", str(tmp_path / "data"), "--runs",
              str(tmp_path / "runs"), "--results", str(tmp_path / "res")]
    assert bench.main([*common, "--seeds", "1"]) == 0
    assert bench.main([*common, "--seeds", "2", "--add-seeds"]) == 0
    out = json.loads((tmp_path / "res" / "gamer-data-toy.json").read_text())
    fp = toy_table().fingerprint
    assert out["seeds"] == [1, 2] and [s.get("sid_fingerprint") for s in out["per_seed"]] == [fp, fp]
    ids = np.arange(1, NUM_ITEMS + 1)  # another table: the same items, other codes
    SIDTable.build(ids, np.stack([ids % 4, (ids // 4) % 2], 1), [4, 2], quantizer="toy").save(tmp_path / "sids.json")
    with pytest.raises(SystemExit, match="SID table"):
        bench.main([*common, "--seeds", "3", "--add-seeds"])
    assert json.loads((tmp_path / "res" / "gamer-data-toy.json").read_text())["seeds"] == [1, 2]
