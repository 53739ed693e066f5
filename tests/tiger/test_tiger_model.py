"""TIGER model: config/registry, token layout, KV-cached decoding equals teacher forcing, beams are real items."""

from __future__ import annotations

import pytest
import torch

from genrec.errors import DataError
from genrec.models import MODELS
from genrec.models.registry import build_model
from genrec.models.tiger import BOS, PAD, TIGER
from genrec.sid import SIDTable, beam_search, score_sids
from tests.tiger.conftest import NUM_ITEMS, tiny_model


def test_registered_generator_with_paper_defaults():
    assert MODELS["tiger"] is TIGER and TIGER.kinds == ("generator",)
    model = build_model({"name": "tiger"}, num_items=100, max_len=20)
    cfg = model.cfg
    assert (cfg.num_encoder_layers, cfg.num_decoder_layers, cfg.d_model, cfg.d_ff) == (4, 4, 128, 1024)
    assert cfg.num_heads * cfg.head_dim == 384 and model.decoder[0].self_attn.q.weight.shape == (384, 128)
    assert model.vocab_size == 2 + 4 * 256 + 2000


def test_token_layout_and_masks():
    model = tiny_model()
    items = torch.tensor([[3, 5, 0], [0, 0, 0]])  # second row: empty history
    tok, mask = model.encoder_inputs(items, torch.tensor([7, 8]))
    assert tok.shape == (2, 1 + 3 * 2) and mask.tolist()[0] == [True] * 5 + [False] * 2
    sid3 = model.item_sids[3].tolist()  # (0, 2)
    assert tok[0, 1:3].tolist() == [2 + sid3[0], 2 + 4 + sid3[1]]  # per-position token ranges
    assert model.user_offset <= int(tok[0, 0]) < model.vocab_size
    assert (tok[1, 1:] == PAD).all() and mask[1].tolist() == [True] + [False] * 6
    dec = model.decoder_inputs(torch.tensor([[1, 2]]))
    assert dec.tolist() == [[BOS, 2 + 1, 2 + 4 + 2]]
    with pytest.raises(DataError, match="positions"):
        model.set_sid_table(SIDTable.build([1, 2], [[0, 0], [1, 1]], [2, 2]))


@pytest.mark.parametrize("variant", [{}, {"tie_embeddings": True, "num_user_buckets": 0}])
def test_kv_cached_steps_match_teacher_forcing(variant):
    model = tiny_model(seed=1, num_decoder_layers=2, num_encoder_layers=2, **variant)
    g = torch.Generator().manual_seed(0)
    items = torch.randint(1, NUM_ITEMS + 1, (5, 7), generator=g)
    items[1, 4:] = 0
    tok, mask = model.encoder_inputs(items, torch.arange(5))
    sids = model.item_sids[torch.randint(1, NUM_ITEMS + 1, (5,), generator=g)]  # (5, 2)
    with torch.no_grad():
        full = torch.log_softmax(model(tok, mask, model.decoder_inputs(sids[:, :-1])), -1)  # (5, 2, C)
        step, state = model.step_fn(tok, mask)
        for t in range(2):
            logits, state = step(sids[:, :t], state)
            inc = torch.log_softmax(logits, -1)
            finite = torch.isfinite(full[:, t])
            assert torch.equal(finite, torch.isfinite(inc))
            assert torch.allclose(inc[finite], full[:, t][finite], atol=1e-5)
        # the same through the beam machinery's teacher-forced reference
        ref = full.gather(2, sids[:, :, None]).squeeze(2).sum(1)
        _, state0 = model.step_fn(tok, mask)
        assert torch.allclose(score_sids(step, sids, state0), ref, atol=1e-5)


def test_beams_are_real_items_with_teacher_forced_scores():
    model = tiny_model(seed=2)
    hist = [[3, 7, 1], [9], [2, 6, 8, 5, 3]]
    res = model.generate(hist, [1, 2, 3], beam_size=6, k=4)
    assert res.items.shape == (3, 4) and bool(res.valid.all())
    assert set(res.items.flatten().tolist()) <= set(range(1, NUM_ITEMS + 1))
    assert (res.scores[:, :-1] >= res.scores[:, 1:]).all()
    assert torch.equal(model.item_sids[res.items], res.sids)
    # scores equal the teacher-forced log-probability of each returned SID (checks the beam reordering)
    tok, mask = model.encoder_inputs(model.history_tensor(hist), torch.tensor([1, 2, 3]))
    with torch.no_grad():
        logp = torch.log_softmax(model(tok.repeat_interleave(4, 0), mask.repeat_interleave(4, 0),
                                       model.decoder_inputs(res.sids.reshape(12, 2)[:, :-1])), -1)
    ref = logp.gather(2, res.sids.reshape(12, 2, 1)).squeeze(2).sum(1).view(3, 4)
    assert torch.allclose(res.scores, ref, atol=1e-5)
    # a beam as wide as the catalogue lists every item exactly once
    full = model.generate(hist[:1], [1], beam_size=NUM_ITEMS)
    assert sorted(full.items[0].tolist()) == list(range(1, NUM_ITEMS + 1))
    # unconstrained search over the same model may name SIDs outside the table; never crashes
    step, state = model.step_fn(tok, mask)
    with torch.no_grad():
        free = beam_search(step, model.trie(), 3, 12, state, constrained=False)
    assert free.items.shape == (3, 12) and torch.equal(free.valid, free.items >= 0)


def test_sid_table_travels_with_the_weights():
    a = tiny_model(seed=3)
    b = TIGER(a.cfg, num_items=NUM_ITEMS, max_len=20)
    b.load_state_dict(a.state_dict())
    assert torch.equal(b.item_sids, a.item_sids)
    hist = [[1, 2, 3]]
    assert torch.equal(b.eval().generate(hist, [4], beam_size=5).items, a.generate(hist, [4], beam_size=5).items)
