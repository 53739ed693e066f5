"""benchmarks/beam_decode.py --quick: both models decode the same synthetic users both ways, the lists agree, and
the record carries its provenance."""

from __future__ import annotations

from tests.conftest import assert_saved_record, load_benchmark


def test_quick_run_times_both_paths_and_compares_their_lists(tmp_path, monkeypatch):
    mod = load_benchmark("beam_decode")
    import common  # the benchmarks' helper module, importable once a benchmark is loaded

    monkeypatch.setattr(common, "RESULTS", tmp_path / "results")
    rec = mod.main(["--quick", "--name", "quick", "--gamer-set", "model.num_layers=2", "model.cross_layers=1",
                    "model.injection_layers=1", "--tiger-set", "model.num_encoder_layers=1",
                    "model.num_decoder_layers=1"])
    assert set(rec["metrics"]) == {"gamer", "tiger"}
    for m in rec["metrics"].values():
        assert m["users"] == 24 and m["users_with_identical_lists"] == 24
        assert m["max_rankwise_score_difference"] < 1e-6 * m["max_abs_score"] + 1e-5
        for k in ("wall", "cpu"):
            assert m[f"full_copy_{k}_ms_per_user"] > 0 and m[f"shared_{k}_ms_per_user"] > 0
            assert m[f"{k}_speedup"] == m[f"full_copy_{k}_ms_per_user"] / m[f"shared_{k}_ms_per_user"]
    assert rec["protocol"]["cases"]["gamer"]["prompt_tokens"] == 20 * 5 + 1  # 20 interactions of <b> c1..c4, <b>
    assert_saved_record(tmp_path / "results" / "quick.json")
