"""HSTU ranker: target-aware mask, M-FALCON equivalence, column-mask hook, learning on a toy CTR set."""

from __future__ import annotations

import torch

from genrec.data.sequences import SeqBatch
from genrec.models import MODELS
from genrec.models.hstu_ranker import HSTURanker, target_aware_mask
from genrec.models.registry import build_model
from tests.hpgr.conftest import mean_bce


def _batch(B=3, N=7, items=30, seed=0):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.tensor([N, 4, 1])[:B]
    valid = torch.arange(N)[None] < lengths[:, None]
    ts = torch.cumsum(torch.randint(1, 10_000, (B, N), generator=g), 1) * valid
    return SeqBatch(items=torch.randint(1, items + 1, (B, N), generator=g) * valid, timestamps=ts,
                    lengths=lengths, query_time=ts.max(1).values + 60)


def _model(**kw):
    cfg = HSTURanker.Config(d_model=16, num_layers=2, num_heads=2, **kw)
    torch.manual_seed(0)
    return HSTURanker(cfg, num_items=30, max_len=10).eval()


def test_registered_as_ranker():
    assert MODELS["hstu_ranker"] is HSTURanker and HSTURanker.kinds == ("ranker",)
    m = build_model({"name": "hstu_ranker", "d_model": 8, "num_heads": 2}, num_items=5, max_len=4)
    assert isinstance(m, HSTURanker)


def test_mask_equals_definition():
    N, C = 5, 3
    lengths = torch.tensor([5, 2, 0])
    m = target_aware_mask(lengths, N, C)
    for b, n in enumerate(lengths.tolist()):
        for i in range(N + C):
            for j in range(N + C):
                if i < N:
                    want = i < n and j <= i and j < n
                else:
                    want = j < n or j == i
                assert bool(m[b, i, j]) == want, (b, i, j)


def test_scoring_together_equals_one_at_a_time():
    model = _model()
    batch = _batch()
    cands = torch.tensor([[3, 5, 7, 9], [1, 2, 3, 4], [30, 29, 28, 3]])
    with torch.no_grad():
        together = model.score(batch, cands)
        alone = torch.cat([model.score(batch, cands[:, c : c + 1]) for c in range(4)], dim=1)
        chunks = model.score(batch, cands, micro_batch=3)
        # extra padding in the history slots changes nothing either
        wide = SeqBatch(items=torch.nn.functional.pad(batch.items, (0, 3)),
                        timestamps=torch.nn.functional.pad(batch.timestamps, (0, 3)),
                        lengths=batch.lengths, query_time=batch.query_time)
        padded = model.score(wide, cands)
    assert together.shape == (3, 4)
    assert torch.allclose(together, alone, atol=1e-5)
    assert torch.allclose(together, chunks, atol=1e-5)
    assert torch.allclose(together, padded, atol=1e-5)


def test_column_mask_hook():
    model = _model()
    batch = _batch()
    cands = torch.tensor([[3], [4], [5]])
    with torch.no_grad():
        base = model.score(batch, cands)
        ones = model.score(batch, cands, column_mask=torch.ones(3, 7))
        per_layer = model.score(batch, cands, column_mask=[None, torch.ones(3, 1, 7)])
        dropped = model.score(batch, cands, column_mask=torch.zeros(3, 7))
        lone = model.score(SeqBatch(items=torch.zeros(3, 1, dtype=torch.long), timestamps=torch.zeros(3, 1,
                           dtype=torch.long), lengths=torch.zeros(3, dtype=torch.long), query_time=batch.query_time),
                           cands)
    assert torch.allclose(base, ones, atol=1e-6) and torch.allclose(base, per_layer, atol=1e-6)
    # dropping every history column leaves the candidate alone with itself, like an empty history
    assert torch.allclose(dropped, lone, atol=1e-5)


def test_bce_decreases_on_toy_set():
    # label = 1 iff the candidate appeared in the history: learnable only through attention
    torch.manual_seed(0)
    B, N, V = 32, 8, 20
    items = torch.randint(1, V + 1, (B, N))
    pos = items[torch.arange(B), torch.randint(0, N, (B,))]
    neg = torch.randint(1, V + 1, (B,))
    cands = torch.stack([pos, neg], 1)
    labels = (cands[:, :, None] == items[:, None, :]).any(-1).float()
    ts = torch.cumsum(torch.randint(1, 100, (B, N)), 1)
    batch = SeqBatch(items=items, timestamps=ts, lengths=torch.full((B,), N), query_time=ts[:, -1] + 10)
    model = HSTURanker(HSTURanker.Config(d_model=16, num_layers=1, num_heads=2, dropout=0.0, linear_dropout=0.0),
                       num_items=V, max_len=N)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(40):
        loss = mean_bce(model, batch, cands, labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.7 * losses[0], losses[::10]
