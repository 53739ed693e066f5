"""Packed (jagged) ranker training (``train.packed`` for ``hstu_ranker``, ``mtgr`` and ``hpgr``): the packed path
computes what the padded one does.

The padded path stays the reference: the logits and the gradients of a loss on them equal the padded ones (fp32,
dropout off, atol 1e-5) for the HSTU ranker (with and without cross features), MTGR (dynamic and causal masks, group
norm on and off), HPGR's dense ranker and HPGR's PGSA gathered layers (with and without the frozen stage-1 SEM),
several candidates per row included; HPGR's stage-1 session encoder (SEM) on packed tokens equals its padded
forward, and a packed stage-1 step its padded loss; the packed target-aware mask is the padded one at the real
tokens; packed steps train to the padded run's weights; the default step never packs; the settings without a
packed path are refused in one line.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from genrec.config import config_from_dict
from genrec.data.features import CROSS_FEATURES
from genrec.data.schema import load_dataset, write_dataset
from genrec.data.sequences import SeqBatch
from genrec.errors import ConfigError
from genrec.models.hpgr import MASK_ID, HPGRRanker, SessionEncoder, window_sessions
from genrec.models.hstu_ranker import HSTURanker, target_aware_mask
from genrec.models.mtgr import MTGR
from genrec.models.pretrained import apply_pretrained, read_meta, stage1_record
from genrec.nn.jagged import Packing, target_aware_masks
from genrec.objectives import ctr_bce
from genrec.objectives.mim import MIMConfig, MIMLoss
from genrec.train.pretrain import PretrainConfig, _mim_step_loss
from genrec.train.ranker import RankerTrainer
from tests.conftest import assert_saved_record, load_benchmark
from tests.hpgr.conftest import make_ctr_toy

V, MAX_LEN = 40, 24
ROOT = Path(__file__).resolve().parents[2]
OFF = {"d_model": 16, "num_layers": 2, "num_heads": 2, "dropout": 0.0, "linear_dropout": 0.0}
MODELS = {
    "hstu_ranker": (HSTURanker, {}),
    "hstu_ranker-cross": (HSTURanker, {"cross_features": True}),
    "hpgr-dense-ranker": (HPGRRanker, {"pgsa": False}),
    "hpgr-pgsa": (HPGRRanker, {"top_k": 3, "sigma": 1.0}),
    "hpgr-pgsa-sigma0": (HPGRRanker, {"top_k": 4, "sigma": 0.0}),
    "mtgr": (MTGR, {"feat_dim": 4, "realtime_max": 3, "realtime_window": 0}),
    "mtgr-causal-shared-norm": (MTGR, {"feat_dim": 4, "mask": "causal", "group_norm": False}),
    "mtgr-causal-history": (MTGR, {"feat_dim": 4, "history_mask": "causal", "cross_features": False}),
}
FEATURES = {"hstu_ranker-cross", "mtgr", "mtgr-causal-shared-norm", "mtgr-causal-history"}
LENGTHS = [[24, 1, 5, 23, 0, 7, 3, 24, 12, 11, 12], [9], [2, 2, 2, 1], [17, 4, 16, 15, 1, 20]]


def uneven_batch(seed: int, lengths: list[int], C: int) -> tuple[SeqBatch, torch.Tensor, dict[str, torch.Tensor]]:
    """A left-aligned history batch padded to its longest row, C candidates per row (the last one padding in row
    0 when C > 1) and their features (cross features, categories, two profile fields)."""
    g = torch.Generator().manual_seed(seed)
    lens = torch.tensor(lengths)
    B, N = len(lengths), max(int(lens.max()), 1)
    real = torch.arange(N)[None] < lens[:, None]  # (B, N)
    times = torch.cumsum(torch.randint(1, 20_000, (B, N), generator=g), 1) * real
    batch = SeqBatch(torch.randint(1, V + 1, (B, N), generator=g) * real, times, lens, times.max(1).values + 60,
                     behaviors=torch.randint(1, 4, (B, N), generator=g) * real)
    cands = torch.randint(1, V + 1, (B, C), generator=g)
    if C > 1:
        cands[0, -1] = 0
    feats = {k: torch.randint(0, vocab, (B, C), generator=g) for k, vocab in CROSS_FEATURES.items()}
    feats.update(cand_category=torch.randint(0, 9, (B, C), generator=g), profile=torch.randint(0, 5, (B, 2), generator=g))
    return batch, cands, feats


def _grads(model: torch.nn.Module, loss: torch.Tensor) -> dict[str, torch.Tensor]:
    params = {k: p for k, p in model.named_parameters() if p.requires_grad}
    got = torch.autograd.grad(loss, list(params.values()), allow_unused=True)
    return {k: g for k, g in zip(params, got) if g is not None}


def assert_packed_equals_padded(model: torch.nn.Module, batch: SeqBatch, cands: torch.Tensor, kw: dict) -> None:
    """Logits and the gradients of a loss on them agree to 1e-5 (train mode: what a training step runs)."""
    model.train()
    padded, packed = model.score(batch, cands, **kw), model.packed_score(batch, cands, **kw)  # (B, C) each
    assert packed.shape == padded.shape == cands.shape
    torch.testing.assert_close(packed, padded, atol=1e-5, rtol=0)
    weight = torch.randn(padded.shape, generator=torch.Generator().manual_seed(1)) / padded.numel()  # a mean loss
    ga, gb = _grads(model, (padded * weight).sum()), _grads(model, (packed * weight).sum())  # reading every logit
    assert ga.keys() == gb.keys() and ga
    for k in ga:
        torch.testing.assert_close(gb[k], ga[k], atol=1e-5, rtol=0, msg=k)


@pytest.mark.parametrize("C", [1, 3])
@pytest.mark.parametrize("lengths", LENGTHS)
@pytest.mark.parametrize("name", sorted(MODELS))
def test_packed_logits_and_gradients_equal_the_padded_path(name, lengths, C):
    cls, extra = MODELS[name]
    torch.manual_seed(3)
    model = cls(cls.Config(**OFF, **extra), V, MAX_LEN)
    with torch.no_grad():  # move the initial weights off their defaults (zero biases, unit norms) to test them too
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    batch, cands, feats = uneven_batch(len(lengths) + C, lengths, C)
    assert_packed_equals_padded(model, batch, cands, {"features": feats} if name in FEATURES else {})


@pytest.mark.parametrize("pgsa,relevance", [(True, "table"), (False, "table"), (True, "sem")])
def test_packed_hpgr_with_the_frozen_sem_equals_the_padded_path(artifact, pgsa, relevance):
    torch.manual_seed(0)
    model = HPGRRanker(HPGRRanker.Config(**OFF, top_k=3, sigma=1.0, pgsa=pgsa, pretrained=str(artifact),
                                         stage1=stage1_record(read_meta(artifact)), relevance=relevance), V, MAX_LEN)
    assert apply_pretrained(model) == 1 and model.sem is not None
    with torch.no_grad():
        model.sem_proj.weight.normal_(0, 0.1)  # W_sem starts at 0: make the SEM's inputs count
    for lengths in LENGTHS[:2]:
        batch, cands, _ = uneven_batch(7, lengths, 2)
        assert_packed_equals_padded(model, batch, cands, {})


def sem_batch(seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(items with a [MASK], timestamps, session ids, lengths) of uneven histories, sessions by a 1 h gap and 5 events."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.tensor([24, 3, 0, 17, 1, 9])
    valid = torch.arange(24)[None] < lengths[:, None]
    ts = torch.cumsum(torch.randint(1, 7200, (6, 24), generator=g), 1) * valid
    items = torch.randint(1, V + 1, (6, 24), generator=g) * valid
    items[0, 3] = MASK_ID
    return items, ts, window_sessions(ts, lengths, 3600, 5), lengths


@pytest.mark.parametrize("layout", [{}, {"max_sessions": 3}, {"session_repr": "mean"}, {"use_sessions": False}])
def test_the_packed_sem_equals_the_padded_sem(layout):
    """Stage 1's encoder on packed tokens (sessions attended one by one, rows of sessions one by one): its event
    vectors and the gradients of a mean loss on them equal the padded forward's (dropout off, 1e-5)."""
    torch.manual_seed(0)
    sem = SessionEncoder(SessionEncoder.Config(d_model=16, num_heads=2, intra_layers=2, inter_layers=1, dropout=0.0,
                                               **layout), V, 30).train()
    items, ts, sids, lengths = sem_batch(1)
    out = sem(items, ts, sids, lengths)
    events, valid = sem.packed_events(items, ts, sids, lengths)  # (Te, D)
    padded = out.events[out.event_valid]
    assert torch.equal(valid, out.event_valid) and events.shape == padded.shape
    torch.testing.assert_close(events, padded, atol=1e-5, rtol=0)
    weight = torch.randn(padded.shape, generator=torch.Generator().manual_seed(2)) / len(padded)
    ga, gb = _grads(sem, (padded * weight).sum()), _grads(sem, (events * weight).sum())
    assert ga.keys() == gb.keys() and ga
    for k in ga:
        torch.testing.assert_close(gb[k], ga[k], atol=1e-5, rtol=0, msg=k)


