"""``model.similarity``: cosine (default, L2-normalised states and items) or dot (raw vectors, RecTools' SASRec)
for both retrievers; an unknown value is refused when the model is built."""

from __future__ import annotations

import pytest
import torch

from genrec.config import config_from_dict
from genrec.data.sequences import SeqBatch
from genrec.errors import ConfigError
from genrec.models.registry import build_model
from tests.conftest import tiny_cfg


def _batch() -> SeqBatch:
    items = torch.tensor([[3, 5, 7, 0], [2, 4, 0, 0]])
    ts = torch.arange(8).view(2, 4) * 100
    return SeqBatch(items=items, timestamps=ts, lengths=torch.tensor([3, 2]), query_time=torch.tensor([900, 900]))


@pytest.mark.parametrize("name", ["sasrec", "hstu"])
def test_dot_keeps_raw_vectors_and_cosine_normalises_them(name):
    torch.manual_seed(0)
    model = {"name": name, "d_model": 16, "num_layers": 1, "num_heads": 1, "dropout": 0.0}
    cos = build_model(model, 10, 4).eval()
    torch.manual_seed(0)
    dot = build_model({**model, "similarity": "dot"}, 10, 4).eval()
    ids = torch.arange(1, 11)
    assert torch.allclose(cos.item_vectors(ids).norm(dim=-1), torch.ones(10), atol=1e-5)
    raw = dot.item_vectors(ids)
    assert not torch.allclose(raw.norm(dim=-1), torch.ones(10), atol=1e-3)
    assert torch.allclose(cos.item_vectors(ids), raw / raw.norm(dim=-1, keepdim=True), atol=1e-6)  # same weights
    with torch.no_grad():
        s_cos, s_dot = cos.encode(_batch()), dot.encode(_batch())
    assert torch.allclose(s_cos, s_dot / s_dot.norm(dim=-1, keepdim=True), atol=1e-5)


def test_an_unknown_similarity_is_refused():
    cfg = config_from_dict(tiny_cfg("sasrec"))
    with pytest.raises(ConfigError, match="model.similarity: 'l1'"):
        build_model({**cfg.model, "similarity": "l1"}, 10, 4)


@pytest.mark.parametrize("name", ["sasrec", "hstu"])
def test_the_packed_path_keeps_the_models_similarity(name):
    torch.manual_seed(0)
    model = build_model({"name": name, "d_model": 16, "num_layers": 1, "num_heads": 1, "dropout": 0.0,
                         "similarity": "dot"}, 10, 4).eval()
    batch = _batch()
    with torch.no_grad():
        padded = model.sequence_output(batch)[batch.mask]  # (T, D) real positions, row-major
        packed = model.packed_output(batch)
    assert torch.allclose(packed, padded, atol=1e-5)
    assert not torch.allclose(packed.norm(dim=-1), torch.ones(len(packed)), atol=1e-3)


def test_positions_last_gives_the_newest_item_position_zero_in_both_paths():
    import math

    torch.manual_seed(0)
    model = build_model({"name": "sasrec", "d_model": 16, "num_layers": 1, "num_heads": 1, "dropout": 0.0,
                         "positions": "last"}, 10, 4).eval()
    batch = _batch()
    x, _, _ = model._inputs(batch)  # (B, L, D)
    for b, n in enumerate(batch.lengths.tolist()):
        for j in range(n):  # item j of n sits n - 1 - j places before the newest
            want = model.item_emb.weight[batch.items[b, j]] * math.sqrt(16) + model.pos_emb.weight[n - 1 - j]
            assert torch.allclose(x[b, j], want, atol=1e-6)
    with torch.no_grad():
        torch.testing.assert_close(model.packed_output(batch), model.sequence_output(batch)[batch.mask],
                                   atol=1e-5, rtol=0)
    first = build_model({"name": "sasrec", "d_model": 16, "num_layers": 1, "num_heads": 1, "dropout": 0.0}, 10, 4)
    first.load_state_dict(model.state_dict())
    assert not torch.allclose(first.eval().encode(batch), model.encode(batch), atol=1e-4)
    with pytest.raises(ConfigError, match="model.positions: 'middle'"):
        build_model({"name": "sasrec", "d_model": 16, "positions": "middle"}, 10, 4)


