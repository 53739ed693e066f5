import math

import numpy as np
import pytest
import torch

from genrec.data.sequences import make_history_batch
from genrec.models.registry import build_model
from genrec.nn.attention import causal_valid_mask, hstu_pointwise_attention
from genrec.nn.position import RelativeBucketedTimeAndPositionBias, log_time_bucket, next_event_times


def batch(items, times, qt):
    return make_history_batch([np.array(x) for x in items], [np.array(t) for t in times], np.array(qt), 50)


def test_time_bucket_matches_definition():
    d = torch.tensor([0, 1, 2, 10, -10, 3600, 10**9, 10**18])
    want = [min(128, max(0, math.floor(math.log(max(abs(int(x)), 1)) / 0.301))) for x in d.tolist()]
    assert log_time_bucket(d).tolist() == want


def test_relative_bias_index_formula_on_4x4_toy():
    rab = RelativeBucketedTimeAndPositionBias(max_len=4)
    with torch.no_grad():
        rab.pos_w.copy_(torch.arange(7, dtype=torch.float32))  # w_pos[k] = k
        rab.ts_w.zero_()
    t = torch.tensor([[10, 20, 30, 40]])
    out = rab(t, t)[0]
    for i in range(4):
        for j in range(4):
            assert out[i, j].item() == (4 - 1) + j - i


def test_next_event_times_uses_request_time_at_last_position():
    t = torch.tensor([[1, 2, 3, 0], [5, 6, 0, 0]])
    qt = next_event_times(t, torch.tensor([3, 2]), torch.tensor([9, 7]))
    assert qt[0, :3].tolist() == [2, 3, 9]
    assert qt[1, :2].tolist() == [6, 7]


def test_pointwise_attention_divides_by_fixed_n_not_true_length():
    torch.manual_seed(0)
    q, k, v = torch.randn(1, 1, 3, 4), torch.randn(1, 1, 3, 4), torch.randn(1, 1, 3, 4)
    mask = causal_valid_mask(torch.tensor([3]), 3)
    a = hstu_pointwise_attention(q, k, v, None, mask, norm_len=10)
    s = torch.nn.functional.silu(q[0, 0] @ k[0, 0].T) / 10 * torch.tril(torch.ones(3, 3))
    assert torch.allclose(a[0], s @ v[0, 0], atol=1e-6)


@pytest.mark.parametrize("name", ["sasrec", "hstu"])
def test_outputs_are_causal_and_padding_invariant(name):
    torch.manual_seed(0)
    model = build_model({"name": name, "d_model": 16, "num_layers": 2, "num_heads": 2}, num_items=30, max_len=50)
    model.eval()
    a = batch([[1, 2, 3, 4, 5]], [[1, 2, 3, 4, 5]], [6])
    b = batch([[1, 2, 3, 9, 9]], [[1, 2, 3, 4, 5]], [6])
    with torch.no_grad():
        oa, ob = model.sequence_output(a), model.sequence_output(b)
    # positions 0..2 only see items 1,2,3 (and times up to the next event) in both batches
    assert torch.allclose(oa[0, :2], ob[0, :2], atol=1e-6)
    assert not torch.allclose(oa[0, 4], ob[0, 4])
    # a row's output does not depend on how long the other rows of the batch are
    alone = batch([[4, 5, 6]], [[1, 2, 3]], [4])
    padded = batch([[4, 5, 6], list(range(1, 21))], [[1, 2, 3], list(range(1, 21))], [4, 21])
    with torch.no_grad():
        e1, e2 = model.encode(alone), model.encode(padded)
    assert torch.allclose(e1[0], e2[0], atol=1e-5)
    assert torch.allclose(e1.norm(dim=-1), torch.ones(1), atol=1e-5)


def test_hstu_uses_time_bias():
    torch.manual_seed(0)
    model = build_model({"name": "hstu", "d_model": 16, "num_layers": 1}, num_items=30, max_len=50).eval()
    with torch.no_grad():
        for layer in model.layers:
            layer.rab.ts_w.normal_(0, 1.0)
        x = model.encode(batch([[1, 2, 3]], [[100, 200, 300]], [400]))
        y = model.encode(batch([[1, 2, 3]], [[100, 200, 300]], [10**8]))
    assert not torch.allclose(x, y)


def test_unknown_model_key_is_a_config_error():
    from genrec.errors import ConfigError

    with pytest.raises(ConfigError, match="num_layer"):
        build_model({"name": "hstu", "num_layer": 2}, num_items=10, max_len=10)
    with pytest.raises(ConfigError, match="unknown model 'hstuu'"):
        build_model({"name": "hstuu"}, num_items=10, max_len=10)
