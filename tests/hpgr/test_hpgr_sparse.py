"""PGSA: the mask matches its definition and the gathered path matches the dense reference."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from genrec.nn.position import RelativeBucketedTimeAndPositionBias
from genrec.nn.sparse import (
    PGSAConfig,
    kept_columns,
    max_kept_columns,
    pgsa,
    pgsa_attention,
    pgsa_mask,
    pgsa_relevance,
    pgsa_weights,
    rab_bias_fn,
)


def brute_weights(r: torch.Tensor, n: int, K: int, sigma: float, eps: float = 0.01) -> list[float]:
    """The definition, one sample, written with Python loops."""
    real = [(float(r[j]), j) for j in range(n)]
    S = [j for _, j in sorted(real, reverse=True)[:K]]
    out = []
    for j in range(r.shape[0]):
        if j >= n:
            out.append(0.0)
            continue
        if sigma == 0:
            out.append(1.0 if j in S else 0.0)
            continue
        w = max(math.exp(-((j - k) ** 2) / (2 * sigma**2)) for k in S)
        out.append(w if w >= eps else 0.0)
    return out


def test_mask_hand_built_case():
    # N = 10, n = 8; relevances chosen so the Top-2 anchors are positions 1 and 6
    r = torch.tensor([[0.1, 0.9, 0.0, -0.2, 0.3, 0.2, 0.8, 0.05, 5.0, 5.0]])
    lengths = torch.tensor([8])
    w = pgsa_weights(r, lengths, top_k=2, sigma=1.0)
    g = [math.exp(-0.5 * d * d) for d in range(4)]  # exp(-d^2/2): d=3 -> 0.011 >= eps, kept
    expected = [g[1], g[0], g[1], g[2], g[2], g[1], g[0], g[1], 0.0, 0.0]
    assert torch.allclose(w[0], torch.tensor(expected), atol=1e-6)
    assert w[0, 8:].eq(0).all(), "padding (even with high relevance) is never selected"
    w0 = pgsa_weights(r, lengths, top_k=2, sigma=0.0)
    assert w0[0].tolist() == [0, 1, 0, 0, 0, 0, 1, 0, 0, 0]
    m = pgsa_mask(w, lengths)  # (1, 11, 11)
    L = 11
    for i in range(L):
        for j in range(L):
            if i == 10:
                want = 1.0 if j == 10 else float(w[0, j])
            elif i < 8:
                want = float(w[0, j]) if j <= i else 0.0
            else:
                want = 0.0  # padding rows read nothing
            assert abs(float(m[0, i, j]) - want) < 1e-6, (i, j)
    mc = pgsa_mask(w, lengths, rows="candidate")
    assert torch.equal(mc[0, 10], m[0, 10])
    assert mc[0, 5, :6].eq(1).all() and mc[0, 5, 6:].eq(0).all()  # history rows stay plain causal


def test_score_window_and_all_kept_when_short():
    r = torch.tensor([[0.5, 0.1, 0.4, 0.0, 0.0]])
    w = pgsa_weights(r, torch.tensor([3]), top_k=2, window="score", sigma_r=0.1)
    assert torch.allclose(w[0], torch.tensor([1.0, 0.0, math.exp(-0.5), 0.0, 0.0]), atol=1e-6)
    for K in (5, 8):  # K >= n keeps every real position
        w = pgsa_weights(torch.randn(2, 6), torch.tensor([3, 5]), top_k=K, sigma=0.0)
        assert w.tolist() == [[1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 1, 0]]


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    B=st.integers(1, 3), N=st.integers(1, 40), K=st.integers(1, 12), sigma=st.sampled_from([0.0, 0.5, 1.0, 2.0, 4.0]),
    seed=st.integers(0, 2**16),
)
def test_weights_equal_definition(B, N, K, sigma, seed):
    g = torch.Generator().manual_seed(seed)
    r = torch.randn(B, N, generator=g)
    lengths = torch.randint(0, N + 1, (B,), generator=g)
    w = pgsa_weights(r, lengths, top_k=K, sigma=sigma)
    for b in range(B):
        assert torch.allclose(w[b], torch.tensor(brute_weights(r[b], int(lengths[b]), K, sigma)), atol=1e-6)
    assert int((w > 0).sum(1).max()) <= max_kept_columns(K, sigma)


def _inputs(B, N, h, d, seed):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, h, N + 1, d, generator=g, dtype=torch.float64)
    k = torch.randn(B, h, N + 1, d, generator=g, dtype=torch.float64)
    v = torch.randn(B, h, N + 1, d, generator=g, dtype=torch.float64)
    lengths = torch.randint(0, N + 1, (B,), generator=g)
    return q, k, v, lengths, g


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    B=st.integers(1, 3), N=st.integers(1, 48), K=st.integers(1, 10), sigma=st.sampled_from([0.0, 1.0, 2.0, 3.0]),
    window=st.sampled_from(["position", "score"]), rows=st.sampled_from(["all", "candidate"]),
    use_bias=st.booleans(), seed=st.integers(0, 2**16),
)
def test_gathered_equals_dense(B, N, K, sigma, window, rows, use_bias, seed):
    q, k, v, lengths, g = _inputs(B, N, 2, 4, seed)
    w = pgsa_weights(torch.randn(B, N, generator=g), lengths, top_k=K, sigma=sigma, window=window)
    bias = torch.randn(B, N + 1, N + 1, generator=g, dtype=torch.float64) if use_bias else None
    dense = pgsa_attention(q, k, v, w, lengths, 64, bias, rows=rows, impl="dense")
    fast = pgsa_attention(q, k, v, w, lengths, 64, bias, rows=rows, impl="gather")
    assert fast.shape == dense.shape == (B, N + 1 if rows == "all" else 1, 8)
    assert torch.allclose(fast, dense, atol=1e-5, rtol=0)


def test_gathered_equals_dense_with_rab_and_gradients():
    torch.manual_seed(0)
    B, N, h, d = 2, 30, 2, 8
    rab = RelativeBucketedTimeAndPositionBias(N + 1)
    ts = torch.cumsum(torch.randint(1, 5000, (B, N + 1)), 1)
    qt = ts + 10
    lengths = torch.tensor([30, 17])
    table = torch.randn(50, d)
    hist = torch.randint(1, 50, (B, N)) * (torch.arange(N)[None] < lengths[:, None])
    cand = torch.tensor([3, 4])
    x = torch.randn(B, h, N + 1, d, requires_grad=True)
    outs, grads = [], []
    for impl in ("dense", "gather"):
        cfg = PGSAConfig(top_k=4, sigma=1.0, impl=impl)
        o = pgsa(x, x * 0.5, x.tanh(), table, cand, hist, lengths, N + 1, cfg, bias=rab_bias_fn(rab, ts, qt))
        (gx,) = torch.autograd.grad(o.square().sum(), x)
        outs.append(o)
        grads.append(gx)
    assert torch.allclose(outs[0], outs[1], atol=1e-5)
    assert torch.allclose(grads[0], grads[1], atol=1e-5)
    # the BiasFn evaluated everywhere is the module's dense bias
    ar = torch.arange(N + 1).expand(B, N + 1)
    assert torch.allclose(rab_bias_fn(rab, ts, qt)(ar, ar), rab(ts, qt))


def test_row_blocks_change_nothing(monkeypatch):
    """The gathered path computes rows in cache-sized blocks; many tiny blocks give the dense result and grads."""
    import genrec.nn.sparse as sparse

    torch.manual_seed(1)
    B, N, h, d = 2, 150, 2, 8
    rab = RelativeBucketedTimeAndPositionBias(N + 1)
    ts = torch.cumsum(torch.randint(1, 5000, (B, N + 1)), 1)
    lengths = torch.tensor([150, 97])
    w = pgsa_weights(torch.randn(B, N), lengths, top_k=6, sigma=1.0)
    x = torch.randn(B, h, N + 1, d, requires_grad=True)
    monkeypatch.setattr(sparse, "_BLOCK_ELEMS", 1)  # 64-row blocks: 3 of them
    res = []
    for impl in ("dense", "gather"):
        o = pgsa_attention(x, x * 0.5, x.tanh(), w, lengths, N + 1, rab_bias_fn(rab, ts, ts + 10), impl=impl)
        res.append((o, torch.autograd.grad(o.square().sum(), x)[0]))
    assert torch.allclose(res[0][0], res[1][0], atol=1e-5)
    assert torch.allclose(res[0][1], res[1][1], atol=1e-5)

def test_relevance_padding_and_kept_columns():
    table = torch.randn(10, 4)
    r = pgsa_relevance(table, torch.tensor([1]), torch.tensor([[2, 3, 0, 0]]), torch.tensor([2]))
    assert torch.isinf(r[0, 2:]).all() and torch.isfinite(r[0, :2]).all()
    idx, w = kept_columns(torch.tensor([[0.0, 0.5, 0.0, 1.0], [0.2, 0.0, 0.0, 0.0]]))
    assert idx.tolist() == [[1, 3, 4], [0, 0, 4]]
    assert torch.allclose(w, torch.tensor([[0.5, 1.0, 1.0], [0.2, 0.0, 1.0]]))
    idx, w = kept_columns(torch.zeros(1, 3))  # nothing kept: the candidate still sees itself
    assert idx.tolist() == [[3]] and w.tolist() == [[1.0]]


def test_bad_arguments():
    with pytest.raises(ValueError, match="impl"):
        pgsa_attention(*(torch.zeros(1, 1, 3, 2),) * 3, torch.ones(1, 2), torch.tensor([2]), 3, impl="x")
    with pytest.raises(ValueError, match="shapes"):
        pgsa_attention(*(torch.zeros(1, 1, 3, 2),) * 3, torch.ones(1, 5), torch.tensor([2]), 3)
