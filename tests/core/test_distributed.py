"""Two CPU processes under torchrun (gloo) follow the same loss curve as one process with the same global batch,
for every kind of trainer the shared loop runs: a retriever, a ranker and a generator."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from genrec.data.schema import write_dataset
from genrec.sid.build import TABLE_FILE
from tests.hpgr.conftest import make_ctr_toy
from tests.tiger.conftest import TINY_MODEL, toy_sequences, toy_table

COMMON = ["train.progress=false", "train.tensorboard=false", "train.patience=0", "train.num_threads=1",
          "train.device=cpu"]
SETS = ["model.name=hstu", "model.d_model=16", "model.num_layers=1", "model.dropout=0.0",
        "model.linear_dropout=0.0", "data.max_len=20", "train.epochs=2", "train.batch_size=32",
        "objective.num_negatives=16", "objective.shared_negatives=true", *COMMON]
RANKER = ["model.name=hstu_ranker", "model.d_model=16", "model.num_layers=1", "model.num_heads=1",
          "model.dropout=0.0", "model.linear_dropout=0.0", "data.max_len=16", "ranking.labels=ratings",
          "train.epochs=2", "train.batch_size=64", "train.lr=0.002", "train.seed=3", *COMMON]
GENERATOR = [f"model.{k}={v}" for k, v in TINY_MODEL.items()] + [
    "data.max_len=20", "generator.warmup_steps=4", "generator.beam_size=5", "generator.test_other_decoding=false",
    "eval.ks=[1,5]", "train.early_stop_metric=ndcg@5", "train.epochs=3", "train.batch_size=16", "train.lr=0.003",
    *COMMON]


def losses(run: Path) -> list[float]:
    out = []
    for line in (run / "metrics.jsonl").read_text().splitlines():
        rec = json.loads(line)
        if "train_loss" in rec:
            out.append(rec["train_loss"])
    return out


def one_and_two_processes(tmp_path: Path, sets: list[str]) -> tuple[Path, Path]:
    """``genrec train`` in one process and under torchrun with two (gloo), into ``one`` and ``two``."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2] / "src"), "OMP_NUM_THREADS": "1"}
    single = subprocess.run([sys.executable, "-m", "genrec.cli", "train", "--out", str(tmp_path / "one"),
                             "--set", *sets], env=env, capture_output=True, text=True, timeout=300)
    assert single.returncode == 0, single.stderr[-3000:]
    ddp = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                          "-m", "genrec.cli", "train", "--out", str(tmp_path / "two"), "--set", *sets],
                         env=env, capture_output=True, text=True, timeout=300)
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    return tmp_path / "one", tmp_path / "two"


def assert_same_curve(one: Path, two: Path, min_steps: int = 5) -> None:
    a, b = losses(one), losses(two)
    assert len(a) == len(b) > min_steps
    for x, y in zip(a, b):
        assert abs(x - y) <= 1e-4 * max(1.0, abs(x)), (a, b)
    assert b[-1] < b[0]  # and it actually learned something


def assert_one_results_record(one: Path, two: Path) -> dict:
    """The two-process run wrote one results record, with the single-process run's protocol and metrics."""
    assert [p.name for p in (two / "results").iterdir()] == ["test.json"]
    ra, rb = (json.loads((r / "results" / "test.json").read_text()) for r in (one, two))
    assert ra["protocol"] == rb["protocol"] and ra["metrics"].keys() == rb["metrics"].keys()
    for k, v in ra["metrics"].items():
        assert rb["metrics"][k] == pytest.approx(v, abs=1e-3), k
    return rb


@pytest.mark.slow
def test_ddp_two_processes_match_single_process(toy_dir, tmp_path):
    one, two = one_and_two_processes(tmp_path, [*SETS, f"data.path={toy_dir}"])
    assert_same_curve(one, two)


@pytest.mark.slow
def test_ddp_ranker_matches_single_process_and_writes_one_record(tmp_path):
    ds = make_ctr_toy()
    data = write_dataset(tmp_path / "ctr", ds.interactions, ds.items, ds.manifest)
    one, two = one_and_two_processes(tmp_path, [*RANKER, f"data.path={data}"])
    assert_same_curve(one, two)
    rec = assert_one_results_record(one, two)
    assert rec["protocol"]["task"] == "ranking (CTR)" and rec["metrics"]["auc"] > 0.6


@pytest.mark.slow
def test_ddp_generator_matches_single_process_and_writes_one_record(tmp_path):
    ds = toy_sequences(num_users=40)
    data = write_dataset(tmp_path / "seqs", ds.interactions, ds.items, ds.manifest)
    (tmp_path / "sid").mkdir()
    toy_table().save(tmp_path / "sid" / TABLE_FILE)
    one, two = one_and_two_processes(tmp_path, [*GENERATOR, f"data.path={data}", f"sid.table={tmp_path / 'sid'}"])
    assert_same_curve(one, two)
    rec = assert_one_results_record(one, two)
    assert rec["protocol"]["task"] == "next-item generation"
    lr = [json.loads(x)["lr"] for x in (two / "metrics.jsonl").read_text().splitlines() if "lr" in x]
    assert lr[0] == 0.003 and lr[-1] < lr[0]  # the inverse-sqrt schedule runs under DDP too
