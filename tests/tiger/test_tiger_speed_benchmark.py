"""benchmarks/tiger_speed.py --quick on the synthetic data: every variant trains, the beam paths agree, a record."""

from __future__ import annotations

import numpy as np

from genrec.config import DataConfig
from genrec.data.loading import load_data
from genrec.sid import SIDTable
from tests.conftest import assert_saved_record, load_benchmark


def test_quick_run_times_every_variant_and_checks_the_beams(tmp_path, monkeypatch):
    monkeypatch.setenv("GENREC_CACHE", str(tmp_path / "cache"))
    n = load_data(DataConfig(synthetic_users=120, synthetic_items=300)).num_items
    codes = np.random.default_rng(0).integers(0, 8, (n, 2))
    table = tmp_path / "sid_table.parquet"
    SIDTable.build(np.arange(1, n + 1), codes, [8, 8], quantizer="toy").save(table)
    mod = load_benchmark("tiger_speed")
    import common  # the benchmarks' helper module, importable once a benchmark is loaded

    monkeypatch.setattr(common, "RESULTS", tmp_path / "results")
    rec = mod.main(["--quick", "--data", "", "--sid-table", str(table), "--name", "quick", "--set",
                    "data.synthetic_users=120", "data.synthetic_items=300", "train.batch_size=32",
                    "model.d_model=32", "model.num_heads=2", "model.head_dim=16", "model.d_ff=64",
                    "model.num_user_buckets=16", "--profile", "2"])
    train, beam = rec["metrics"]["train"], rec["metrics"]["beam"]
    assert set(train) == set(mod.VARIANTS)
    for m in train.values():
        assert m["cpu_ms_per_step_mean"] > 0 and np.isfinite(m["loss_last3"])
    assert train["reference"]["cpu_speedup_mean"] == 1.0
    assert beam["users_with_identical_lists"] == beam["users"] > 0 and beam["identical_evaluation_ranks"]
    assert 0.0 <= rec["metrics"]["encoder_padding_share"] < 1.0
    prof = rec["metrics"]["profile"]  # --profile: where each variant's CPU time goes
    assert set(prof) == set(mod.VARIANTS) and all(p["profiled_steps"] == 2 for p in prof.values())
    for p in prof.values():
        assert 0.0 < p["shares"]["matmul"] < 1.0 and p["bound_if_matmuls_were_free"] > 1.0
        assert sum(p["shares"].values()) <= 1.0 + 1e-9
    assert_saved_record(tmp_path / "results" / "quick.json")