def test_item_init_std_and_input_scale_are_the_recipes():
    torch.manual_seed(0)
    rt = build_model({"name": "sasrec", "d_model": 64, "num_layers": 1, "dropout": 0.0, "item_init_std": 1.0,
                      "scale_inputs": False}, 500, 4)
    torch.manual_seed(0)
    default = build_model({"name": "sasrec", "d_model": 64, "num_layers": 1, "dropout": 0.0}, 500, 4)
    assert 0.8 < float(rt.item_emb.weight.detach()[1:].std()) < 0.95  # N(0, 1) cut at +-2
    assert 0.018 < float(default.item_emb.weight.detach()[1:].std()) < 0.022
    assert rt.input_scale == 1.0 and default.input_scale == 8.0
    assert float(rt.item_emb.weight.detach()[0].abs().sum()) == 0.0  # padding row stays zero
    with pytest.raises(ConfigError, match="model.item_init_std must be > 0"):
        build_model({"name": "sasrec", "d_model": 16, "item_init_std": 0.0}, 10, 4)


def test_xavier_init_redraws_every_weight_matrix_as_rectools_does():
    cfg = {"name": "sasrec", "d_model": 64, "num_layers": 1, "dropout": 0.0}
    torch.manual_seed(0)
    xav = build_model({**cfg, "init": "xavier"}, 2000, 50)
    torch.manual_seed(0)
    default = build_model(cfg, 2000, 50)
    items = float(xav.item_emb.weight.detach()[1:].std())
    assert abs(items - (2 / (2001 + 64)) ** 0.5) < 0.002  # Xavier normal over the (I + 1, D) table: about 0.031
    assert abs(float(xav.pos_emb.weight.detach().std()) - (2 / (50 + 64)) ** 0.5) < 0.02  # positions: about 0.13
    assert abs(float(xav.blocks[0].q.weight.detach().std()) - (2 / 128) ** 0.5) < 0.01
    assert float(xav.item_emb.weight.detach()[0].abs().sum()) == 0.0  # the padding row stays zero
    assert torch.equal(xav.final_ln.weight, default.final_ln.weight)  # vectors (norms, biases) are kept
    assert not torch.equal(xav.blocks[0].q.weight, default.blocks[0].q.weight)
    with pytest.raises(ConfigError, match="model.init: 'he' is not one of default, xavier, rectools"):
        build_model({**cfg, "init": "he"}, 10, 4)


def test_rectools_init_starts_the_attention_as_torch_multihead_attention():
    """init=rectools: Xavier as above, q/k/v drawn as one (3d, d) matrix (std sqrt(2 / 4d)) and every attention
    bias zero (nn.MultiheadAttention's start), the rest as init=xavier."""
    cfg = {"name": "sasrec", "d_model": 64, "num_layers": 2, "dropout": 0.0}
    torch.manual_seed(0)
    rt = build_model({**cfg, "init": "rectools"}, 2000, 50)
    for blk in rt.blocks:
        qkv = torch.cat([blk.q.weight, blk.k.weight, blk.v.weight]).detach()
        assert abs(float(qkv.std()) - (2 / (4 * 64)) ** 0.5) < 0.006  # 0.088, against 0.125 for three (d, d)
        assert all(float(lin.bias.detach().abs().sum()) == 0.0 for lin in (blk.q, blk.k, blk.v, blk.o))
        assert abs(float(blk.o.weight.detach().std()) - (2 / 128) ** 0.5) < 0.01
        assert float(blk.ffn.w1.bias.detach().abs().sum()) > 0  # other biases keep their start
    assert float(rt.item_emb.weight.detach()[0].abs().sum()) == 0.0


