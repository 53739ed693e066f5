"""Collision level, SID table persistence and health metrics."""

from __future__ import annotations

import json

import numpy as np
import pytest

from genrec.errors import DataError
from genrec.sid import SIDTable, add_collision_level
from tests.sid.conftest import random_table


def test_collision_level_numbers_groups_in_row_order():
    codes = np.array([[1, 2], [0, 0], [1, 2], [1, 2], [0, 1]])
    full = add_collision_level(codes)
    assert full[:, -1].tolist() == [0, 0, 1, 2, 0]
    assert full[:, :2].tolist() == codes.tolist()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_collision_handling_is_a_bijection(seed):
    table = random_table(200, levels=2, codebook=5, seed=seed)  # 200 items in 25 prefixes: many collisions
    sids = {tuple(r) for r in table.codes.tolist()}
    assert len(sids) == table.num_items == len(set(table.item_ids.tolist()))
    assert table.codebook_sizes[-1] == table.codes[:, -1].max() + 1  # size of the extra level = max collisions
    lookup = table.lookup()
    assert all(lookup[tuple(table.sid_of([i])[0].tolist())] == i for i in table.item_ids.tolist())


def test_collision_tokens_follow_item_id_order_whatever_the_input_order():
    codes = np.array([[3, 3], [3, 3], [3, 3]])
    a = SIDTable.build([7, 5, 9], codes, [4, 4])
    assert dict(zip(a.item_ids.tolist(), a.codes[:, -1].tolist())) == {5: 0, 7: 1, 9: 2}


@pytest.mark.parametrize("suffix", [".json", ".parquet"])
def test_sid_table_round_trips(tmp_path, suffix):
    table = random_table(50, seed=3)
    table.quantizer_params = {"num_levels": 3, "codebook_size": 4}
    table.input_fingerprint = "abc123"
    path = table.save(tmp_path / f"sids{suffix}")
    back = SIDTable.load(path)
    assert np.array_equal(back.item_ids, table.item_ids) and np.array_equal(back.codes, table.codes)
    assert back.meta() == table.meta()


def test_load_rejects_other_versions_and_edits(tmp_path):
    table = random_table(10, seed=4)
    path = table.save(tmp_path / "sids.json")
    doc = json.loads(path.read_text())
    doc["format_version"] = 99
    path.write_text(json.dumps(doc))
    with pytest.raises(DataError, match="format version 99"):
        SIDTable.load(path)
    doc["format_version"] = 1
    doc["codes"][0], doc["codes"][1] = doc["codes"][1], doc["codes"][0]
    path.write_text(json.dumps(doc))
    with pytest.raises(DataError, match="fingerprint"):
        SIDTable.load(path)
    with pytest.raises(DataError, match=".json or .parquet"):
        table.save(tmp_path / "sids.pkl")


def test_duplicate_sids_and_out_of_range_codes_are_rejected():
    with pytest.raises(DataError, match="share a semantic id"):
        SIDTable(np.array([1, 2]), np.array([[0, 0], [0, 0]]), (2, 2))
    with pytest.raises(DataError, match="outside"):
        SIDTable(np.array([1]), np.array([[5, 0]]), (2, 2))


def test_health_report():
    # 4 items; level 0 uses codes {0, 1} of 4; items 1, 2, 3 share (0, 1)
    table = SIDTable.build([1, 2, 3, 4], np.array([[0, 1], [0, 1], [0, 1], [1, 0]]), [4, 2])
    h = table.health()
    assert h.collision_rate == pytest.approx(0.75)
    assert h.collision_level_size == 3
    lv0, lv1, lv2 = h.levels
    assert lv0.usage == pytest.approx(0.5) and lv0.entropy_bits == pytest.approx(0.8112781)
    assert lv0.max_items_per_prefix == 3 and lv1.num_prefixes == 2
    assert lv2.max_items_per_prefix == 1 and lv2.num_prefixes == 4
    assert "collision rate 75.00%" in h.summary()
    assert h.as_dict()["levels"][0]["codebook_size"] == 4
