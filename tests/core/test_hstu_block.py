"""The one HSTU block against the pre-refactor layers, bit for bit (fp32, torch.equal).

For every layer configuration of hstu, hstu_ranker, hpgr and mtgr (ablations included): the block and
the frozen old layer (``reference_hstu_layers``) with the same weights give the same outputs and
gradients, in eval mode and in train mode under one seed; each whole model equals the model assembled
from the old layers (``reference_hstu_models``): same initial weights from one seed (parameter order and
init functions), same state_dict keys and shapes, same scores, losses and gradients.
"""

from __future__ import annotations

import pytest
import torch

from genrec.data.features import CROSS_FEATURES
from genrec.data.sequences import SeqBatch
from genrec.models.hpgr import HPGRRanker, pgsa_layer
from genrec.models.hstu import HSTU
from genrec.models.hstu_ranker import HSTURanker, target_aware_mask
from genrec.models.mtgr import MTGR, mtgr_mask
from genrec.nn.attention import causal_valid_mask, with_column_mask
from genrec.nn.hstu_block import DenseAttention, HSTUBlock
from genrec.nn.position import next_event_times
from genrec.nn.sparse import PGSAAttention, pgsa_weights
from genrec.objectives import ctr_bce
from tests.core import reference_hstu_layers as old_layers
from tests.core.reference_hstu_models import (
    ReferenceHPGRRanker,
    ReferenceHSTU,
    ReferenceHSTURanker,
    ReferenceMTGR,
)

V, N, B, C = 30, 10, 4, 3  # catalogue, history window (= max_len), users, candidates


def _batch(seed: int = 0, min_len: int = 0) -> SeqBatch:
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(min_len, N + 1, (B,), generator=g)
    lengths[0] = N
    valid = torch.arange(N)[None] < lengths[:, None]
    ts = torch.cumsum(torch.randint(1, 7200, (B, N), generator=g), 1) * valid
    return SeqBatch(items=torch.randint(1, V + 1, (B, N), generator=g) * valid, timestamps=ts, lengths=lengths,
                    query_time=ts.max(1).values + 60)


