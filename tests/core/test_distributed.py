"""Two CPU processes under torchrun (gloo) follow the same loss curve as one process with the same global batch."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SETS = ["model.name=hstu", "model.d_model=16", "model.num_layers=1", "model.dropout=0.0",
        "model.linear_dropout=0.0", "data.max_len=20", "train.epochs=2", "train.batch_size=32",
        "train.progress=false", "train.tensorboard=false", "train.patience=0", "objective.num_negatives=16",
        "objective.shared_negatives=true", "train.num_threads=1"]


def losses(run: Path) -> list[float]:
    out = []
    for line in (run / "metrics.jsonl").read_text().splitlines():
        rec = json.loads(line)
        if "train_loss" in rec:
            out.append(rec["train_loss"])
    return out


@pytest.mark.slow
def test_ddp_two_processes_match_single_process(toy_dir, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2] / "src"), "OMP_NUM_THREADS": "1"}
    sets = [*SETS, f"data.path={toy_dir}"]
    single = subprocess.run([sys.executable, "-m", "genrec.cli", "train", "--out", str(tmp_path / "one"),
                             "--set", *sets], env=env, capture_output=True, text=True, timeout=300)
    assert single.returncode == 0, single.stderr[-3000:]
    ddp = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                          "-m", "genrec.cli", "train", "--out", str(tmp_path / "two"), "--set", *sets],
                         env=env, capture_output=True, text=True, timeout=300)
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    a, b = losses(tmp_path / "one"), losses(tmp_path / "two")
    assert len(a) == len(b) > 5
    for x, y in zip(a, b):
        assert abs(x - y) <= 1e-4 * max(1.0, abs(x)), (a, b)
    # and it actually learned something
    assert b[-1] < b[0]
