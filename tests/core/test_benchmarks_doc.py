"""BENCHMARKS.md's generated tables must equal what benchmarks/results/*.json say."""

import json
import subprocess
import sys
from pathlib import Path

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
