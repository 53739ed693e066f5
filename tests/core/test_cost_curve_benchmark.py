"""benchmarks/cost_curve.py --quick: both models train a step at each length in their own process, and the
ratios are computed from the points measured in that run."""

from __future__ import annotations

from tests.conftest import load_benchmark


def test_quick_curve_measures_both_models_at_each_length():
    rec = load_benchmark("cost_curve").main(["--quick"])
    curve = rec["metrics"]["by_history_length"]
    assert set(curve) == {"32", "64"}
    for c in curve.values():
        assert c["hstu_step_s"] > 0 and c["sasrec_step_s"] > 0 and c["hstu_peak_rss_mb"] > 0
        assert c["step_ratio_hstu_over_sasrec"] == c["hstu_step_s"] / c["sasrec_step_s"]