def test_a_packed_stage1_step_reads_the_same_masked_events():
    """``_mim_step_loss`` with ``packed``: the same masks (same stream), masked slots and negatives, the loss and
    gradients of the padded step."""
    torch.manual_seed(0)
    sem = SessionEncoder(SessionEncoder.Config(d_model=16, num_heads=2, intra_layers=1, inter_layers=1, dropout=0.0),
                         V, 30).train()
    items, ts, sids, lengths = sem_batch(3)
    batch = SeqBatch(items.clamp(min=0), ts, lengths, ts.max(1).values, session_ids=sids)
    cfg = PretrainConfig(sem=sem.cfg, mim=MIMConfig(mask_ratio=0.4))
    loss_fn, got = MIMLoss(cfg.mim, V), {}
    for packed in (False, True):
        loss, count = _mim_step_loss(sem, loss_fn, batch, cfg, torch.Generator().manual_seed(5), torch.device("cpu"),
                                     packed)
        got[packed] = (loss, count, _grads(sem, loss / count))
    (la, ca, ga), (lb, cb, gb) = got[False], got[True]
    assert ca == cb > 0
    torch.testing.assert_close(lb, la, atol=1e-5, rtol=1e-6)
    for k in ga:  # the MIM scores divide by tau = 0.05, so gradients reach ~50: 1e-5 relative as well
        torch.testing.assert_close(gb[k], ga[k], atol=1e-5, rtol=1e-5, msg=k)


