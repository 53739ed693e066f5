import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from genrec.config import config_from_dict
from genrec.errors import CheckpointError, ConfigError
from genrec.runs.open import open_run
from genrec.train.run import recommend, train_run
from genrec.train.trainer import Trainer
from tests.conftest import tiny_cfg


def weights(run_dir: Path) -> dict[str, torch.Tensor]:
    ptr = (run_dir / "checkpoints" / "latest").read_text().strip()
    return load_file(str(run_dir / "checkpoints" / ptr / "model.safetensors"))


@pytest.mark.parametrize("model", ["sasrec", "hstu"])
def test_training_improves_validation_and_writes_results(toy, tmp_path, model):
    cfg = config_from_dict(tiny_cfg(model, train={"epochs": 6, "lr": 0.01}))
    res = train_run(cfg, tmp_path / "run", dataset=toy)
    m = res["metrics"]
    assert m["num_queries"] == 120
    assert m["hr@10"] > 0.3  # the toy's next item is predictable; random would give ~10/60
    assert res["protocol"]["candidates"] == "full catalogue" and res["protocol"]["tie_order"] == "stable"
    assert res["data_fingerprint"] == toy.fingerprint
    saved = json.loads((tmp_path / "run" / "results" / "test.json").read_text())
    assert saved["metrics"] == m
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert any("valid/ndcg@10" in line for line in lines)


def test_resume_after_stop_equals_uninterrupted_run(toy, tmp_path):
    raw = tiny_cfg("hstu", train={"epochs": 3, "checkpoint_every": 2})
    full = Trainer(config_from_dict(raw), tmp_path / "full", toy)
    full.fit()
    # stop mid-epoch after 5 steps, then resume in a fresh Trainer (as after a kill)
    raw_stop = tiny_cfg("hstu", train={"epochs": 3, "checkpoint_every": 2, "max_steps": 5})
    Trainer(config_from_dict(raw_stop), tmp_path / "part", toy).fit()
    assert json.loads((tmp_path / "part" / "checkpoints" / (tmp_path / "part" / "checkpoints" / "latest")
                       .read_text().strip() / "state.json").read_text())["global_step"] == 5
    Trainer(config_from_dict(raw), tmp_path / "part", toy).fit()
    a, b = weights(tmp_path / "full"), weights(tmp_path / "part")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_time_budget_stops_with_a_checkpoint_and_repeated_calls_finish_the_same_run(toy, tmp_path, monkeypatch):
    """train.max_seconds: each call stops once its budget is spent (here a fake clock: 0.5 s per step), says so,
    and the same command repeated ends with the weights of one uninterrupted run."""
    raw = tiny_cfg("hstu", train={"epochs": 2})
    train_run(config_from_dict(raw), tmp_path / "full", dataset=toy)
    clock = {"t": 1e9}

    def fake_time() -> float:
        clock["t"] += 0.5
        return clock["t"]

    monkeypatch.setattr("genrec.train.base.time.time", fake_time)
    budget = config_from_dict(tiny_cfg("hstu", train={"epochs": 2, "max_seconds": 2.0}))
    calls, res = 0, {}
    while "metrics" not in res:
        res = train_run(budget, tmp_path / "part", dataset=toy)
        calls += 1
        assert calls < 50
        if "metrics" not in res:
            assert res["stopped_early_by"] == "train.max_seconds" and not res["summary"]["finished"]
    assert calls > 2
    a, b = weights(tmp_path / "full"), weights(tmp_path / "part")
    for k in a:
        assert torch.equal(a[k], b[k]), k
    with pytest.raises(ConfigError, match="train.max_seconds must be >= 0"):
        config_from_dict(tiny_cfg("hstu", train={"max_seconds": -1}))


