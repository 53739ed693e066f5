"""GAMER model: masks against their definitions, the released-mask flag, causality, prompts, decoding, beams."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from genrec.data.multibehavior import BehaviorLevels, candidate_items, session_split
from genrec.models import MODELS
from genrec.models.gamer import GAMER, PAD, cross_level_mask, self_mask
from genrec.models.registry import build_model
from genrec.sid import score_sids
from tests.gamer.conftest import cycle_events, make_dataset, tiny_model

P = 4  # tokens per interaction in the tiny model: behavior + 3 SID tokens
ITEMS = torch.tensor([[1, 5, 2, 7, 3, 8], [4, 6, 9, 0, 0, 0]])
BEHS = torch.tensor([[0, 2, 0, 3, 1, 0], [1, 0, 0, 0, 0, 0]])


def test_registered_with_the_released_configuration():
    assert MODELS["gamer"] is GAMER and GAMER.kinds == ("generator",)
    model = build_model({"name": "gamer"}, num_items=100, max_len=20)
    cfg = model.cfg
    assert (cfg.d_model, cfg.num_layers, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim) == (256, 8, 6, 3, 64)
    assert [layer.cross_attn is not None for layer in model.layers] == [False] * 4 + [True] * 4
    assert [layer.inject is not None for layer in model.layers] == [True] * 4 + [False] * 4
    assert len(model.layers[0].ffn.experts) == cfg.sid_length + 2  # pad, behavior token, m SID levels
    assert model.layers[0].ffn.experts[0].gate.in_features == 256 + 64  # behavior injection widens the input
    assert model.layers[7].ffn.experts[0].gate.in_features == 256
    assert model.layers[5].self_attn.k.out_features == 3 * 64 and model.layers[5].cross_attn.gate.in_features == 256
    assert model.vocab_size == 1 + 4 + 4 * 256


def _brute_cross(items: torch.Tensor, behs: torch.Tensor, levels: list[int]) -> torch.Tensor:
    """M_ts = 1[s <= t and λ(s) < λ(t)] over real tokens, written with loops from the definition."""
    b, length = items.shape
    t_len = length * P
    out = torch.zeros(b, t_len, t_len, dtype=torch.bool)
    for r in range(b):
        lev = [levels[int(behs[r, j // P])] if items[r, j // P] > 0 else None for j in range(t_len)]
        for t in range(t_len):
            for s in range(t + 1):
                if lev[s] is not None and lev[t] is not None and lev[s] < lev[t]:
                    out[r, t, s] = True
    return out


@pytest.mark.parametrize("levels", [[0, 1, 2, 3], [0, 2, 1, 3]])
def test_cross_level_mask_equals_its_definition(levels):
    model = tiny_model()
    model.set_behavior_levels(levels)
    tok = model.interaction_tokens(ITEMS, BEHS)
    assert tok.shape == (2, 6 * P) and (tok[1, 3 * P:] == PAD).all()
    route = model.route(tok)
    assert torch.equal(cross_level_mask(route), _brute_cross(ITEMS, BEHS, levels))
    assert route.pos_in_item[0, :P].tolist() == [1, 2, 3, 4] and route.pos_in_item[1, -1] == 0
    assert route.beh_ffn[0, :P].tolist() == [0, 1, 1, 1] and route.beh_att[0, P:2 * P].tolist() == [3] * P
    causal = torch.ones(6 * P, 6 * P, dtype=torch.bool).tril()
    real = tok != PAD
    expect_self = causal & (real[:, None, :] | torch.eye(6 * P, dtype=torch.bool))
    assert torch.equal(self_mask(route), expect_self)


def _layer_inputs(model: GAMER, tok: torch.Tensor):
    route = model.route(tok)
    return model._inputs(route, self_mask(route), cross_level_mask(route)), route


def test_released_flag_differs_exactly_on_tokens_without_admissible_key():
    fixed, released = tiny_model(seed=3), tiny_model(seed=3, released_mask=True)
    tok = fixed.interaction_tokens(ITEMS, BEHS)
    li, _ = _layer_inputs(fixed, tok)
    x = torch.randn(2, tok.shape[1], 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        a, _, _ = fixed.layers[-1].cross_attn(x, li.beh_att, li.cos, li.sin, li.cross_allowed)
        b, _, _ = released.layers[-1].cross_attn(x, li.beh_att, li.cos, li.sin, li.cross_allowed)
    empty = ~li.cross_allowed.any(-1)  # (B, T) tokens with no admissible key
    assert empty.any() and (~empty).any()
    differs = (a - b).abs().amax(-1) > 1e-6  # (B, T)
    assert torch.equal(differs, empty)
    assert (a[empty] == 0).all()  # the fix: no admissible key -> zero cross-level output


def test_no_attention_weight_reaches_a_future_token():
    model = tiny_model(seed=5)
    tok = model.interaction_tokens(ITEMS, BEHS)
    with torch.no_grad():
        logits = model(tok, need_weights=True)
    t = tok.shape[1]
    future = torch.ones(t, t, dtype=torch.bool).triu(1)
    seen = 0
    for layer_w in model.last_attention:
        for kind, w in layer_w.items():
            assert w.shape[-2:] == (t, t)
            assert (w[..., future] == 0).all(), kind
            seen += 1
    assert seen == 4 + 2  # every layer's self-attention and the two cross-level layers
    # numerically: changing the last interaction leaves every earlier position's logits unchanged
    items2 = ITEMS.clone()
    items2[0, -1] = 11
    with torch.no_grad():
        logits2 = model(model.interaction_tokens(items2, BEHS))
    assert torch.allclose(logits[0, :5 * P], logits2[0, :5 * P], atol=1e-6)
    assert not torch.allclose(logits[0, 5 * P:], logits2[0, 5 * P:], atol=1e-6)


def test_released_mask_lets_lowest_level_tokens_see_the_future():
    model = tiny_model(seed=5, released_mask=True)
    tok = model.interaction_tokens(ITEMS, BEHS)
    with torch.no_grad():
        model(tok, need_weights=True)
    w = model.last_attention[-1]["cross"]  # (B, h, T, S)
    future = torch.ones(tok.shape[1], tok.shape[1], dtype=torch.bool).triu(1)
    assert (w[0][:, :P][..., future[:P]] > 0).all()  # the first interaction (pv) averages over everything
    items2 = ITEMS.clone()
    items2[0, -1] = 11
    with torch.no_grad():
        a, b = model(tok), model(model.interaction_tokens(items2, BEHS))
    assert not torch.allclose(a[0, :P], b[0, :P], atol=1e-6)  # the defect: a past token reads the future


def test_branches_see_the_prefix_and_themselves_only():
    model = tiny_model(seed=2)
    tok = model.interaction_tokens(ITEMS[:1], BEHS[:1])
    seg = torch.tensor([[0] * 3 * P + [1] * P + [2] * P + [3] * P])
    with torch.no_grad():
        full = model(tok, seg)
        alone = model(tok[:, :4 * P])  # prefix + branch 1 as a plain sequence
        third = model(torch.cat([tok[:, :3 * P], tok[:, 5 * P:]], 1))  # prefix + branch 3
    assert torch.allclose(full[:, :4 * P], alone, atol=1e-5)
    assert torch.allclose(full[:, 5 * P:], third[:, 3 * P:], atol=1e-5)


def test_prompt_ends_with_the_requested_behavior_token():
    model = tiny_model()
    hist_items = [list(range(1, 13)), [4, 6]]  # the first history is longer than max_len = 10
    hist_behs = [[0] * 12, [2, 0]]
    it, bh = model.history_tensors(hist_items, hist_behs)
    for b in range(4):
        prompt = model.prompt_tokens(it, bh, b)
        assert (prompt[:, -1] == model.beh_offset + b).all()
        assert prompt.shape[1] == 10 * P + 1
        row1 = prompt[1][prompt[1] != PAD]
        assert row1.tolist() == model.interaction_tokens(torch.tensor([[4, 6]]), torch.tensor([[2, 0]]))[0].tolist() + [
            model.beh_offset + b]
        assert (prompt[1, :8 * P] == PAD).all()  # left padding
        first_kept = model.interaction_tokens(torch.tensor([[3]]), torch.tensor([[0]]))[0]
        assert prompt[0, :P].tolist() == first_kept.tolist()  # the last 10 of 12 interactions are kept


@pytest.mark.parametrize("released", [False, True])
def test_kv_cached_steps_match_teacher_forcing(released):
    model = tiny_model(seed=7, released_mask=released)
    it, bh = model.history_tensors([[1, 5, 2, 7], [9]], [[0, 2, 3, 1], [1]])
    for behavior in (0, 3):
        prompt = model.prompt_tokens(it, bh, behavior)
        sids = model.item_sids[torch.tensor([3, 8])]  # (2, m)
        with torch.no_grad():
            step, state = model.step_fn(prompt)
            inc = score_sids(step, sids, state)
            full = torch.cat([prompt, model.sid_offset + torch.arange(3) * 4 + sids], 1)
            logp = torch.log_softmax(model(full).float(), -1)
        t = prompt.shape[1]
        tf = sum(logp[torch.arange(2), t - 1 + j, full[:, t + j]] for j in range(3))
        if released:
            # the defect: in teacher forcing, tokens without an admissible key average over later tokens
            # too, so what training scores is not what decoding computes
            assert not torch.allclose(inc, tf, atol=1e-5)
        else:
            assert torch.allclose(inc, tf, atol=1e-5)


def test_position_logits_give_full_vocabulary_log_probabilities():
    model = tiny_model()
    logits = torch.randn(3, model.vocab_size, generator=torch.Generator().manual_seed(1))
    for t in range(3):
        got = torch.log_softmax(model.position_logits(logits, t), -1)[:, :4]
        lo = model.sid_offset + 4 * t
        assert torch.allclose(got, torch.log_softmax(logits, -1)[:, lo:lo + 4], atol=1e-6)


def test_beams_for_a_behavior_are_items_that_occur_with_it():
    events = cycle_events(num_users=6, seed=1) + [(1, 12, 1, 1), (2, 11, 1, 1)]  # only items 11, 12 get a fav
    ds = make_dataset(events)
    sp = session_split(ds.interactions, BehaviorLevels.from_manifest(ds.manifest), 1800)
    model = tiny_model(seed=9)
    it, bh = model.history_tensors([[1, 2, 3], [4]], [[0, 2, 3], [0]])
    for b in range(4):
        cand = candidate_items(sp, b)
        res = model.generate(it, bh, b, beam_size=6, candidates=cand)
        got = res.items[res.valid]
        assert got.numel() == 2 * min(6, len(cand))
        assert np.isin(got.numpy(), cand).all()
        assert torch.equal(model.item_sids[got], res.sids[res.valid])
    assert set(candidate_items(sp, 1).tolist()) == {11, 12}
