"""``genrec.nn.gathered_logits``: per-position sampled logits without a (T, N) or (T, R, D) tensor.

The logits and both gradients equal a float64 dense reference (rows longer and shorter than a block, repeated
and shared ids, catalogues smaller and larger than R * D, a gradient to one input only); sampled softmax on the
CPU takes this path and gives the loss and gradients of the dense paths it replaced, with the same negatives;
the benchmark writes its record on the toy data.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import genrec.nn.gathered_logits as gl
from genrec.config import ObjectiveConfig, config_from_dict
from genrec.models.registry import build_model
from genrec.nn.gathered_logits import gathered_logits
from genrec.objectives.next_item import SampledSoftmax
from tests.conftest import assert_saved_record, load_benchmark, make_toy, tiny_cfg

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(("T", "R", "N", "D"), [(1, 1, 2, 3), (300, 7, 20, 8), (513, 16, 900, 4), (40, 64, 5, 6)])
def test_logits_and_gradients_equal_the_dense_product(T, R, N, D, monkeypatch):
    monkeypatch.setattr(gl, "CHUNK", 128)  # several blocks and a short last one
    g = torch.Generator().manual_seed(T + N)
    states, table = torch.randn(T, D, generator=g), torch.randn(N, D, generator=g)
    ids = torch.randint(0, N, (T, R), generator=g)
    ids[0, :] = ids[0, 0]  # one row samples the same item R times
    weight = torch.randn(T, R, generator=g)
    got_s, got_t = states.clone().requires_grad_(), table.clone().requires_grad_()
    got = gathered_logits(got_s, got_t, ids)
    got_grads = torch.autograd.grad((got * weight).sum(), [got_s, got_t])
    ref_s, ref_t = states.double().requires_grad_(), table.double().requires_grad_()
    ref = (ref_s @ ref_t.T).gather(1, ids)
    ref_grads = torch.autograd.grad((ref * weight.double()).sum(), [ref_s, ref_t])
    torch.testing.assert_close(got, ref.float(), atol=1e-5, rtol=1e-5)
    for a, b in zip(got_grads, ref_grads):
        torch.testing.assert_close(a, b.float(), atol=1e-4, rtol=1e-5)


def test_a_gradient_to_the_states_alone():
    states = torch.randn(9, 4, requires_grad=True)
    table, ids = torch.randn(6, 4), torch.randint(0, 6, (9, 3))
    (grad,) = torch.autograd.grad(gathered_logits(states, table, ids).sum(), [states])
    torch.testing.assert_close(grad, table[ids].sum(1))


@pytest.mark.parametrize("num_items", [30, 5000])  # the dense path read a (T, N+1) product, resp. gathered vectors
def test_sampled_softmax_on_the_cpu_equals_the_dense_paths(num_items):
    cfg = config_from_dict(tiny_cfg("sasrec", data={"max_len": 12}))
    torch.manual_seed(0)
    model = build_model(cfg.model, num_items, 12)
    states = torch.nn.functional.normalize(torch.randn(50, 16), dim=-1).requires_grad_()
    positives = torch.randint(1, num_items + 1, (50,))
    out = {}
    for gathered in (True, False):
        obj = SampledSoftmax(ObjectiveConfig(num_negatives=8, temperature=0.05))
        obj.gathered_on_cpu = gathered
        loss = obj(model, states, positives, torch.Generator().manual_seed(3))
        params = [states, *model.parameters()]
        out[gathered] = (loss.detach(), torch.autograd.grad(loss, params, allow_unused=True))
    torch.testing.assert_close(out[True][0], out[False][0], atol=1e-4, rtol=1e-6)
    for a, b in zip(out[True][1], out[False][1]):
        assert (a is None) == (b is None)
        if a is not None:
            torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


def test_the_benchmark_times_both_paths_on_the_toy_data(tmp_path, monkeypatch):
    from genrec.data.schema import write_dataset

    bench = load_benchmark("sampled_logits")
    import common

    monkeypatch.setattr(common, "RESULTS", tmp_path / "results")
    ds = make_toy()
    write_dataset(tmp_path / "toy", ds.interactions, ds.items, ds.manifest, ds.users)
    rec = bench.main(["--recipe", str(ROOT / "configs" / "hstu-ml100k.yaml"), "--data", str(tmp_path / "toy"),
                      "--set", "train.batch_size=16", "model.d_model=16", "objective.shared_negatives=false", "--steps", "2", "--warmup", "1",
                      "--reps", "1"])
    op, step = rec["metrics"]["op"], rec["metrics"]["step"]
    assert op["dense_ms"] > 0 and op["gathered_ms"] > 0 and op["max_grad_diff"] < 1e-3
    assert step["dense_ms"] > 0 and step["gathered_ms"] > 0
    assert_saved_record(tmp_path / "results" / "sampled-logits__hstu-ml100k.json")
