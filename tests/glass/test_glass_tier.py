"""SID-Tier: prototypes, per-item tiers, the per-user histogram, and its dependence on the long window only."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from genrec.errors import ConfigError, DataError
from genrec.sid.sid_tier import code_prototypes, cosine_neighbours, tier_bins, tier_features, tier_histogram
from tests.glass.conftest import LEVEL1, LONG, NUM_ITEMS, SHORT, tiny_model, toy_vectors


def test_prototypes_are_normalised_code_means_and_bins_cover_minus_one_to_one():
    x = torch.tensor([[1.0, 0.0], [0.0, 2.0], [-3.0, 0.0]])
    p = code_prototypes(x, torch.tensor([0, 0, 1]), 3)
    assert torch.allclose(p[0], F.normalize(torch.tensor([1.0, 1.0]), dim=0))
    assert torch.allclose(p[1], torch.tensor([-1.0, 0.0])) and (p[2] == 0).all()  # unused code: zero
    bins = tier_bins(x, p, 4)  # cos 1 -> top bin, cos -1 -> bottom bin, cos 0 -> bin 2
    assert bins[:, 1].tolist() == [0, 2, 3] and bins[:, 2].tolist() == [-1, -1, -1]  # empty code: not counted
    with pytest.raises(DataError):
        code_prototypes(x, torch.tensor([0, 0, 5]), 3)
    with pytest.raises(ConfigError):
        tier_bins(x, p, 0)


def test_histogram_counts_match_a_loop_and_features_are_fractions():
    g = torch.Generator().manual_seed(1)
    bins = torch.randint(0, 5, (3, 7, 4), generator=g)  # (B, L, K)
    valid = torch.rand(3, 7, generator=g) > 0.3
    counts = tier_histogram(bins, valid, 5)  # (B, K, N)
    ref = torch.zeros(3, 4, 5)
    for b in range(3):
        for j in range(7):
            if valid[b, j]:
                for a in range(4):
                    ref[b, a, bins[b, j, a]] += 1
    assert torch.equal(counts, ref)
    n = valid.sum(1).float()
    f = tier_features(counts, n, "fraction")  # (B, K*N + 1)
    assert torch.allclose(f[:, :-1].view(3, 4, 5).sum(-1), torch.ones(3, 4) * (n > 0).float()[:, None])
    assert torch.allclose(f[:, -1], torch.log1p(n))
    assert torch.equal(tier_features(counts, n, "count")[:, :-1], counts.view(3, -1))


def test_neighbours_are_the_closest_other_codes():
    p = F.normalize(torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [-1.0, 0.0]]), dim=-1)
    near = cosine_neighbours(p, 2)
    assert near[0].tolist() == [1, 2] and near[3].tolist() == [2, 1]
    with pytest.raises(ConfigError):
        cosine_neighbours(p, 4)


def test_tier_features_ignore_everything_outside_the_long_window():
    model = tiny_model()
    rng = np.random.default_rng(0)
    base = torch.from_numpy(rng.integers(1, NUM_ITEMS + 1, size=(4, 15)))  # oldest first, no padding
    ref = model.encoder_inputs(base).tier
    changed = base.clone()
    changed[:, :15 - SHORT - LONG] = torch.from_numpy(rng.integers(1, NUM_ITEMS + 1, size=(4, 15 - SHORT - LONG)))
    changed[:, 15 - SHORT:] = torch.from_numpy(rng.integers(1, NUM_ITEMS + 1, size=(4, SHORT)))
    assert not torch.equal(changed, base)
    assert torch.equal(model.encoder_inputs(changed).tier, ref)  # older items and the short window: no effect
    inside = base.clone()
    inside[:, 15 - SHORT - 1] = inside[:, 15 - SHORT - 1] % NUM_ITEMS + 1  # next item: another level-1 code
    assert not torch.equal(model.encoder_inputs(inside).tier, ref)  # a long-window item: it does change


def test_tier_table_equals_direct_cosines():
    model = tiny_model()
    x = torch.from_numpy(toy_vectors())
    codes = model.item_sids[1:, 0]
    protos = code_prototypes(x, codes, model.cfg.codebook_size)
    long = torch.tensor([[3, 7, 11, 0], [1, 2, 0, 0]])
    feats = model.tier_table(long)  # (2, C*N + 1)
    cos = F.normalize(x[long.clamp(min=1) - 1], dim=-1) @ protos.T  # (2, 4, C)
    n = model.cfg.num_tiers
    bins = ((cos + 1) / 2 * n).floor().long().clamp(0, n - 1)
    bins = bins.masked_fill((protos.norm(dim=-1) == 0)[None, None, :], -1)
    ref = tier_features(tier_histogram(bins, long > 0, n), (long > 0).sum(1))
    assert torch.allclose(feats, ref)
    assert feats[0, :-1].view(-1, n)[LEVEL1:].sum() == 0  # codes beyond the level-1 codebook stay empty