def test_packed_target_aware_masks_are_the_padded_mask_at_the_real_tokens():
    lengths, C = torch.tensor([3, 0, 5, 5, 1]), 2
    N = int(lengths.max())
    pk = Packing.of(lengths + C, N + C, max_padding=0.0)
    row, pos = pk.index // (N + C), pk.positions
    n = lengths[row]
    slot = torch.where(pos < n, pos, N + pos - n)
    real = torch.ones_like(slot, dtype=torch.bool)
    dense = target_aware_mask(lengths, N, C)  # (B, N+C, N+C)
    laid = pk.gather.split([g.slots for g in pk.groups])
    for g, m, tok in zip(pk.groups, target_aware_masks(pk, slot, real, N), laid):
        tok = tok.view(len(g.rows), g.width)
        for r, b in enumerate(g.rows.tolist()):
            k = int(lengths[b]) + C  # the row's real tokens lead its group layout
            s = slot[tok[r, :k]]
            assert torch.equal(m[r, :k, :k], dense[b][s][:, s])
            assert not m[r, k:].any() and not m[r, :, k:].any()  # layout padding reads and is read by nothing
    # a candidate reads the history and itself, never another candidate
    first = target_aware_masks(pk, slot, real, N)[0][0]  # the longest row: its candidates in slots N, N+1
    assert pk.groups[0].width == N + C and first[N, :N].all() and first[N, N] and first[N + 1, N + 1]
    assert not first[N, N + 1] and not first[N + 1, N]


def raw_cfg(model: str, **kw) -> dict:
    raw = {"model": {"name": model, **OFF, **kw}, "data": {"max_len": 16}, "ranking": {"labels": "ratings"},
           "train": {"epochs": 1, "batch_size": 64, "lr": 0.01, "progress": False, "tensorboard": False,
                     "patience": 0, "num_threads": 1, "device": "cpu", "seed": 3}}
    return raw


@pytest.fixture(scope="module")
def toy():
    return make_ctr_toy()


@pytest.mark.parametrize("model", ["hstu_ranker", "hpgr", "mtgr"])
def test_packed_steps_train_to_the_padded_runs_weights(toy, tmp_path, model):
    """Twelve AdamW steps (longer runs part by float rounding: AdamW turns a rounding-sized gradient of a rarely
    read embedding row into a full step, as in the retrievers' packed runs)."""
    extra = {"top_k": 4, "sigma": 1.0} if model == "hpgr" else {}
    runs, losses = {}, {}
    for packed in (False, True):
        raw = raw_cfg(model, **extra)
        raw["train"].update(packed=packed, max_steps=12)
        tr = RankerTrainer(config_from_dict(raw), tmp_path / f"run-{packed}", toy, resume=False)
        with torch.no_grad():
            total, count = tr.step_loss(tr.epoch_batches(0)[0])
        losses[packed] = float(total) / float(count)
        tr.fit()
        runs[packed] = {k: v.detach().clone() for k, v in tr.model.state_dict().items()}
    assert losses[True] == pytest.approx(losses[False], abs=1e-5)
    for k in runs[False]:
        torch.testing.assert_close(runs[True][k], runs[False][k], atol=1e-4, rtol=1e-4, msg=k)


