"""One writer per run folder: a second training into the same ``--out`` is refused in one line, a dead writer's
lock never blocks, the lock is given back when training ends, and a refused ``torchrun`` job ends on every rank."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from genrec.cli import main
from genrec.config import config_from_dict
from genrec.errors import CheckpointError
from genrec.runs.lock import acquire, release
from genrec.train.trainer import Trainer
from tests.conftest import tiny_cfg

pytestmark = pytest.mark.reliability

SRC = str(Path(__file__).resolve().parents[2] / "src")
ENV = {**os.environ, "PYTHONPATH": SRC, "OMP_NUM_THREADS": "1"}
HOLD = "import sys; from genrec.runs.lock import acquire; acquire(sys.argv[1]); print('held', flush=True); sys.stdin.read()"
SETS = ["train.num_threads=1", "model.name=sasrec", "model.d_model=16", "model.num_layers=1", "data.max_len=20",
        "train.batch_size=16", "train.progress=false", "train.tensorboard=false", "train.patience=0",
        "objective.num_negatives=8", "train.device=cpu"]


def hold_lock(run_dir: Path) -> subprocess.Popen:
    """Another process that holds ``run_dir``'s lock until its stdin closes."""
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(run_dir)], env=ENV, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def can_lock_elsewhere(run_dir: Path) -> bool:
    """Whether another process could take the lock now."""
    code = "import sys; from genrec.runs.lock import acquire; acquire(sys.argv[1])"
    return subprocess.run([sys.executable, "-c", code, str(run_dir)], env=ENV, capture_output=True).returncode == 0


def test_a_second_writer_is_refused_in_one_line(toy_dir, tmp_path, capsys):
    out = tmp_path / "run"
    holder = hold_lock(out)
    try:
        code = main(["train", "--out", str(out), "--set", *SETS, "train.epochs=1", f"data.path={toy_dir}"])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(err) == 1, err
        assert "already training into this run folder" in err[0] and f"process {holder.pid}" in err[0]
        assert not (out / "checkpoints").exists() and not (out / "config.json").exists()  # nothing was written
    finally:
        holder.communicate("")
    assert main(["train", "--out", str(out), "--set", *SETS, "train.epochs=1", f"data.path={toy_dir}"]) == 0


def test_the_lock_of_a_killed_process_does_not_block(tmp_path):
    holder = hold_lock(tmp_path / "run")
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    assert (tmp_path / "run" / ".lock").read_text() == str(holder.pid)  # the file stays; the lock went with it
    path = acquire(tmp_path / "run")
    assert (tmp_path / "run" / ".lock").read_text() == str(os.getpid())
    release(path)


def test_the_lock_is_held_while_training_and_given_back_at_the_end(toy, tmp_path):
    out = tmp_path / "run"
    tr = Trainer(config_from_dict(tiny_cfg("sasrec", train={"epochs": 1})), out, toy)
    assert not can_lock_elsewhere(out)
    tr.fit()
    assert can_lock_elsewhere(out)
    # the same process may open the folder again (a script building trainers in turn)
    Trainer(config_from_dict(tiny_cfg("sasrec", train={"epochs": 2})), out, toy).fit()


def test_the_lock_is_reentrant_in_one_process_only(tmp_path):
    a = acquire(tmp_path / "run")
    b = acquire(tmp_path / "run")
    release(b)
    assert not can_lock_elsewhere(tmp_path / "run")
    release(a)
    assert can_lock_elsewhere(tmp_path / "run")
    holder = hold_lock(tmp_path / "run")
    try:
        with pytest.raises(CheckpointError, match=f"process {holder.pid} is already training"):
            acquire(tmp_path / "run")
    finally:
        holder.communicate("")


@pytest.mark.slow
def test_two_identical_trainings_at_once_never_end_in_a_traceback(toy_dir, tmp_path):
    """Both started together into one folder: one trains, the other is refused in one line (or, when the first
    is already done, resumes its finished run); the folder's latest checkpoint stays loadable."""
    cmd = [sys.executable, "-m", "genrec.cli", "train", "--out", str(tmp_path / "run"), "--set", *SETS,
           "train.epochs=6", "train.checkpoint_every=2", f"data.path={toy_dir}"]
    procs = [subprocess.Popen(cmd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    codes = sorted(p.returncode for p in procs)
    for _, err in outs:
        assert "Traceback" not in err, err
    assert codes in ([0, 0], [0, 2]), outs
    if codes == [0, 2]:
        refused = next(err for p, (_, err) in zip(procs, outs) if p.returncode == 2)
        assert "already training into this run folder" in refused
    assert main(["evaluate", str(tmp_path / "run")]) == 0


@pytest.mark.slow
def test_a_refused_torchrun_job_ends_on_every_rank(toy_dir, tmp_path):
    out = tmp_path / "run"
    holder = hold_lock(out)
    try:
        t0 = time.time()
        r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                            "-m", "genrec.cli", "train", "--out", str(out), "--set", *SETS, "train.epochs=1",
                            f"data.path={toy_dir}"], env=ENV, capture_output=True, text=True, timeout=240)
    finally:
        holder.communicate("")
    assert r.returncode != 0 and time.time() - t0 < 200
    assert "genrec: error:" in r.stderr and "already training into this run folder" in r.stderr, r.stderr[-3000:]


def test_evaluation_takes_no_lock(toy_dir, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--out", str(out), "--set", *SETS, "train.epochs=1", f"data.path={toy_dir}"]) == 0
    holder = hold_lock(out)  # as while a longer training continues the run
    try:
        assert main(["evaluate", str(out)]) == 0
    finally:
        holder.communicate("")


def test_pretrain_no_resume_takes_the_lock_before_it_deletes_anything(tmp_path):
    """``genrec pretrain --no-resume`` (resume=False) empties a stopped stage-1 folder to start over: it must not
    do so while another process trains into that folder (before, the folder was emptied, then refused)."""
    from genrec.config import TrainConfig
    from genrec.train.pretrain import parse_pretrain_config, pretrain_run
    from tests.hpgr.test_hpgr_stages import TINY_PRETRAIN, _dataset

    ds, out = _dataset(), tmp_path / "stage1"
    cfg = parse_pretrain_config({**TINY_PRETRAIN, "max_steps": 0, "epochs": 2})
    loop = TrainConfig(max_steps=1, progress=False, tensorboard=False)
    assert not pretrain_run(ds, 1_600_000_000, cfg, out, loop=loop)["finished"]  # stopped: a checkpoint to lose
    before = sorted(p.name for p in (out / "checkpoints").iterdir())
    holder = hold_lock(out)
    try:
        with pytest.raises(CheckpointError, match="already training into this run folder"):
            pretrain_run(ds, 1_600_000_000, cfg, out, resume=False, loop=loop)
        assert sorted(p.name for p in (out / "checkpoints").iterdir()) == before and (out / "config.json").exists()
    finally:
        holder.communicate("")
    pretrain_run(ds, 1_600_000_000, cfg, out, resume=False, loop=loop)  # alone, it starts over
    assert can_lock_elsewhere(out)  # and gives the lock back