def test_killed_process_resumes_exactly(toy_dir, tmp_path):
    """SIGKILL a real training process after its first checkpoint; the resumed run matches a clean one."""
    # one thread: bit-exact comparisons must not depend on how the machine's load splits intra-op work
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2] / "src"), "OMP_NUM_THREADS": "1"}
    sets = ["train.num_threads=1", "model.name=sasrec", "model.d_model=16", "model.num_layers=1", "data.max_len=20",
            "train.epochs=12", "train.batch_size=16", "train.checkpoint_every=3", "train.progress=false",
            "train.tensorboard=false", "train.patience=0", "objective.num_negatives=8", f"data.path={toy_dir}"]
    cmd = [sys.executable, "-m", "genrec.cli", "train", "--out", str(tmp_path / "killed"), "--set", *sets]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    latest = tmp_path / "killed" / "checkpoints" / "latest"
    deadline = time.time() + 60
    while time.time() < deadline and not latest.exists() and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert latest.exists(), proc.stderr.read().decode()[-2000:]
    state = json.loads((latest.parent / latest.read_text().strip() / "state.json").read_text())
    assert not state["finished"], "the kill came too late to interrupt the run"
    for out in ("killed", "clean"):
        r = subprocess.run([sys.executable, "-m", "genrec.cli", "train", "--out", str(tmp_path / out), "--set", *sets],
                           env=env, capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr[-2000:]
    a, b = weights(tmp_path / "killed"), weights(tmp_path / "clean")
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_run_folder_refuses_another_model(toy, tmp_path):
    Trainer(config_from_dict(tiny_cfg("sasrec", train={"epochs": 1})), tmp_path / "r", toy).fit()
    with pytest.raises(CheckpointError, match="model"):
        Trainer(config_from_dict(tiny_cfg("hstu", train={"epochs": 1})), tmp_path / "r", toy)


def test_corrupt_checkpoint_is_a_clear_error(toy, tmp_path):
    Trainer(config_from_dict(tiny_cfg("sasrec", train={"epochs": 1})), tmp_path / "r", toy).fit()
    ck = tmp_path / "r" / "checkpoints"
    (ck / (ck / "latest").read_text().strip() / "model.safetensors").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="safetensors"):
        Trainer(config_from_dict(tiny_cfg("sasrec", train={"epochs": 2})), tmp_path / "r", toy)


def test_recommend_matches_evaluation_ranking(toy_dir, tmp_path):
    from genrec.data.schema import load_dataset

    ds = load_dataset(toy_dir)
    cfg = config_from_dict(tiny_cfg("hstu", data={"path": str(toy_dir)}, train={"epochs": 2}))
    train_run(cfg, tmp_path / "r", dataset=ds)
    run = open_run(tmp_path / "r")
    row = 0
    sl = run.seqs.row(row)
    items, times = run.seqs.items[sl], run.seqs.timestamps[sl]
    recs = recommend(run, items[:-1].tolist(), times[:-1].tolist(), k=60 - len(set(items[:-1])),
                     query_time=int(times[-1]))
    rec_ids = [i for i, _ in recs]
    assert not set(rec_ids) & set(items[:-1].tolist())
    # the evaluation code's rank of the held-out item equals its position in the recommendation list
    import numpy as np

    from genrec.data.splits import EvalSamples
    from genrec.eval.retrieval import rank_targets

    rank = rank_targets(run.model, run.seqs, EvalSamples(np.array([row]), np.array([len(items) - 1])))[0]
    assert rec_ids.index(int(items[-1])) == rank


def test_fused_adamw_is_a_switch_that_takes_the_default_step(toy, tmp_path):
    from genrec.config import TrainConfig
    from genrec.nn.optim import build_optimizer

    steps = {}
    for fused in (False, True):
        torch.manual_seed(0)
        lin = torch.nn.Linear(8, 4)
        opt = build_optimizer(lin.parameters(), TrainConfig(lr=0.01, fused=fused))
        assert bool(opt.defaults.get("fused")) == fused
        for _ in range(3):
            opt.zero_grad()
            lin(torch.ones(2, 8)).square().sum().backward()
            opt.step()
        steps[fused] = lin.weight.detach().clone()
    torch.testing.assert_close(steps[True], steps[False], rtol=0, atol=1e-6)  # the same update, rounded its way
    tr = Trainer(config_from_dict(tiny_cfg("sasrec", train={"epochs": 1, "fused": True})), tmp_path / "f", toy)
    assert tr.optimizer.defaults["fused"] and tr.fit()["finished"]


@pytest.mark.parametrize("model", ["sasrec", "hstu"])
def test_history_negatives_lower_the_unfiltered_rank_of_history_items(toy_dir, tmp_path, model):
    """With the user's own items as negatives the trained model puts fewer of them in its unfiltered top 10,
    and still learns the toy's next-item rule."""
    from genrec.data.schema import load_dataset

    ds, shown = load_dataset(toy_dir), []
    for name, objective in (("a", {}), ("b", {"history_negatives": True})):
        cfg = tiny_cfg(model, data={"path": str(toy_dir)}, train={"epochs": 8, "lr": 0.01}, objective=objective)
        res = train_run(config_from_dict(cfg), tmp_path / name, dataset=ds)
        assert res["metrics"]["hr@10"] > 0.5
        run = open_run(tmp_path / name)
        rows = [run.seqs.items[run.seqs.row(r)].tolist() for r in range(120)]
        shown.append(sum(len(set(h) & {i for i, _ in recommend(run, h, None, k=10, exclude_history=False)})
                         for h in rows))
    assert shown[1] < shown[0], shown