@pytest.mark.parametrize("name", ["sasrec", "hstu"])
@pytest.mark.parametrize("packed", [False, True])
def test_item_dropout_drops_the_table_once_per_step_for_inputs_and_scored_items(name, packed):
    torch.manual_seed(0)
    model = build_model({"name": name, "d_model": 32, "num_layers": 1, "dropout": 0.0, "item_dropout": 0.5,
                         "similarity": "dot"}, 10, 4)
    ids = torch.arange(11)
    model.train()
    states = model.packed_output(_batch()) if packed else model.sequence_output(_batch())
    scored = model.item_vectors(ids)  # (11, D): the rows the loss reads this step
    table = model.item_emb.weight
    kept = scored != 0
    assert 0.3 < float(kept[1:].float().mean()) < 0.7  # about half of every row dropped ...
    assert torch.allclose(scored[kept], table[kept] * 2.0)  # ... and the rest scaled by 1 / (1 - p)
    (states.sum() + scored.sum()).backward()
    # the inputs read the same mask: item 3 is an input (first row); its dropped coordinates get no gradient
    grad3, drop3 = table.grad[3], ~kept[3]
    assert drop3.any() and float(grad3[drop3].abs().sum()) == 0.0 and float(grad3[~drop3].abs().sum()) > 0
    model.eval()
    assert torch.equal(model.item_vectors(ids), table.detach() * 1.0)  # no dropout outside training
    with pytest.raises(ConfigError, match=r"model.item_dropout must be in \[0, 1\)"):
        build_model({"name": name, "d_model": 16, "item_dropout": 1.0}, 10, 4)


def test_pad_keys_equal_attention_over_a_left_padded_window_without_key_mask():
    """RecTools pads every sequence on the left to the window and lets attention read the zero padding inputs;
    ``pad_keys`` gives the same outputs at the real positions from genrec's right-padded batch."""
    from genrec.models.sasrec import SASRecBlock

    torch.manual_seed(0)
    D, window, n, width = 8, 6, 3, 4
    blk = SASRecBlock(D, 2, D, 0.0).eval()
    with torch.no_grad():
        blk.k.bias.normal_()
        blk.v.bias.normal_()
    x = torch.randn(1, width, D) * torch.tensor([1.0] * n + [0.0] * (width - n))[None, :, None]
    ar = torch.arange(width)
    mask = (ar[None, :] <= ar[:, None]) & ((ar < n) | (ar == 0))[None, :]
    pad_log = torch.log(torch.tensor([float(window - n)]))
    ours = blk(x, mask[None], pad_log=pad_log)[0, :n]  # (n, D)
    left = torch.cat([torch.zeros(1, window - n, D), x[:, :n]], 1)  # (1, window, D): RecTools' layout
    causal = torch.ones(window, window, dtype=torch.bool).tril()[None]
    reference = blk(left, causal)[0, window - n:]
    assert torch.allclose(ours, reference, atol=1e-5)
    assert not torch.allclose(blk(x, mask[None])[0, :n], reference, atol=1e-3)  # without it they differ
    full = blk(x, mask[None], pad_log=torch.log(torch.tensor([0.0])))[0, :n]  # a full window: no padding key
    assert torch.allclose(full, blk(x, mask[None])[0, :n], atol=1e-6)


def test_pad_keys_model_paths_agree():
    torch.manual_seed(0)
    model = build_model({"name": "sasrec", "d_model": 16, "num_layers": 2, "dropout": 0.0, "pad_keys": True},
                        10, 6).eval()
    batch = _batch()
    seq = model.sequence_output(batch)  # (B, L, D)
    last = seq[torch.arange(2), batch.lengths - 1]
    assert torch.allclose(model.encode(batch), last, atol=1e-5)
    assert torch.allclose(model.packed_output(batch), seq[batch.mask], atol=1e-6)
