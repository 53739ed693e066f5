"""Packed (jagged) retriever training (``train.packed``): the packed path computes what the padded one does.

The padded path stays the reference: for SASRec and HSTU the packed states at every real position and the
gradients of a loss on them equal the padded ones (fp32, dropout off, atol 1e-5); a training step's loss and
gradients match; a packed epoch trains to the padded run's weights; the default path never packs.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

import genrec.models  # noqa: F401  (registers the built-in models)
from genrec.config import ObjectiveConfig, config_from_dict
from genrec.data.sequences import SeqBatch
from genrec.errors import ConfigError
from genrec.models.registry import build_model
from genrec.models.sasrec import SASRec
from genrec.nn.jagged import Packing, length_groups
from genrec.objectives.next_item import SampledSoftmax
from genrec.train.run import train_run
from genrec.train.trainer import Trainer, _LossModule
from tests.conftest import assert_saved_record, load_benchmark, tiny_cfg

V, MAX_LEN = 50, 24
ROOT = Path(__file__).resolve().parents[2]
NO_DROPOUT = {"dropout": 0.0}
MODELS = {
    "sasrec": {"name": "sasrec", "d_model": 16, "num_layers": 2, "num_heads": 2, **NO_DROPOUT},
    "hstu": {"name": "hstu", "d_model": 16, "num_layers": 2, "num_heads": 2, "linear_dropout": 0.0, **NO_DROPOUT},
    "hstu-pos-only": {"name": "hstu", "d_model": 12, "num_layers": 1, "num_heads": 3, "time_bias": False,
                      "linear_dropout": 0.0, **NO_DROPOUT},
}


def uneven_batch(seed: int, lengths: list[int]) -> SeqBatch:
    """A left-aligned batch padded to its longest row, with next-item targets at every real position."""
    g = torch.Generator().manual_seed(seed)
    lens = torch.tensor(lengths)
    L = int(lens.max())
    real = torch.arange(L)[None] < lens[:, None]  # (B, L)
    items = torch.randint(1, V + 1, (len(lengths), L), generator=g) * real
    targets = torch.randint(1, V + 1, (len(lengths), L), generator=g) * real
    times = torch.cumsum(torch.randint(1, 100_000, (len(lengths), L), generator=g), 1) * real
    return SeqBatch(items, times, lens, times.max(1).values + 7, targets=targets, target_times=times)


LENGTHS = [[24, 1, 5, 23, 7, 3, 24, 12, 11, 12], [9], [2, 2, 2, 1], [17, 4, 16, 15, 1, 20]]


def _grads(model: torch.nn.Module, loss: torch.Tensor) -> dict[str, torch.Tensor]:
    params = dict(model.named_parameters())
    got = torch.autograd.grad(loss, list(params.values()), allow_unused=True)
    return {k: g for k, g in zip(params, got) if g is not None}


@pytest.mark.parametrize("lengths", LENGTHS)
@pytest.mark.parametrize("name", sorted(MODELS))
def test_packed_output_and_gradients_equal_the_padded_path(name, lengths):
    torch.manual_seed(3)
    model = build_model(MODELS[name], V, MAX_LEN).train()  # train mode: what a training step runs (dropout 0)
    batch = uneven_batch(len(lengths), lengths)
    real = batch.mask
    weight = torch.randn(int(real.sum()), model.item_emb.weight.shape[1])  # (T, D) a loss touching every state
    padded = model.sequence_output(batch)[real]  # (T, D)
    packed = model.packed_output(batch)  # (T, D)
    assert packed.shape == padded.shape
    torch.testing.assert_close(packed, padded, atol=1e-5, rtol=0)
    ga, gb = _grads(model, (padded * weight).sum()), _grads(model, (packed * weight).sum())
    assert ga.keys() == gb.keys() and ga
    for k in ga:
        torch.testing.assert_close(gb[k], ga[k], atol=1e-5, rtol=0, msg=k)


@pytest.mark.parametrize("history_negatives", [False, True])
@pytest.mark.parametrize("name", ["sasrec", "hstu"])
def test_a_packed_training_step_reads_the_same_positions_and_negatives(name, history_negatives):
    torch.manual_seed(5)
    model = build_model(MODELS[name], V, MAX_LEN).train()
    batch = uneven_batch(0, LENGTHS[0])
    batch.targets[0, 3] = 0  # a real position without a target: neither path may read it
    obj = SampledSoftmax(ObjectiveConfig(num_negatives=8, history_negatives=history_negatives))
    sums = {}
    for packed in (False, True):
        total, count = _LossModule(model, obj, packed)(batch, torch.Generator().manual_seed(11))
        sums[packed] = (total, count, _grads(model, total / count))  # the loop's mean
    (ta, ca, ga), (tb, cb, gb) = sums[False], sums[True]
    assert int(ca) == int(cb) == int((batch.targets > 0).sum())
    torch.testing.assert_close(tb, ta, atol=1e-4, rtol=1e-6)
    for k in ga:
        torch.testing.assert_close(gb[k], ga[k], atol=1e-5, rtol=1e-5, msg=k)


def test_the_default_step_is_the_padded_one_and_never_packs(monkeypatch):
    """train.packed defaults to false, and the default step is the padded code, bit for bit."""
    assert config_from_dict(tiny_cfg("sasrec")).train.packed is False
    torch.manual_seed(0)
    model = build_model(MODELS["sasrec"], V, MAX_LEN)
    monkeypatch.setattr(type(model), "packed_output", lambda *a: pytest.fail("the default path packed"))
    batch, obj = uneven_batch(1, LENGTHS[0]), SampledSoftmax(ObjectiveConfig(num_negatives=8))
    total, count = _LossModule(model, obj)(batch, torch.Generator().manual_seed(2))
    states, valid = model.sequence_output(batch), batch.targets > 0
    expect = obj(model, states[valid], batch.targets[valid], torch.Generator().manual_seed(2))
    assert torch.equal(total, expect) and int(count) == int(valid.sum())


@pytest.mark.parametrize("max_padding", [0.0, 0.05, 0.3, 1.0])
def test_length_groups_cover_every_row_once_under_the_padding_cap(max_padding):
    rng = np.random.default_rng(0)
    lengths = np.concatenate([rng.integers(1, 200, 120), [0, 0]])
    groups = length_groups(lengths, max_padding)
    rows = np.concatenate(groups)
    assert sorted(rows.tolist()) == sorted(np.flatnonzero(lengths).tolist())  # empty rows join no group
    for g in groups:
        assert lengths[g[0]] == lengths[g].max()
        assert 1 - lengths[g].sum() / (len(g) * lengths[g].max()) <= max_padding + 1e-12
    if max_padding == 0.0:
        assert all(len(set(lengths[g])) == 1 for g in groups)


def test_packing_reads_real_tokens_in_row_major_order_and_groups_them():
    lengths = torch.tensor([3, 0, 5, 1, 5])
    real = torch.arange(6)[None] < lengths[:, None]
    x = torch.arange(5 * 6 * 2, dtype=torch.float32).view(5, 6, 2)
    pk = Packing.of(lengths, 6, max_padding=0.0)
    assert torch.equal(pk.pack(x), x[real]) and pk.num_tokens == 14
    assert torch.equal(pk.unpack(pk.pack(x)), x * real[..., None])
    assert torch.equal(pk.positions, torch.tensor([0, 1, 2, 0, 1, 2, 3, 4, 0, 0, 1, 2, 3, 4]))
    assert [g.width for g in pk.groups] == [5, 3, 1] and pk.padded_share() == 0.0
    # per_group hands each group its rows padded to the group's width and returns the real tokens in packed order
    out = pk.per_group(lambda i, g, xs: xs[0] * 10 + i, pk.pack(x))
    group_of = {2: 0, 4: 0, 0: 1, 3: 2}
    expect = torch.cat([x[b, : int(n)] * 10 + group_of[b] for b, n in enumerate(lengths.tolist()) if n])
    assert torch.equal(out, expect)
    assert Packing.of(lengths, 6, max_padding=1.0).padded_share() == pytest.approx(1 - 14 / 20)
    with pytest.raises(ValueError, match="no real token"):
        Packing.of(torch.tensor([0, 0]), 3)


def test_a_packed_epoch_trains_finitely_to_the_padded_runs_weights(toy, tmp_path):
    runs = {}
    for packed in (False, True):
        raw = tiny_cfg("hstu", train={"epochs": 1, "packed": packed, "lr": 0.01})
        raw["model"].update(dropout=0.0, linear_dropout=0.0)
        trainer = Trainer(config_from_dict(raw), tmp_path / f"run-{packed}", toy)
        trainer.fit()
        runs[packed] = {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}
    for k in runs[False]:
        torch.testing.assert_close(runs[True][k], runs[False][k], atol=1e-4, rtol=1e-4, msg=k)


def test_packed_training_with_dropout_runs_and_its_loss_is_finite(toy, tmp_path):
    res = train_run(config_from_dict(tiny_cfg("sasrec", train={"epochs": 1, "packed": True})), tmp_path / "r",
                    dataset=toy)
    assert res["metrics"]["num_queries"] == 120
    logged = [json.loads(line) for line in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    losses = [r["train_loss_epoch"] for r in logged if "train_loss_epoch" in r]
    assert len(losses) == 1 and all(math.isfinite(v) and v > 0 for v in losses)


def test_packed_is_refused_in_one_line_where_there_is_no_packed_path(toy, tmp_path, monkeypatch):
    raw = tiny_cfg("tiger", train={"packed": True})  # rankers pack too (tests/hpgr/test_packed_rankers.py)
    with pytest.raises(ConfigError, match="train.packed: only retrievers and rankers"):
        train_run(config_from_dict(raw), tmp_path / "r", dataset=toy)
    monkeypatch.setattr(SASRec, "packs", False)  # a retriever without packed_output
    with pytest.raises(ConfigError, match="train.packed: model 'sasrec' has no packed path"):
        Trainer(config_from_dict(tiny_cfg("sasrec", train={"packed": True})), tmp_path / "s", toy)
    with pytest.raises(ConfigError, match="train.packed"):
        config_from_dict(tiny_cfg("sasrec", train={"packed": "yes"}))


def test_benchmarks_report_packed_shares_and_step_times(toy_dir, tmp_path, monkeypatch):
    """benchmarks/packed_speed.py --quick and benchmarks/padding.py on the toy data: a record each, the packed
    token-wise layers compute no padding and attention less than the padded batches, the loss paths agree."""
    speed, padding = load_benchmark("packed_speed"), load_benchmark("padding")
    import common  # the benchmarks' helper module, importable once a benchmark is loaded

    monkeypatch.setattr(common, "RESULTS", tmp_path / "results")
    args = ["--recipe", str(ROOT / "configs" / "sasrec-ml100k.yaml"), "--data", str(toy_dir)]
    (row,) = speed.main([*args, "--quick", "--set", "train.batch_size=32", "--name", "quick"])["metrics"]["rows"]
    assert row["ms_per_step_padded"] > 0 and row["cpu_ms_per_step_packed"] > 0 and row["steps"] == 3
    assert row["first_batch_loss_gap"] < 1e-4
    assert row["packed_padding_share_tokenwise"] == 0.0
    assert 0 <= row["packed_padding_share_attention"] <= 0.05 < row["padded_padding_share"]
    (pad,) = padding.main([*args, "--name", "pad"])["metrics"]["rows"]
    assert pad["train_padding_share_packed_attention"] <= 0.05 < pad["train_padding_share"]
    assert pad["train_padding_share_packed_attention_pairs"] < pad["train_padding_share_attention_pairs"]
    assert_saved_record(tmp_path / "results" / "quick.json")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("name", sorted(MODELS))
def test_packed_equals_padded_on_cuda(name, dtype):
    """The packed attention on a GPU (fp32: the CPU's 1e-5; bf16 autocast: within bf16 rounding of the padded
    path run the same way)."""
    torch.manual_seed(3)
    model = build_model(MODELS[name], V, MAX_LEN).cuda().train()
    batch = uneven_batch(5, LENGTHS[0]).to("cuda")
    real = batch.mask
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
        padded = model.sequence_output(batch)[real].float()  # (T, D)
        packed = model.packed_output(batch).float()  # (T, D)
    tol = 1e-5 if dtype == torch.float32 else 3e-2
    torch.testing.assert_close(packed, padded, atol=tol, rtol=0)