def _features(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    f = {name: torch.randint(0, v, (B, C), generator=g) for name, v in CROSS_FEATURES.items()}
    f["cand_category"] = torch.randint(0, 6, (B, C), generator=g)
    f["profile"] = torch.randint(0, 50, (B, 2), generator=g)
    return f


def _randomise(module: torch.nn.Module, seed: int = 1) -> None:
    """Random values everywhere (norm affines start at 1/0), so a part the block skipped would show."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)


def _same_run(new_fn, old_fn, new: torch.nn.Module, old: torch.nn.Module, inputs: list[torch.Tensor],
              train: bool) -> None:
    """Forward both under one seed and backprop one random cotangent: outputs and gradients equal exactly."""
    new.train(train)
    old.train(train)
    outs = []
    for fn, module in ((new_fn, new), (old_fn, old)):
        module.zero_grad()
        xs = [x.detach().clone().requires_grad_(x.is_floating_point()) for x in inputs]
        torch.manual_seed(11)
        y = fn(*xs)
        y.backward(torch.randn(y.shape, generator=torch.Generator().manual_seed(3)))
        grads = {k: p.grad for k, p in module.named_parameters()}
        outs.append((y.detach(), [x.grad for x in xs if x.is_floating_point()], grads))
    (y1, xg1, g1), (y2, xg2, g2) = outs
    assert torch.equal(y1, y2)
    assert all(torch.equal(a, b) for a, b in zip(xg1, xg2))
    assert g1.keys() == g2.keys()
    for k in g1:
        assert (g1[k] is None and g2[k] is None) or torch.equal(g1[k], g2[k]), k


def _layer_pair(new_model: torch.nn.Module, old_model: torch.nn.Module) -> tuple[HSTUBlock, torch.nn.Module]:
    new, old = new_model.layers[0], old_model.layers[0]
    assert isinstance(new, HSTUBlock)
    _randomise(new)
    old.load_state_dict(new.state_dict())  # strict: the same keys and shapes
    return new, old


def _build(cls, ref_cls, seed: int = 0, **kw):
    torch.manual_seed(seed)
    new = cls(cls.Config(**{"d_model": 16, "num_heads": 2, **kw}), num_items=V, max_len=N)
    torch.manual_seed(seed)
    old = ref_cls(ref_cls.Config(**{"d_model": 16, "num_heads": 2, **kw}), num_items=V, max_len=N)
    return new, old


# ----------------------------------------------------------------------------------------------- layers
HSTU_CFGS = [{}, {"time_bias": False}, {"position_bias": False}, {"time_bias": False, "position_bias": False},
             {"dqk": 4, "dv": 6, "num_heads": 3}]


@pytest.mark.parametrize("train", [False, True])
@pytest.mark.parametrize("kw", HSTU_CFGS)
def test_research_layer_is_the_block(kw, train):
    new, old = _layer_pair(*_build(HSTU, ReferenceHSTU, linear_dropout=0.3, **kw))
    batch = _batch(min_len=1)
    mask = causal_valid_mask(batch.lengths, N)
    qt = next_event_times(batch.timestamps, batch.lengths, batch.query_time)
    x = torch.randn(B, N, 16)
    _same_run(lambda x: new(x, DenseAttention(mask, N), timestamps=batch.timestamps, query_times=qt),
              lambda x: old(x, mask, batch.timestamps, qt, N), new, old, [x], train)


RANKER_CFGS = [{}, {"group_norm": True}, {"attn_dropout": 0.2}, {"dqk": 4, "dv": 6, "num_heads": 3}]


@pytest.mark.parametrize("train", [False, True])
@pytest.mark.parametrize("column", [None, "rows", "candidates"])
@pytest.mark.parametrize("kw", RANKER_CFGS)
def test_ranker_layer_is_the_block(kw, column, train):
    new, old = _layer_pair(*_build(HSTURanker, ReferenceHSTURanker, linear_dropout=0.3, **kw))
    lengths = _batch().lengths
    mask = target_aware_mask(lengths, N, C)  # (B, N+C, N+C) bool
    g = torch.Generator().manual_seed(2)
    cm = {None: None, "rows": torch.rand(B, N, generator=g), "candidates": torch.rand(B, C, N, generator=g)}[column]
    mask = with_column_mask(mask, cm, N)  # float weights when a column mask is given
    x = torch.randn(B, N + C, 16)
    _same_run(lambda x: new(x, DenseAttention(mask, N)), lambda x: old(x, mask, N), new, old, [x], train)


@pytest.mark.parametrize("train", [False, True])
@pytest.mark.parametrize("impl", ["gather", "dense"])
@pytest.mark.parametrize("rows", ["all", "candidate"])
@pytest.mark.parametrize("group_norm", [False, True])
def test_pgsa_layer_is_the_block_with_pgsa_attention(group_norm, rows, impl, train):
    new, old = _layer_pair(*_build(HPGRRanker, ReferenceHPGRRanker, linear_dropout=0.3, group_norm=group_norm))
    batch = _batch(seed=4)
    g = torch.Generator().manual_seed(5)
    w = pgsa_weights(torch.randn(B, N, generator=g), batch.lengths, top_k=2, sigma=1.0)
    assert 0 < int((w > 0).sum()) < int(batch.lengths.sum())  # really sparse
    x = torch.randn(B, N + 1, 16)
    _same_run(lambda x: new(x, PGSAAttention(w, batch.lengths, N, rows, impl)),
              lambda x: old_layers.pgsa_layer(old, x, w, batch.lengths, N, rows, impl), new, old, [x], train)
    with torch.no_grad():  # the model module's convenience wrapper is the same call
        assert torch.equal(pgsa_layer(new.eval(), x, w, batch.lengths, N, rows, impl),
                           old_layers.pgsa_layer(old.eval(), x, w, batch.lengths, N, rows, impl))


MTGR_CFGS = [{}, {"group_norm": False}, {"dqk": 4, "dv": 6, "num_heads": 3, "ffn_hidden": 24}]


@pytest.mark.parametrize("train", [False, True])
@pytest.mark.parametrize("kw", MTGR_CFGS)
def test_mtgr_layer_is_the_block(kw, train):
    new_model, old_model = _build(MTGR, ReferenceMTGR, feat_dim=4, linear_dropout=0.3, **kw)
    new, old = _layer_pair(new_model, old_model)
    batch = _batch(min_len=1)
    cands = torch.randint(1, V + 1, (B, C))
    with torch.no_grad():
        x, groups, times, real, Fn = new_model.tokens(batch, cands, _features())
    weights = mtgr_mask(groups, times, real).float() / (Fn + batch.lengths + 1).float()[:, None, None]
    _same_run(lambda x: new(x, DenseAttention(weights, 1, scale_at="query"), groups=groups),
              lambda x: old(x, groups, weights), new, old, [x], train)


def test_state_dict_keys_of_one_layer_are_the_old_ones():
    """Written out for one tiny configuration each, independent of the oracle."""
    hstu, _ = _build(HSTU, ReferenceHSTU)
    ranker, _ = _build(HSTURanker, ReferenceHSTURanker, group_norm=True)
    mtgr, _ = _build(MTGR, ReferenceMTGR, feat_dim=4)
    shapes = {name: {k: tuple(v.shape) for k, v in m.layers[0].state_dict().items()}
              for name, m in (("hstu", hstu), ("ranker", ranker), ("mtgr", mtgr))}
    assert shapes["hstu"] == {"uvqk": (16, 64), "out.weight": (16, 16), "out.bias": (16,),
                              "rab.pos_w": (2 * N - 1,), "rab.ts_w": (129,)}
    assert shapes["ranker"] == {"in_norm.weight": (16,), "in_norm.bias": (16,), "uvqk.weight": (64, 16),
                                "uvqk.bias": (64,), "o_norm.weight": (8,), "o_norm.bias": (8,),
                                "out.weight": (16, 48), "out.bias": (16,)}
    assert shapes["mtgr"] == {"in_norm.weight": (4, 16), "in_norm.bias": (4, 16), "uvqk.weight": (64, 16),
                              "uvqk.bias": (64,), "o_norm.weight": (4, 16), "o_norm.bias": (4, 16),
                              "ffn.0.weight": (16, 16), "ffn.0.bias": (16,), "ffn.3.weight": (16, 16),
                              "ffn.3.bias": (16,)}


# ----------------------------------------------------------------------------------------------- models
def _assert_same_init(new: torch.nn.Module, old: torch.nn.Module) -> None:
    """One seed, one set of initial weights: keys (in order), shapes and values."""
    a, b = new.state_dict(), old.state_dict()
    assert list(a) == list(b)
    for k in a:
        assert a[k].shape == b[k].shape and torch.equal(a[k], b[k]), k


def _mean_bce(m, batch, cands, labels, *features):
    """The training loss of a ranker (the CTR objective over its logits), as the mean over real candidates."""
    s, n = ctr_bce(m.score(batch, cands, *features), cands, labels)
    return s / n.clamp(min=1.0)


def _model_run(new: torch.nn.Module, old: torch.nn.Module, loss_fn) -> None:
    """The same loss and gradients in train mode (dropout under one seed), the same outputs in eval mode."""
    _randomise(new, seed=7)
    old.load_state_dict(new.state_dict())
    for train in (True, False):
        new.train(train)
        old.train(train)
        results = []
        for m in (new, old):
            m.zero_grad()
            torch.manual_seed(13)
            out = loss_fn(m)
            out.sum().backward()
            results.append((out.detach(), {k: p.grad for k, p in m.named_parameters()}))
        (o1, g1), (o2, g2) = results
        assert torch.equal(o1, o2), train
        for k in g1:
            assert (g1[k] is None and g2[k] is None) or torch.equal(g1[k], g2[k]), (train, k)


@pytest.mark.parametrize("seed", [0, 3])
@pytest.mark.parametrize("kw", HSTU_CFGS)
def test_hstu_model_unchanged(kw, seed):
    new, old = _build(HSTU, ReferenceHSTU, seed=seed, num_layers=2, **kw)
    _assert_same_init(new, old)
    batch = _batch(seed=seed, min_len=1)
    _model_run(new, old, lambda m: m.sequence_output(batch))


@pytest.mark.parametrize("seed", [0, 3])
@pytest.mark.parametrize("kw", RANKER_CFGS + [{"time_bucket_fn": "log"}])
def test_hstu_ranker_model_unchanged(kw, seed):
    new, old = _build(HSTURanker, ReferenceHSTURanker, seed=seed, **kw)
    _assert_same_init(new, old)
    batch = _batch(seed=seed)
    g = torch.Generator().manual_seed(seed)
    cands = torch.randint(1, V + 1, (B, C), generator=g)
    cands[1, -1] = 0  # a padding candidate
    labels = torch.randint(0, 2, (B, C), generator=g)
    cm3 = torch.rand(B, C, N, generator=g)
    per_layer = [torch.rand(B, N, generator=g), None]
    _model_run(new, old, lambda m: torch.stack([
        _mean_bce(m, batch, cands, labels), m.score(batch, cands).sum(), m.score(batch, cands, cm3, micro_batch=2).sum(),
        m.score(batch, cands, per_layer).sum()]))


HPGR_CFGS = [{"pgsa": False}, {"impl": "dense"}, {"impl": "dense", "rows": "candidate"}, {"impl": "gather"},
             {"impl": "gather", "rows": "candidate"}, {"window": "score"}, {"group_norm": True, "rows": "candidate"}]


@pytest.mark.parametrize("kw", HPGR_CFGS)
def test_hpgr_model_unchanged(kw):
    new, old = _build(HPGRRanker, ReferenceHPGRRanker, seed=1, top_k=2, sigma=1.0, **kw)
    _assert_same_init(new, old)
    batch = _batch(seed=6)
    g = torch.Generator().manual_seed(6)
    cands = torch.randint(1, V + 1, (B, C), generator=g)
    labels = torch.randint(0, 2, (B, C), generator=g)
    _model_run(new, old, lambda m: torch.stack([_mean_bce(m, batch, cands, labels), m.score(batch, cands).sum()]))


@pytest.mark.parametrize("kw", MTGR_CFGS + [{"mask": "causal"}, {"history_mask": "causal"},
                                             {"cross_features": False}, {"realtime_max": 0}])
def test_mtgr_model_unchanged(kw):
    new, old = _build(MTGR, ReferenceMTGR, seed=2, feat_dim=4, **kw)
    _assert_same_init(new, old)
    batch = _batch(seed=8, min_len=1)
    g = torch.Generator().manual_seed(8)
    cands = torch.randint(1, V + 1, (B, C), generator=g)
    labels = torch.randint(0, 2, (B, C), generator=g)
    f = _features(8)
    _model_run(new, old, lambda m: torch.stack([_mean_bce(m, batch, cands, labels, f), m.score(batch, cands, f).sum()]))