def test_the_default_ranker_step_is_the_padded_one_and_never_packs(toy, tmp_path, monkeypatch):
    monkeypatch.setattr(HSTURanker, "packed_score", lambda *a, **k: pytest.fail("the default path packed"))
    tr = RankerTrainer(config_from_dict(raw_cfg("hstu_ranker")), tmp_path / "r", toy, resume=False)
    rows = tr.epoch_batches(0)[0]
    total, count = tr.step_loss(rows)
    batch, cands, labels, _ = tr.batch(tr.train_idx[rows])
    expect, n = ctr_bce(tr.model.score(batch, cands), cands, labels)
    assert torch.equal(total, expect) and int(count) == int(n)


def test_hpgr_settings_without_a_packed_path_are_refused_in_one_line(toy, tmp_path):
    for name, extra in (("hpgr", {"impl": "dense"}), ("hpgr", {"rows": "candidate"})):
        raw = raw_cfg(name, **extra)
        raw["train"]["packed"] = True
        with pytest.raises(ConfigError, match=f"train.packed: model '{name}' has no packed path"):
            RankerTrainer(config_from_dict(raw), tmp_path / name, toy)


def test_padding_and_speed_benchmarks_on_the_toy(toy, tmp_path, monkeypatch):
    """benchmarks/padding_rankers.py and benchmarks/packed_speed.py --quick on a ranker recipe over the toy log:
    a record each, exact shares in [0, 1), the packed attention under its 5% cap, the loss paths agree."""
    data = write_dataset(tmp_path / "ctr-toy", toy.interactions, toy.items, toy.manifest)
    load_dataset(data)
    padding, speed = load_benchmark("padding_rankers"), load_benchmark("packed_speed")
    import common  # the benchmarks' helper module, importable once a benchmark is loaded

    monkeypatch.setattr(common, "RESULTS", tmp_path / "results")
    recipe = str(ROOT / "configs" / "hstu_ranker-ml100k.yaml")
    (row,) = padding.main(["--recipe", recipe, "--data", str(data), "--name", "pad"])["metrics"]["rows"]
    for which in ("train", "valid", "test"):
        assert 0 <= row[f"{which}_tokens"] < 1
        assert row[f"{which}_packed_attention"] <= 0.05
    two_stage = str(ROOT / "configs" / "hpgr-ml100k.yaml")
    rows = speed.main(["--recipe", recipe, "--data", str(data), "--recipe", two_stage, "--data", str(data), "--quick",
                       "--stage1", "--set", "train.batch_size=64", "pretrain.batch_size=16",
                       "--name", "quick"])["metrics"]["rows"]
    assert [(Path(r["recipe"]).stem, r["stage"]) for r in rows] == [
        ("hstu_ranker-ml100k", "train"), ("hpgr-ml100k", "train"), ("hpgr-ml100k", "pretrain")]
    for sp in rows:
        assert sp["first_batch_loss_gap"] < 1e-5 and sp["ms_per_step_packed"] > 0 and sp["steps"] == 3
        assert sp["packed_padding_share_tokenwise"] == 0.0 and 0 <= sp["packed_padding_share_attention"] <= 0.05
    assert_saved_record(tmp_path / "results" / "quick.json")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("name", sorted(MODELS))
def test_packed_rankers_equal_padded_on_cuda(name, dtype):
    """The packed ranker on a GPU (fp32: the CPU's 1e-5; bf16 autocast: within bf16 rounding of the padded path
    run the same way)."""
    cls, extra = MODELS[name]
    torch.manual_seed(3)
    model = cls(cls.Config(**OFF, **extra), V, MAX_LEN).cuda().train()
    batch, cands, feats = uneven_batch(5, LENGTHS[0], 2)
    batch, cands = batch.to("cuda"), cands.cuda()
    kw = {"features": {k: v.cuda() for k, v in feats.items()}} if name in FEATURES else {}
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
        padded, packed = model.score(batch, cands, **kw).float(), model.packed_score(batch, cands, **kw).float()
    torch.testing.assert_close(packed, padded, atol=1e-5 if dtype == torch.float32 else 3e-2, rtol=0)
