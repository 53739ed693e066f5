"""benchmarks/peer_recbole.py: the RecBole atomic files hold genrec's leave-one-out split, the check catches a
file that does not, the time-to-quality rule, and a quick run of genrec's side without RecBole installed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from genrec.data.schema import load_dataset
from genrec.data.sequences import UserSequences
from genrec.data.splits import leave_one_out
from tests.conftest import load_benchmark

ROOT = Path(__file__).resolve().parents[2]
RECBOLE_PYTHON = ROOT / ".bench-env" / "recbole" / "bin" / "python"


@pytest.fixture
def files(toy_dir: Path, tmp_path: Path):
    """The toy dataset's split written as RecBole files (history window 5, shorter than most users' histories)."""
    rf = load_benchmark("recbole_files")
    ds = load_dataset(toy_dir)
    seqs = UserSequences.from_interactions(ds.interactions)
    split = leave_one_out(seqs)
    counts = rf.write_recbole_files(seqs, split, tmp_path / "work", "toy", 5)
    return rf, ds, seqs, split, counts, tmp_path / "work"


def _by_user(ds) -> dict[int, list[int]]:
    """Each user's items in time order, straight from the interactions table."""
    out: dict[int, list[int]] = {}
    for u, i in zip(ds.interactions.user_id.tolist(), ds.interactions.item_id.tolist()):
        out.setdefault(u, []).append(i)
    return out


def test_files_hold_the_leave_one_out_targets_and_windows(files):
    rf, ds, seqs, split, counts, work = files
    items = _by_user(ds)
    test = {u: (h, t) for u, h, t in rf.read_recbole_file(work / "toy" / "toy.test.inter")}
    valid = {u: (h, t) for u, h, t in rf.read_recbole_file(work / "toy" / "toy.valid.inter")}
    train = rf.read_recbole_file(work / "toy" / "toy.train.inter")
    assert set(test) == set(valid) == set(items)
    for u, seq in items.items():
        assert test[u] == (seq[-6:-1], seq[-1])  # the last item, after the 5 before it
        assert valid[u] == (seq[-7:-2], seq[-2])
    assert counts == {"train": sum(len(s) - 3 for s in items.values()), "valid": len(items), "test": len(items)}
    u0 = train[0][0]
    assert [t for u, _, t in train if u == u0] == items[u0][1:-2]  # every training target, never valid or test
    res = rf.check_files(seqs, split, work, "toy", 5, ds.num_items)
    assert res["ok"] and res["users"] == len(items) and res["items"] == ds.num_items
    assert "OK" in rf.describe_check(res)


@pytest.mark.parametrize("part,row,key", [("valid", 3, "valid_targets_identical"),
                                          ("test", 7, "test_targets_identical"),
                                          ("train", 11, "train_targets_identical")])
def test_the_check_catches_a_changed_target(files, part, row, key):
    rf, ds, seqs, split, _, work = files
    path = work / "toy" / f"toy.{part}.inter"
    lines = path.read_text().splitlines()
    u, h, t = lines[row + 1].split("\t")
    lines[row + 1] = f"{u}\t{h}\t{int(t) % ds.num_items + 1}"  # another item of the catalogue
    path.write_text("\n".join(lines) + "\n")
    res = rf.check_files(seqs, split, work, "toy", 5, ds.num_items)
    assert res[key] is False and res["ok"] is False
    assert "MISMATCH" in rf.describe_check(res)


def test_the_check_catches_a_shifted_history(files):
    rf, ds, seqs, split, _, work = files
    path = work / "toy" / "toy.test.inter"
    lines = path.read_text().splitlines()
    u, h, t = lines[1].split("\t")
    lines[1] = f"{u}\t{' '.join(h.split()[1:])}\t{t}"  # one item short of the window
    path.write_text("\n".join(lines) + "\n")
    res = rf.check_files(seqs, split, work, "toy", 5, ds.num_items)
    assert res["test_targets_identical"] and not res["test_histories_identical"] and not res["ok"]


def test_a_user_subset_renumbers_items_and_keeps_each_sequence(toy_dir, tmp_path):
    rf = load_benchmark("recbole_files")
    ds = load_dataset(toy_dir)
    sub = load_dataset(rf.subset_dataset(ds, 30, tmp_path / "sub"))
    full, part = _by_user(ds), _by_user(sub)
    assert len(part) == 30
    used = sorted({i for u in range(1, 31) for i in full[u]})
    assert sub.num_items == len(used) and int(sub.interactions.item_id.max()) == len(used)
    ext = sub.item_external_ids()  # the subset's external item id is the original internal id
    for u in range(1, 31):
        assert [int(ext[i]) for i in part[u]] == full[u]


def test_time_to_quality_at_the_target_or_the_best_value_both_reach():
    peer = load_benchmark("peer_recbole")
    rb = [(100.0, 60.0, 0.02), (200.0, 120.0, 0.041), (300.0, 180.0, 0.045)]
    gr = [(10.0, 8.0, 0.03), (20.0, 16.0, 0.04), (30.0, 24.0, 0.039)]
    t = peer.time_to_quality({"recbole": rb, "genrec": gr}, 0.0399)
    assert t["target_reached_by_both"] and t["level"] == 0.0399
    assert t["seconds"] == {"recbole": 200.0, "genrec": 20.0} and t["epochs"] == {"recbole": 2, "genrec": 2}
    assert t["ratio"] == pytest.approx(10.0) and t["cpu_ratio"] == pytest.approx(7.5)
    low = [(10.0, 8.0, 0.01), (20.0, 16.0, 0.035), (30.0, 24.0, 0.03)]  # genrec never reaches the target
    t = peer.time_to_quality({"recbole": rb, "genrec": low}, 0.0399)
    assert not t["target_reached_by_both"] and t["level"] == 0.035
    assert t["seconds"] == {"recbole": 200.0, "genrec": 20.0}  # RecBole's first validation at or above 0.035


