"""BENCHMARKS.md's generated tables must equal what benchmarks/results/*.json say."""

import json
import subprocess
import sys
from pathlib import Path

from tests.conftest import load_benchmark

ROOT = Path(__file__).resolve().parents[2]


def test_benchmarks_md_matches_the_json_records():
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "report.py"), "--check"], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr


def test_every_result_records_its_provenance():
    for p in sorted((ROOT / "benchmarks" / "results").glob("*.json")):
        rec = json.loads(p.read_text())
        for key in ("dataset", "model", "protocol", "metrics", "command", "date", "commit"):
            assert key in rec, f"{p.name} lacks '{key}'"
        assert rec["command"].startswith("python benchmarks/"), p.name


def test_accuracy_ablation_names_drop_whole_shared_words():
    """benchmarks/accuracy.py names a run recipe+ablation; the shared prefix is cut at dashes, never mid-word."""
    mod = load_benchmark("accuracy")
    assert mod.ablation_suffix("glass-ml100k-cpu", "glass-ml100k-cr") == "cr"
    assert mod.ablation_suffix("glass-ml100k-cpu", "glass-ml100k-tiger-long") == "tiger-long"
    assert mod.ablation_suffix("glass-taobao", "glass-ml100k-cpu") == "ml100k-cpu"
    assert mod.ablation_suffix("glass-ml100k", "glass-ml100k") == "ml100k"  # never an empty suffix


def test_report_says_where_each_records_seeds_trained():
    """GPU and CPU train seconds sit in one table; the 'trained on' column keeps them from being compared."""
    mod = load_benchmark("report")
    gpu = "NVIDIA H100 80GB HBM3"
    assert mod.trained_on({"machine": {}, "per_seed": [{"device": gpu}] * 3}) == "H100"
    assert mod.trained_on({"machine": {}, "per_seed": [{}, {"device": gpu}, {"device": gpu}]}) == "cpu x1, H100 x2"
    assert mod.trained_on({"machine": {"gpu": gpu}, "per_seed": [{}]}) == "H100"  # older record written on a GPU
