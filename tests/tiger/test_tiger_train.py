"""Generator trainer: a tiny TIGER learns a deterministic next-item rule; resume is exact; run-folder checks."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from genrec.data.sequences import UserSequences
from genrec.data.splits import leave_one_out
from genrec.errors import CheckpointError
from genrec.eval.generation import history_matrix
from genrec.nn.optim import inverse_sqrt_lr
from genrec.sid import SIDTable
from genrec.train.generator import GeneratorOptions, GeneratorTrainer, TrainExamples
from tests.conftest import latest_state
from tests.tiger.conftest import next_item, tiny_cfg

OPTS = GeneratorOptions(warmup_steps=100_000, beam_size=5)


def test_examples_are_every_training_prefix(toy_data):
    split = leave_one_out(UserSequences.from_interactions(toy_data.interactions))
    ex = TrainExamples(split.train_end)
    assert len(ex) == int(np.maximum(split.train_end - 1, 0).sum())
    row0 = ex.ends[ex.rows == 0]
    assert row0.tolist() == list(range(1, int(split.train_end[0])))



def test_train_last_keeps_each_rows_most_recent_targets():
    train_end = np.array([0, 1, 2, 5, 9])
    ex = TrainExamples(train_end, last=3)
    assert ex.rows.tolist() == [2, 3, 3, 3, 4, 4, 4]
    assert ex.ends.tolist() == [1, 2, 3, 4, 6, 7, 8]  # targets ends[e] < train_end[row], the newest three
    full = TrainExamples(train_end)
    assert len(full) == 1 + 4 + 8 and TrainExamples(train_end, last=100).ends.tolist() == full.ends.tolist()

def test_lr_schedule_constant_then_inverse_sqrt():
    assert inverse_sqrt_lr(0, 0.01, 10_000) == 0.01 and inverse_sqrt_lr(9_999, 0.01, 10_000) == 0.01
    assert inverse_sqrt_lr(39_999, 0.01, 10_000) == pytest.approx(0.005)
    assert inverse_sqrt_lr(0, 1.0, 10, linear_warmup_steps=4) == pytest.approx(0.25)


def test_tiny_tiger_learns_the_next_item_rule(tmp_path, toy_data, table):
    cfg = tiny_cfg(epochs=60, batch_size=64, lr=1e-2, eval_every=60)
    tr = GeneratorTrainer(cfg, tmp_path / "run", toy_data, table, OPTS)
    summary = tr.fit()
    assert summary["finished"] and summary["best_epoch"] == 60
    ex = tr.examples
    hist = history_matrix(tr.seqs, ex.rows, ex.ends, 20)
    res = tr.model.generate(torch.from_numpy(hist), tr.seqs.user_ids[ex.rows], beam_size=5, k=1)
    last = hist[np.arange(len(hist)), (hist > 0).sum(1) - 1]
    expect = np.array([next_item(int(i)) for i in last])
    acc = float((res.items[:, 0].numpy() == expect).mean())
    assert acc > 0.9, acc
    assert bool(res.valid.all())
    rec = tr.evaluate("test")
    assert rec["metrics"]["hr@1"] > 0.6 and rec["protocol"]["exclude_history"] is False
    free = tr.evaluate("test", constrained=False)
    assert 0.0 <= free["metrics"]["invalid_rate"] <= 1.0
    lines = [json.loads(s) for s in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert any("valid/ndcg@5" in r for r in lines)


@pytest.mark.parametrize("kernels", ["reference", "fused"])  # fused: its dropout masks follow torch's RNG state
def test_resume_reproduces_an_uninterrupted_run(tmp_path, toy_data, table, kernels):
    model = {"dropout": 0.2, "kernels": kernels}
    cfg = tiny_cfg(model=model, epochs=2, batch_size=32, eval_every=1)
    ref = GeneratorTrainer(cfg, tmp_path / "a", toy_data, table, OPTS)
    ref.fit()
    steps = ref.state["global_step"]
    cut = tiny_cfg(model=model, epochs=2, batch_size=32, eval_every=1, max_steps=steps // 2 + 1)
    first = GeneratorTrainer(cut, tmp_path / "b", toy_data, table, OPTS)
    assert not first.fit()["finished"]
    assert latest_state(tmp_path / "b")["step_in_epoch"] > 0  # stopped mid-epoch
    again = GeneratorTrainer(cfg, tmp_path / "b", toy_data, table, OPTS)
    assert again.resumed_from is not None
    again.fit()
    assert again.state["global_step"] == steps and again.state["best_epoch"] == ref.state["best_epoch"]
    for (name, a), (_, b) in zip(ref.model.state_dict().items(), again.model.state_dict().items()):
        assert torch.equal(a, b), name
    # a run folder refuses another SID table
    other = SIDTable.build(np.arange(1, 11), (np.arange(10) % 4)[:, None], [4])
    with pytest.raises(CheckpointError, match="sid_fingerprint"):
        GeneratorTrainer(cfg, tmp_path / "b", toy_data, other, OPTS)