def test_genrec_never_imports_recbole():
    for p in (ROOT / "src" / "genrec").rglob("*.py"):
        assert "recbole" not in p.read_text().lower(), p


def test_quick_run_of_genrecs_side_without_recbole(toy_dir, tmp_path):
    """The whole command on a tiny dataset, RecBole's environment absent: the files, the check, genrec's timed run
    with unfiltered validation, and a record that says RecBole did not run."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    rec_path = tmp_path / "record.json"
    cmd = [sys.executable, "benchmarks/peer_recbole.py", "--quick", "--data", str(toy_dir), "--threads", "1",
           "--env", str(tmp_path / "no-env"), "--work", str(tmp_path / "work"), "--record", str(rec_path),
           "--set", "model.d_model=16", "model.num_layers=1", "objective.num_negatives=16"]
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "history NOT excluded" in r.stdout and "-> OK" in r.stdout
    assert "RecBole: skipped (no environment" in r.stdout
    rec = json.loads(rec_path.read_text())
    assert rec["protocol"]["evaluation"].startswith("full catalogue, history NOT excluded")
    assert rec["protocol"]["split_check"]["ok"] and rec["time_to_quality_ratio"] is None
    g = rec["runs"]["genrec"]
    assert len(g["curve"]) == len(g["train_seconds"]) == len(g["valid_seconds"]) == 1  # --quick: one epoch
    assert "eval.exclude_history=false" in g["config"]["overrides"]
    assert g["peak_rss_mib"] > 0 and np.isfinite(g["test"]["ndcg@10"])
    assert rec["command"].startswith("python benchmarks/peer_recbole.py --quick")
    assert not (tmp_path / "work" / "saved").exists()  # nothing of RecBole's was run


@pytest.mark.skipif(not RECBOLE_PYTHON.exists(),
                    reason="RecBole's environment is absent (python benchmarks/peer_recbole.py --setup makes it)")
def test_recbole_loads_the_files_as_written(files, tmp_path):
    """RecBole's own dataset, read back to tokens, equals the files user by user (one short epoch)."""
    _, _, _, _, _, work = files
    settings = {"max_len": 5, "num_layers": 1, "num_heads": 1, "d_model": 16, "d_ff": 16, "dropout": 0.1,
                "lr": 1e-3, "patience": 10, "train_batch_size": 256, "eval_batch_size": 256, "seed": 1, "threads": 1}
    (tmp_path / "s.json").write_text(json.dumps(settings))
    cmd = [str(RECBOLE_PYTHON), str(ROOT / "benchmarks" / "recbole_driver.py"), "--data-dir", str(work),
           "--dataset", "toy", "--settings", str(tmp_path / "s.json"), "--epochs", "1", "--result",
           str(tmp_path / "r.json")]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr[-3000:]
    rec = json.loads((tmp_path / "r.json").read_text())
    for part in ("valid", "test"):
        assert rec["check"][part]["targets_identical"] and rec["check"][part]["histories_identical"]
    assert rec["check"]["items"] == 60 and len(rec["curve"]) == 1 and rec["test"]["ndcg@10"] >= 0


def test_an_earlier_recbole_record_is_compared_and_named_so(toy_dir, tmp_path):
    """--recbole-result: RecBole's record of an earlier invocation is compared with a fresh genrec run, genrec stops
    at RecBole's best validation value (below the target), and the record says where RecBole's numbers come from."""
    fake = {"train_seconds": [30.0, 30.0], "valid_seconds": [3.0, 3.0], "peak_rss_mib": 900.0,
            "curve": [[33.0, 20.0, 0.001], [66.0, 40.0, 0.002]], "test": {"ndcg@10": 0.002},
            "check": {"users": 120, "items": 60}}
    (tmp_path / "rb.json").write_text(json.dumps(fake))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    rec_path = tmp_path / "record.json"
    cmd = [sys.executable, "benchmarks/peer_recbole.py", "--quick", "--data", str(toy_dir), "--threads", "1",
           "--env", str(tmp_path / "no-env"), "--recbole-result", str(tmp_path / "rb.json"), "--record",
           str(rec_path), "--set", "model.d_model=16", "model.num_layers=1", "objective.num_negatives=16"]
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "genrec stops at it" in r.stdout and "| seconds_per_epoch | 30.00 |" in r.stdout
    rec = json.loads(rec_path.read_text())
    assert rec["protocol"]["recbole_run"].startswith("an earlier invocation")
    ttq = rec["metrics"]["time_to_quality"]
    assert ttq["level"] == min(0.002, rec["metrics"]["best_valid_ndcg@10"]["genrec"])
    assert rec["metrics"]["peak_rss_mib"]["recbole"] == 900.0 and rec["metrics"]["seconds_per_epoch"]["ratio"] > 0
