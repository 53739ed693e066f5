import numpy as np
import pytest
import torch

from genrec.config import ObjectiveConfig
from genrec.eval.metrics import metrics_from_ranks
from genrec.eval.ranking import auc
from genrec.models.registry import build_model
from genrec.objectives import build_objective
from genrec.objectives.next_item import MASKED_LOGIT, SampledSoftmax


def test_metrics_from_known_ranks():
    m = metrics_from_ranks(np.array([0, 1, 4, 20]), [1, 5, 10])
    assert m["hr@1"] == 0.25 and m["hr@5"] == 0.75 and m["hr@10"] == 0.75
    assert m["ndcg@5"] == pytest.approx((1 + 1 / np.log2(3) + 1 / np.log2(6)) / 4)
    assert m["mrr"] == pytest.approx((1 + 1 / 2 + 1 / 5 + 1 / 21) / 4)


def test_auc_with_ties():
    assert auc(np.array([1, 0, 1, 0]), np.array([0.9, 0.1, 0.5, 0.5])) == pytest.approx(0.875)


def test_sampled_negative_equal_to_positive_is_masked():
    model = build_model({"name": "sasrec", "d_model": 8, "num_layers": 1}, num_items=1, max_len=5)
    obj = SampledSoftmax(ObjectiveConfig(num_negatives=4))
    states = model.item_vectors(torch.tensor([1]))
    # with one item every negative equals the positive: all masked, loss ~ 0
    loss = obj(model, states, torch.tensor([1]))
    assert loss.item() == pytest.approx(0.0, abs=1e-6)
    assert MASKED_LOGIT < -1e4


@pytest.mark.parametrize("name", ["sampled_softmax", "full_softmax", "bce"])
@pytest.mark.parametrize("shared", [True, False])
def test_objectives_decrease_on_a_fixed_target(name, shared):
    torch.manual_seed(0)
    model = build_model({"name": "sasrec", "d_model": 8, "num_layers": 1}, num_items=50, max_len=5)
    obj = build_objective(ObjectiveConfig(name=name, num_negatives=8, shared_negatives=shared))
    states = torch.nn.Parameter(torch.randn(4, 8))
    pos = torch.tensor([3, 7, 9, 11])
    opt = torch.optim.Adam([states, *model.parameters()], lr=0.05)
    first = None
    for step in range(60):
        g = torch.Generator().manual_seed(step)
        loss = obj(model, torch.nn.functional.normalize(states, dim=-1), pos, g)
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.5 * first


def test_unknown_objective():
    from genrec.errors import ConfigError

    with pytest.raises(ConfigError, match="unknown objective"):
        build_objective(ObjectiveConfig(name="softmaxx"))


@pytest.mark.parametrize("num_items", [30, 500])  # below and above R x D = 8 x 16: both per-position paths
def test_per_position_negatives_read_from_one_product_equal_the_gathered_ones(num_items):
    """Per-position sampled softmax on a small catalogue takes its negatives' logits from one (T, N+1) product;
    loss and gradients equal the gathered (T, R, D) computation with the same draws."""
    torch.manual_seed(0)
    model = build_model({"name": "sasrec", "d_model": 16, "num_layers": 1}, num_items=num_items, max_len=5)
    obj = SampledSoftmax(ObjectiveConfig(num_negatives=8, shared_negatives=False))
    states = torch.nn.functional.normalize(torch.randn(12, 16), dim=-1).requires_grad_()
    pos = torch.randint(1, num_items + 1, (12,))
    loss = obj(model, states, pos, torch.Generator().manual_seed(3))
    got = torch.autograd.grad(loss, [states, model.item_emb.weight])
    neg = torch.randint(1, num_items + 1, (12, 8), generator=torch.Generator().manual_seed(3))
    pos_logit = (states * model.item_vectors(pos)).sum(-1, keepdim=True) / obj.tau
    neg_logit = torch.einsum("td,trd->tr", states, model.item_vectors(neg)) / obj.tau
    neg_logit = neg_logit.masked_fill(pos[:, None] == neg, MASKED_LOGIT)
    want_loss = -torch.log_softmax(torch.cat([pos_logit, neg_logit], 1), 1)[:, 0].sum()
    want = torch.autograd.grad(want_loss, [states, model.item_emb.weight])
    assert loss.item() == pytest.approx(want_loss.item(), rel=1e-5)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-5)


def test_history_negatives_add_each_positions_earlier_items_to_its_softmax():
    from genrec.errors import ConfigError
    from genrec.objectives.next_item import history_logits

    torch.manual_seed(0)
    model = build_model({"name": "sasrec", "d_model": 8, "num_layers": 1}, num_items=20, max_len=4)
    items = torch.tensor([[5, 6, 7, 0], [9, 3, 9, 2]])  # (B, L), 0 = padding; row 1 repeats item 9
    targets = torch.tensor([[6, 7, 8, 0], [3, 9, 2, 4]])
    states = torch.nn.functional.normalize(torch.randn(2, 4, 8), dim=-1)
    h = history_logits(model, states, items, targets)  # (B, L, L)
    v = model.item_vectors(items)
    for b in range(2):
        for t in range(4):
            for j in range(4):
                visible = j <= t and items[b, j] > 0 and items[b, j] != targets[b, t]
                want = (states[b, t] @ v[b, j]).item() if visible else MASKED_LOGIT
                assert h[b, t, j].item() == pytest.approx(want, abs=1e-6)
    assert h[1, 1, 0].item() == MASKED_LOGIT  # item 9 is position 1's target: a repeat is not a negative
    valid = targets > 0
    obj = SampledSoftmax(ObjectiveConfig(num_negatives=4, history_negatives=True))
    plain = obj(model, states[valid], targets[valid], torch.Generator().manual_seed(1))
    more = obj(model, states[valid], targets[valid], torch.Generator().manual_seed(1), h[valid])
    assert more.item() > plain.item()  # extra negatives can only raise each position's loss
    with pytest.raises(ConfigError, match="history_negatives needs objective.name sampled_softmax"):
        build_objective(ObjectiveConfig(name="full_softmax", history_negatives=True))
