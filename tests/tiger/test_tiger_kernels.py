"""TIGER's fast paths: the fused training kernels compute the reference function (same outputs and gradients
without dropout, the same dropout arithmetic given a mask, the reference itself in evaluation), their dropout
masks are seeded and unbiased, and beams that share their user's encoder memory find what per-row copies find."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from genrec.errors import ConfigError
from genrec.models import tiger_layers
from genrec.models.glass import GLASS
from genrec.models.tiger import TIGER
from genrec.models.tiger_layers import Attention, FeedForward, drop_threshold, keep_mask
from genrec.train.generator import generator_optimizer
from tests.glass import conftest as glass_conf
from tests.tiger.conftest import NUM_ITEMS, tiny_cfg, tiny_model


def pair(seed: int = 0, **over) -> tuple[TIGER, TIGER]:
    """A reference and a fused model with the same weights."""
    ref = tiny_model(seed=seed, num_encoder_layers=2, num_decoder_layers=2, **over)
    fused = TIGER(TIGER.Config(**{**ref.cfg.__dict__, "kernels": "fused"}), num_items=NUM_ITEMS, max_len=20)
    fused.load_state_dict(ref.state_dict())
    return ref, fused.eval()


def batch(seed: int = 0, n: int = 6, full: bool = False):
    g = torch.Generator().manual_seed(seed)
    items = torch.randint(1, NUM_ITEMS + 1, (n, 7), generator=g)
    if not full:
        items[1, 3:] = 0  # a padded row: the key mask is needed
    users = torch.arange(n)
    targets = torch.randint(1, NUM_ITEMS + 1, (n,), generator=g)
    return items, users, targets


def loss_and_grads(model: torch.nn.Module, items, users, targets):
    tok, mask = model.encoder_inputs(items, users)
    sids = model.item_sids[targets]
    logits = model(tok, mask, model.decoder_inputs(sids[:, :-1]))  # (B, m, C)
    loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), sids.reshape(-1))
    model.zero_grad()
    loss.backward()
    return logits.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("full", [False, True])  # with padding, and the fused path's unmasked full batch
def test_fused_training_without_dropout_is_the_reference_function(full):
    ref, fused = pair(seed=1)
    ref.train(), fused.train()
    args = batch(seed=2, full=full)
    a, ga = loss_and_grads(ref, *args)
    b, gb = loss_and_grads(fused, *args)
    finite = torch.isfinite(a)
    assert torch.equal(finite, torch.isfinite(b)) and torch.allclose(a[finite], b[finite], atol=1e-5)
    assert ga.keys() == gb.keys() and len(ga) == len(list(ref.parameters()))
    for name in ga:
        assert torch.allclose(ga[name], gb[name], atol=1e-5, rtol=1e-4), name


def test_evaluation_runs_the_reference_code_bit_for_bit():
    ref, fused = pair(seed=3, dropout=0.3)
    items, users, _ = batch(seed=4)
    tok, mask = ref.encoder_inputs(items, users)
    sids = ref.item_sids[items[:, 0]]
    with torch.no_grad():
        assert torch.equal(ref(tok, mask, ref.decoder_inputs(sids[:, :-1])),
                           fused(tok, mask, fused.decoder_inputs(sids[:, :-1])))
    a, b = ref.generate(items, users, beam_size=5), fused.generate(items, users, beam_size=5)
    assert torch.equal(a.items, b.items) and torch.equal(a.scores, b.scores)


class FixedMasks:
    """Stands in for ``keep_mask``: a recorded random mask per call, replayed in the same order."""

    def __init__(self, seed: int) -> None:
        self.g = torch.Generator().manual_seed(seed)
        self.masks: list[torch.Tensor] = []

    def __call__(self, shape, p, device, dtype=torch.bool):
        m = (torch.rand(tuple(shape), generator=self.g) >= p).to(dtype)
        self.masks.append(m)
        return m


def test_fused_dropout_arithmetic_given_the_masks(monkeypatch):
    """Feed-forward and attention: folded scales and the fused ReLU node equal dropout written out by hand."""
    torch.manual_seed(0)
    p = 0.25
    scale = drop_threshold(p)[1]
    masks = FixedMasks(1)
    monkeypatch.setattr(tiger_layers, "keep_mask", masks)
    ffn = FeedForward(8, 16, p, "relu")
    ffn.fused = True
    x = torch.randn(3, 5, 8, requires_grad=True)
    y = ffn(x, out_scale=2.0)
    ref = ffn.wo(torch.relu(ffn.wi(x)) * masks.masks[0] * scale) * 2.0
    assert torch.allclose(y, ref, atol=1e-6)
    gy = torch.randn_like(y)
    (gx,) = torch.autograd.grad(y, x, gy)
    (rx,) = torch.autograd.grad(ref, x, gy)
    assert torch.allclose(gx, rx, atol=1e-6)

    attn = Attention(8, 2, 4, p)
    attn.fused = True
    k, v = attn.keys_values(x)
    bias = torch.zeros(3, 1, 1, 5).masked_fill(torch.tensor([False, False, True, True, True]), float("-inf"))
    out = attn.attend(x, k, v, bias)
    q = attn.split(attn.q(x))
    w = torch.softmax(q @ k.transpose(-1, -2) / 2.0 + bias, -1) * masks.masks[-1] * scale  # head_dim 4: 1/sqrt = 1/2
    expect = attn.o((w @ v).transpose(1, 2).reshape(3, 5, 8))
    assert torch.allclose(out, expect, atol=1e-6)


def test_keep_masks_are_seeded_and_unbiased():
    t, scale = drop_threshold(0.1)
    assert t == 6554 and scale == 65536 / (65536 - 6554)
    torch.manual_seed(5)
    a = keep_mask((1000, 1000), 0.1, torch.device("cpu"))
    torch.manual_seed(5)
    b = keep_mask((1000, 1000), 0.1, torch.device("cpu"))
    c = keep_mask((1000, 1000), 0.1, torch.device("cpu"))
    assert a.dtype == torch.bool and torch.equal(a, b) and not torch.equal(a, c)
    torch.manual_seed(5)
    assert torch.equal(keep_mask((1000, 1000), 0.1, torch.device("cpu"), torch.bfloat16), a.to(torch.bfloat16))
    keep = float(a.float().mean())
    assert abs(keep - (1 - t / 65536)) < 0.002  # 1e6 draws: about 7 standard deviations
    assert abs(keep * scale - 1.0) < 0.003  # the scale makes the expected output the input
    rows = a.float().mean(1)  # no row-wise pattern (each 64-bit word feeds four neighbours)
    assert float(rows.std()) < 0.02


def test_optimizer_is_fused_only_with_the_fused_kernels():
    params = [torch.nn.Parameter(torch.zeros(3))]
    assert not generator_optimizer(params, tiny_cfg()).defaults["fused"]
    assert generator_optimizer(params, tiny_cfg(model={"kernels": "fused"})).defaults["fused"] is True


def test_unknown_switch_values_are_refused():
    with pytest.raises(ConfigError, match="kernels"):
        tiny_model(kernels="triton")
    with pytest.raises(ConfigError, match="beam_memory"):
        tiny_model(beam_memory="copy")


def test_beams_sharing_the_encoder_memory_find_the_per_row_beams():
    model = tiny_model(seed=6, num_encoder_layers=2, num_decoder_layers=2)
    g = np.random.default_rng(0)
    hist = [g.integers(1, NUM_ITEMS + 1, int(g.integers(1, 8))).tolist() for _ in range(7)]
    users = np.arange(7)
    shared = model.generate(hist, users, beam_size=6)
    model.cfg.beam_memory = "per_row"
    per_row = model.generate(hist, users, beam_size=6)
    assert torch.equal(shared.items, per_row.items) and torch.equal(shared.sids, per_row.sids)
    assert torch.allclose(shared.scores, per_row.scores, atol=1e-5)


def test_rows_out_of_user_order_read_their_own_memory():
    """A state whose rows are not runs of equal length per user falls back to per-row copies, same logits."""
    model = tiny_model(seed=7)
    items, users, _ = batch(seed=8, n=3)
    tok, mask = model.encoder_inputs(items, users)
    step, state = model.step_fn(tok, mask)
    with torch.no_grad():
        logits0, state = step(torch.zeros(3, 0, dtype=torch.long), state)
        grouped = model.reorder_state(state, torch.tensor([0, 0, 1, 1, 2, 2]))
        shuffled = model.reorder_state(state, torch.tensor([2, 0, 1, 0, 2, 1]))
        codes = torch.tensor([[0], [1], [0], [2], [1], [3]])
        a, _ = step(codes, grouped)
        b, _ = step(codes[[4, 0, 2, 1, 5, 3]], shuffled)
    assert torch.allclose(a[[4, 0, 2, 1, 5, 3]], b, atol=1e-5)


def test_glass_trains_on_the_fused_kernels():
    """GLASS inherits the switch: without dropout its fused training step is its reference one."""
    ref = glass_conf.tiny_model(seed=9, dropout=0.0)
    fused = GLASS(GLASS.Config(**{**ref.cfg.__dict__, "kernels": "fused"}), num_items=glass_conf.NUM_ITEMS,
                  max_len=glass_conf.SHORT)
    fused.load_state_dict(ref.state_dict())
    hist = torch.from_numpy(np.stack([np.random.default_rng(s).permutation(glass_conf.NUM_ITEMS)[:10] + 1
                                      for s in range(3)]))
    target = ref.item_sids[hist[:, -1]]
    out = []
    for m in (ref, fused):
        m.train()
        logits = m.teacher_logits(m.encoder_inputs(hist, torch.arange(3)), target)
        logits.logsumexp(-1).sum().backward()
        out.append((logits.detach(), m.tokens.weight.grad.clone()))
    assert torch.allclose(out[0][0], out[1][0], atol=1e-5) and torch.allclose(out[0][1], out[1][1], atol=1e-5)


def test_length_sorted_evaluation_ranks_every_query_as_sample_order_does(toy_data):
    """Queries of similar history length share a call; each query's rank is the one it gets in sample order."""
    from genrec.data.sequences import UserSequences
    from genrec.data.splits import leave_one_out
    from genrec.eval.generation import evaluate_generator

    seqs = UserSequences.from_interactions(toy_data.interactions)
    test = leave_one_out(seqs).test
    model = tiny_model(seed=10, num_encoder_layers=2)
    a = evaluate_generator(model, seqs, test, [1, 5], beam_size=5, batch_size=7, length_sorted=False)
    b = evaluate_generator(model, seqs, test, [1, 5], beam_size=5, batch_size=7)
    assert len(set(test.hist_end.tolist())) > 3  # the order really changes
    assert np.array_equal(a.ranks, b.ranks) and a.metrics == b.metrics


def test_fused_bf16_training_tracks_the_fp32_reference():
    """Under bf16 autocast the fused path (fp32 norm statistics, fp32 softmax) stays close to fp32 training."""
    ref, fused = pair(seed=11)
    ref.train(), fused.train()
    args = batch(seed=12)
    a, ga = loss_and_grads(ref, *args)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        b, gb = loss_and_grads(fused, *args)
    finite = torch.isfinite(a)
    assert torch.allclose(a[finite], b.float()[finite], atol=0.05, rtol=0.05)
    for name in ga:
        cos = torch.nn.functional.cosine_similarity(ga[name].flatten(), gb[name].float().flatten(), dim=0)
        assert cos > 0.98, (name, float(cos))
