"""``train.attention_budget_mb`` (genrec.nn.jagged.attention_budget): packed attention within a memory budget.

Under the budget every length group's score plane G * Lg * Lg fits (a row too long for it stands alone), each row
still lands in exactly one group, and the packed rankers still compute the padded path's logits and gradients;
while gradients are recorded each group's attention is recomputed in the backward pass (the attention runs twice
per group) and the recomputation replays the dropout masks, so with groups the budget leaves whole a step is the
unbudgeted step bit for bit; without gradients nothing is recomputed; a run trains and tests under it.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import genrec.nn.jagged as jagged
from genrec.config import config_from_dict
from genrec.errors import ConfigError
from genrec.models.hpgr import HPGRRanker
from genrec.models.hstu_ranker import HSTURanker
from genrec.nn.jagged import Packing, attention_budget, length_groups
from genrec.train.run import train_run
from tests.hpgr.conftest import make_ctr_toy
from tests.hpgr.test_packed_rankers import (
    LENGTHS,
    MAX_LEN,
    OFF,
    V,
    _grads,
    assert_packed_equals_padded,
    raw_cfg,
    uneven_batch,
)

DENSE = {"hpgr-dense": (HPGRRanker, {"pgsa": False}), "hstu_ranker": (HSTURanker, {})}


@pytest.mark.parametrize("max_elems", [1, 500, 5_000, 10**9])
def test_groups_fit_the_budget_and_cover_every_row_once(max_elems):
    lengths = np.concatenate([np.random.default_rng(0).integers(1, 60, 200), [0]])
    groups = length_groups(lengths, 0.05, max_elems)
    assert sorted(np.concatenate(groups).tolist()) == sorted(np.flatnonzero(lengths).tolist())
    for g in groups:
        width = int(lengths[g].max())
        assert len(g) == 1 or len(g) * width * width <= max_elems
    if max_elems == 10**9:  # a budget nothing reaches cuts where the padding cap alone cuts
        assert [g.tolist() for g in groups] == [g.tolist() for g in length_groups(lengths, 0.05)]


def test_the_budget_is_in_megabytes_of_one_heads_fp32_scores_and_is_undone_on_exit():
    lengths = torch.full((64,), 64)
    assert len(Packing.of(lengths, 64).groups) == 1
    with attention_budget(64 * 64 * 4 * 8 / 2**20):  # room for the scores of 8 rows
        assert [len(g.rows) for g in Packing.of(lengths, 64).groups] == [8] * 8
    assert len(Packing.of(lengths, 64).groups) == 1
    with pytest.raises(ValueError, match="mb must be >= 0"):
        with attention_budget(-1):
            pass


@pytest.mark.parametrize("name", sorted(DENSE))
def test_packed_rankers_under_a_tight_budget_equal_the_padded_path(name):
    cls, extra = DENSE[name]
    torch.manual_seed(3)
    model = cls(cls.Config(**OFF, **extra), V, MAX_LEN)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    batch, cands, _ = uneven_batch(5, LENGTHS[0], 3)
    unbudgeted = Packing.of(batch.lengths + 3, MAX_LEN + 3).groups
    with attention_budget(30 * 30 * 4 * 2 / 2**20):  # two rows of the longest length per group at most
        groups = Packing.of(batch.lengths + 3, MAX_LEN + 3).groups
        assert len(groups) > len(unbudgeted)
        assert all(len(g.rows) * g.width ** 2 <= 30 * 30 * 2 for g in groups)
        assert_packed_equals_padded(model, batch, cands, {})


def test_recomputation_replays_dropout_and_runs_the_attention_twice_only_with_gradients(monkeypatch):
    calls = []
    real = jagged.hstu_pointwise_attention
    monkeypatch.setattr(jagged, "hstu_pointwise_attention", lambda *a, **k: calls.append(1) or real(*a, **k))
    torch.manual_seed(0)
    model = HPGRRanker(HPGRRanker.Config(d_model=16, num_layers=2, num_heads=2, dropout=0.3, linear_dropout=0.2,
                                         pgsa=False), V, MAX_LEN)
    model.train()
    batch, cands, _ = uneven_batch(2, LENGTHS[3], 2)
    weight = torch.randn(cands.shape, generator=torch.Generator().manual_seed(1))
    out = {}
    for budget in (0.0, 1e6):  # a budget that cuts no group: the same groups, recomputed in the backward pass
        torch.manual_seed(7)
        calls.clear()
        with attention_budget(budget):
            logits = model.packed_score(batch, cands)
            forward_calls = len(calls)
            out[budget] = (logits.detach(), _grads(model, (logits * weight).sum()), forward_calls, len(calls))
    (l0, g0, f0, n0), (l1, g1, f1, n1) = out[0.0], out[1e6]
    assert torch.equal(l0, l1) and g0.keys() == g1.keys()
    for k in g0:
        assert torch.equal(g0[k], g1[k]), k
    assert f0 == f1 == n0 > 0 and n1 == 2 * f1  # every group's attention ran once more in the backward pass
    calls.clear()
    with attention_budget(1e6), torch.no_grad():
        model.packed_score(batch, cands)
    assert len(calls) == f0  # no gradients, nothing to recompute


def test_a_run_trains_and_tests_under_the_budget_and_a_negative_one_is_refused(tmp_path):
    raw = raw_cfg("hpgr", pgsa=False)
    raw["train"].update(packed=True, attention_budget_mb=0.001)
    res = train_run(config_from_dict(raw), tmp_path / "run", resume=False, dataset=make_ctr_toy())
    assert 0.0 < res["metrics"]["auc"] < 1.0 and np.isfinite(res["metrics"]["logloss"])
    raw["train"]["attention_budget_mb"] = -1
    with pytest.raises(ConfigError, match="train.attention_budget_mb"):
        config_from_dict(raw)
