"""GLASS's learned-gate options (models/glass_gate.py): each does what it says, and with all of them off the gate is
the spec's, parameter for parameter and bit for bit."""

from __future__ import annotations

import hashlib

import pytest
import torch

from genrec.errors import ConfigError
from genrec.models.glass import GLASS
from genrec.models.glass_gate import GATE_EPS, gate_penalty
from genrec.models.registry import build_model
from genrec.models.tiger import _key_bias
from genrec.objectives import next_sid_loss
from tests.glass.conftest import NUM_ITEMS, SHORT, TINY, tiny_model
from tests.glass.test_glass_model import histories

# sha256 over (name, bytes) of every parameter of tiny_model(seed=1), computed at the commit before the gate
# options existed: the default model draws the same numbers in the same order
BASE_PARAMS_SHA = "b65dca67e0f7e6e005fcc808bf4e330d997cd2d9433e5bebee4b70c955546f19"


def params_sha(model: GLASS) -> str:
    h = hashlib.sha256()
    for name, p in model.named_parameters():
        h.update(name.encode())
        h.update(p.detach().contiguous().numpy().tobytes())
    return h.hexdigest()


def batch(model: GLASS) -> tuple:
    return model.encoder_inputs(histories()), model.item_sids[torch.tensor([1, 2, 3])]


def spec_logits(model: GLASS, inp, target_sids: torch.Tensor) -> torch.Tensor:
    """Teacher logits with the fusion written out as the code before the options: sigmoid of Linear(2d, d),
    squeezed into [eps, 1 - eps], times where it applies."""
    enc = model.encode_inputs(inp)
    dec_input = model.decoder_inputs(target_sids[:, :-1])
    ret = model.retrieve(inp.long, inp.long_len, target_sids[:, 0])
    pos = torch.arange(dec_input.shape[1])
    apply = ((pos[None, :] >= 1) & ret.has[:, None])[..., None]
    kv, bias = model._ret_kv(ret), _key_bias(ret.mask)
    fuses = [None] * model.cfg.num_decoder_layers
    for j, layer in enumerate(model.fused):
        def fuse(h, z_s, j=j):
            z_r = model.ret_attn[j].attend(h, *kv[j], bias)
            g = GATE_EPS + (1 - 2 * GATE_EPS) * torch.sigmoid(model.gates[j](torch.cat([z_s, z_r], -1)))
            g = g * apply.to(z_s.dtype)
            return z_s + g * (z_r - z_s)
        fuses[layer] = fuse
    return model.decode(enc, dec_input, fuses)


def test_defaults_are_the_spec_gate_bit_for_bit():
    model = tiny_model(seed=1)
    assert params_sha(model) == BASE_PARAMS_SHA
    assert all(lin.weight.shape == (32, 64) for lin in model.gates)
    inp, t = batch(model)
    with torch.no_grad():
        assert torch.equal(model.teacher_logits(inp, t), spec_logits(model, inp, t))
    out = model.train().sid_logits((inp, t))
    assert out.aux is None  # no penalty term: the loss is the cross-entropy alone


def test_zero_init_is_exactly_the_fixed_half_gate_at_the_first_step():
    zero = tiny_model(seed=1, gate_init="zero")
    assert all(float(lin.weight.detach().abs().sum() + lin.bias.detach().abs().sum()) == 0 for lin in zero.gates)
    # only the gate is zeroed: every other parameter keeps the default draw
    default = dict(tiny_model(seed=1).named_parameters())
    assert all(torch.equal(p, default[n]) for n, p in zero.named_parameters() if not n.startswith("gates."))
    zero.gate_log = []
    inp, t = batch(zero)
    out = zero.teacher_logits(inp, t)
    g = torch.cat([x.flatten() for x in zero.gate_log])
    assert g.numel() > 0 and bool((g == 0.5).all())
    fixed = tiny_model(seed=1, gate="fixed", fixed_gate=0.5)
    fixed.load_state_dict({k: v for k, v in zero.state_dict().items() if not k.startswith("gates.")})
    assert torch.equal(out, fixed.teacher_logits(inp, t))


def test_temperature_divides_the_sigmoid_argument():
    cold, warm = tiny_model(seed=1), tiny_model(seed=1, gate_temperature=4.0)
    assert params_sha(warm) == params_sha(cold)  # a temperature changes no parameter
    z_s, z_r = torch.randn(2, 3, 32), torch.randn(2, 3, 32)
    logit = cold.gates[0](torch.cat([z_s, z_r], -1))
    expect = GATE_EPS + (1 - 2 * GATE_EPS) * torch.sigmoid(logit / 4.0)
    assert torch.allclose(warm._gate(0, z_s, z_r), expect, atol=1e-7)
    with torch.no_grad():  # a warmer gate sits closer to 0.5
        assert float((warm._gate(0, z_s, z_r) - 0.5).abs().max()) < float((cold._gate(0, z_s, z_r) - 0.5).abs().max())


def test_token_gate_is_one_scalar_per_position():
    model = tiny_model(seed=1, gate_shape="token")
    assert all(lin.weight.shape == (1, 64) and lin.bias.shape == (1,) for lin in model.gates)
    model.gate_log = []
    inp, t = batch(model)
    out = model.teacher_logits(inp, t)
    assert len(model.gate_log) == 2 and all(g.shape == (3, 3, 1) for g in model.gate_log)  # (R, T, 1) per layer
    model.gate_log = None
    with torch.no_grad():  # one number per position moves every dimension: the output still reads the gate
        model.gates[1].bias.fill_(-20.0)
        assert not torch.equal(out, model.teacher_logits(inp, t))


def test_penalty_is_the_mean_squared_logit_of_used_gates_and_pulls_it_to_zero():
    lam = 0.5
    model = tiny_model(seed=1, gate_penalty=lam).train()
    with torch.no_grad():
        for lin in model.gates:
            lin.bias.fill_(3.0)  # every gate well above 0.5
    inp, t = batch(model)
    out = model.sid_logits((inp, t))
    plain = tiny_model(seed=1).train()
    plain.load_state_dict(model.state_dict())
    ce, n = next_sid_loss(plain.sid_logits((inp, t)))
    s, n2 = next_sid_loss(out)
    assert n == n2 and torch.allclose(s, ce + out.aux)  # the term rides on the loss sum, scaled by the count
    assert float(out.aux.detach()) > 0
    model.zero_grad()
    out.aux.backward()
    assert all(float(lin.bias.grad.min()) > 0 for lin in model.gates)  # descent lowers the positive logits
    with torch.no_grad():
        before = float(out.aux.detach())
        for lin in model.gates:
            lin.weight -= 0.1 * lin.weight.grad
            lin.bias -= 0.1 * lin.bias.grad
        assert float(model.sid_logits((inp, t)).aux) < before


def test_penalty_reads_only_the_gates_that_are_used():
    logit = torch.tensor([[[9.0, 9.0], [1.0, 3.0]]])  # (R=1, T=2, w=2)
    used = torch.tensor([[[0.0], [1.0]]])  # position 0 has no key: its gate multiplies nothing
    assert float(gate_penalty([(logit, used)], logit)) == pytest.approx((1 + 9) / 2)
    assert float(gate_penalty([(logit, torch.zeros(1, 2, 1))], logit)) == 0.0


@pytest.mark.parametrize("bad, match", [
    ({"gate_init": "xavier"}, "model.gate_init"),
    ({"gate_shape": "row"}, "model.gate_shape"),
    ({"gate_temperature": 0.0}, "model.gate_temperature"),
    ({"gate_temperature": float("nan")}, "model.gate_temperature"),
    ({"gate_penalty": -0.1}, "model.gate_penalty"),
    ({"gate_penalty": float("inf")}, "model.gate_penalty"),
    ({"gate_init": "zero", "gate": "fixed"}, "model.gate_init shapes the learned fusion gate"),
    ({"gate_shape": "token", "hard_search": False}, "model.gate_shape shapes the learned fusion gate"),
])
def test_bad_gate_settings_are_one_line_config_errors(bad, match):
    with pytest.raises(ConfigError, match=match) as err:
        build_model({**TINY, **bad}, NUM_ITEMS, SHORT)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("over", [{"hard_search": False}, {"hard_search": False, "sid_tier": False},
                                  {"gate": "fixed"}])
def test_variants_without_learned_gates_train(over):
    """The TIGER baseline (no hard search, no SID-Tier), SID-Tier alone and the fixed gate have no gates to
    penalise: their training logits carry no penalty term (a regression: the -tiger and -tier ablations raised)."""
    model = tiny_model(seed=2, **over).train()
    inp, t = batch(model)
    out = model.sid_logits((inp, t))
    assert model.gates is None and out.aux is None
    s, n = next_sid_loss(out)
    s.backward()
    assert n == t.numel() and torch.isfinite(s)
