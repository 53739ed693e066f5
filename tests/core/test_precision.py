"""train.precision: validated at load, resolved per device (with an fp32 fallback), applied by the one training
loop to every step's forward and loss, never to the fp32 weights, gradients and optimizer state; ``auto`` on the
CPU trains exactly as before."""

from __future__ import annotations

import logging
import math

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from genrec.config import TrainConfig, config_from_dict, load_config
from genrec.errors import ConfigError
from genrec.nn import precision
from genrec.train.base import non_finite_loss
from genrec.train.trainer import Trainer
from tests.conftest import tiny_cfg

MATMULS = {"mm", "addmm", "bmm", "baddbmm", "_scaled_dot_product_flash_attention_for_cpu"}
CPU, CUDA = torch.device("cpu"), torch.device("cuda")


class MatmulDtypes(TorchDispatchMode):
    """Records the input dtypes of every matmul-like aten op run under it (after autocast has cast them)."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[str, set[torch.dtype]]] = []
        self.autocast_on: list[bool] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        if name in MATMULS:
            self.seen.append((name, {a.dtype for a in args if isinstance(a, torch.Tensor) and a.is_floating_point()}))
        return func(*args, **(kwargs or {}))


@pytest.fixture
def native_bf16(monkeypatch):
    """Pretend the CPU has AVX512-BF16/AMX (bf16 is then emulated where it has not: same results, slower)."""
    monkeypatch.setattr(precision, "cpu_bf16_supported", lambda: True)
    monkeypatch.setattr(precision, "_said", set())


def trainer(toy, tmp_path, model="sasrec", **train) -> Trainer:
    cfg = config_from_dict(tiny_cfg(model, train={"lr": 0.01, **train}))
    return Trainer(cfg, tmp_path / f"{model}-{train.get('precision', 'auto')}", toy, resume=False)


# -- config ------------------------------------------------------------------------------------------------
def test_precision_is_validated_at_load_with_the_key_named():
    assert TrainConfig().precision == "auto" and TrainConfig().bf16
    assert load_config(None, ["train.precision=bf16"]).train.precision == "bf16"
    with pytest.raises(ConfigError, match=r"train\.precision: 'fp16' is not one of auto, fp32, bf16"):
        config_from_dict({"train": {"precision": "fp16"}})
    with pytest.raises(ConfigError, match=r"train\.precision=bf16 contradicts train\.bf16=false"):
        load_config(None, ["train.bf16=false", "train.precision=bf16"])
    for ok in (["train.bf16=false", "train.precision=fp32"], ["train.bf16=false"], ["train.precision=fp32"]):
        load_config(None, ok)  # bf16: false with auto or fp32 is fp32 everywhere, as it always was


# -- resolution --------------------------------------------------------------------------------------------
def test_resolution_keeps_auto_as_it_was_and_honours_bf16_where_the_cpu_can(native_bf16):
    cfg = lambda **kw: TrainConfig(**kw)  # noqa: E731
    assert precision.resolve_precision(cfg(), CPU) == "fp32"  # auto: the CPU never autocast
    assert precision.resolve_precision(cfg(), CUDA) == "bf16"  # auto: CUDA did, under train.bf16 (default true)
    assert precision.resolve_precision(cfg(bf16=False), CUDA) == "fp32"
    assert precision.resolve_precision(cfg(precision="fp32"), CUDA) == "fp32"
    assert precision.resolve_precision(cfg(precision="fp32"), CPU) == "fp32"
    assert precision.resolve_precision(cfg(precision="bf16"), CPU) == "bf16"


def test_bf16_on_a_cpu_without_native_bf16_falls_back_to_fp32_with_one_line(monkeypatch, caplog):
    monkeypatch.setattr(precision, "cpu_bf16_supported", lambda: False)
    monkeypatch.setattr(precision, "_said", set())
    with caplog.at_level(logging.WARNING, logger="genrec.nn.precision"):
        for _ in range(3):
            assert precision.resolve_precision(TrainConfig(precision="bf16"), CPU) == "fp32"
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1 and "train.precision=bf16" in lines[0] and "fp32" in lines[0]


def test_the_detection_reads_the_cpu_flags_torch_reports(monkeypatch):
    for avx512_bf16, amx, expect in ((False, False, False), (True, False, True), (False, True, True)):
        monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda v=avx512_bf16: v, raising=False)
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda v=amx: v, raising=False)
        assert precision.cpu_bf16_supported() is expect
    monkeypatch.setattr(torch.backends.mkldnn, "is_available", lambda: False)
    assert precision.cpu_bf16_supported() is False  # no oneDNN: no native bf16 kernels at all


def test_a_non_finite_loss_names_the_switch_that_turns_bf16_off(toy, tmp_path, native_bf16):
    msg = str(non_finite_loss(float("nan"), 7))
    assert "step 7" in msg and "train.lr" in msg and "bf16" not in msg
    assert trainer(toy, tmp_path).fp32_switch() == ""  # auto on the CPU: fp32, nothing to name
    assert trainer(toy, tmp_path, precision="bf16").fp32_switch() == "train.precision=fp32"
    cuda = str(non_finite_loss(float("inf"), 9, "train.bf16=false"))  # what auto on CUDA names, as before
    assert "train.bf16=false (bf16 autocast is on)" in cuda and "train.lr" in cuda


# -- the loop ----------------------------------------------------------------------------------------------
def recorded_step(tr: Trainer, rows) -> tuple[float, MatmulDtypes]:
    """One loop step; the matmuls of its forward + loss (not its backward) are recorded."""
    rec = MatmulDtypes()
    step_loss = tr.step_loss

    def recording(batch):
        with rec:
            rec.autocast_on.append(torch.is_autocast_enabled("cpu"))
            out = step_loss(batch)
        assert out[0].dtype == torch.float32  # the loss sum is reduced in fp32 (objectives take .float() logits)
        return out

    tr.step_loss = recording
    value, _ = tr._train_step(rows)
    tr.step_loss = step_loss
    return value, rec


@pytest.mark.parametrize("model", ["sasrec", "hstu"])
def test_a_bf16_cpu_step_runs_its_matmuls_in_bf16_and_keeps_fp32_state(toy, tmp_path, native_bf16, model):
    tr = trainer(toy, tmp_path, model, precision="bf16")
    assert tr.precision == "bf16"
    rows = tr.epoch_batches(0)[0]
    value, rec = recorded_step(tr, rows)
    assert math.isfinite(value) and rec.autocast_on == [True]
    # every projection and the objective's scoring matmul run in bf16 (SASRec's attention with dropout goes to
    # SDPA's math path, which torch computes in fp32 on the CPU; HSTU's pointwise attention is two bf16 bmm)
    dense = [d for name, d in rec.seen if name in ("mm", "addmm") or model == "hstu"]
    assert len(dense) >= 5 and all(d == {torch.bfloat16} for d in dense), rec.seen
    for p in tr.model.parameters():  # master weights, gradients and AdamW moments stay fp32
        assert p.dtype == torch.float32 and (p.grad is None or p.grad.dtype == torch.float32)
    moments = [s["exp_avg"] for s in tr.optimizer.state.values()]
    assert moments and all(m.dtype == torch.float32 for m in moments)
    for rows in tr.epoch_batches(0)[1:6]:
        assert math.isfinite(tr._train_step(rows)[0])


@pytest.mark.parametrize("model", ["sasrec", "hstu"])
def test_auto_on_the_cpu_steps_bit_for_bit_as_plain_fp32(toy, tmp_path, native_bf16, monkeypatch, model):
    """auto (the default) never autocasts on the CPU: its first loss is the loss module's own fp32 value, and
    auto, fp32 and an unsupported bf16 request (fp32 fallback) train to the same weights bit for bit."""
    runs = {}
    for setting in ("auto", "fp32", "fallback"):
        if setting == "fallback":
            monkeypatch.setattr(precision, "cpu_bf16_supported", lambda: False)
        tr = trainer(toy, tmp_path, model, precision="bf16" if setting == "fallback" else setting)
        assert tr.precision == "fp32"
        batches = tr.epoch_batches(0)[:4]
        rng = torch.get_rng_state()
        batch = tr.train_batch(batches[0])
        lsum, count = tr.loss_module(batch, tr._step_generator(0))  # outside any loop context
        torch.set_rng_state(rng)
        value, rec = recorded_step(tr, batches[0])
        assert value == float(lsum.detach()) / float(count) and rec.autocast_on == [False]
        assert all(d == {torch.float32} for _, d in rec.seen)
        values = [value] + [tr._train_step(rows)[0] for rows in batches[1:]]
        runs[setting] = (values, {k: v.clone() for k, v in tr.model.state_dict().items()})
    ref_values, ref_weights = runs["auto"]
    for setting in ("fp32", "fallback"):
        values, weights = runs[setting]
        assert values == ref_values
        assert all(torch.equal(weights[k], ref_weights[k]) for k in ref_weights)


def test_evaluation_stays_fp32_on_a_bf16_cpu_run(toy, tmp_path, native_bf16):
    tr = trainer(toy, tmp_path, precision="bf16")
    with tr.autocast():  # the trainers' own context, also the one rankers / GAMER evaluate under
        assert not torch.is_autocast_enabled("cpu")
    with tr.step_autocast():
        assert torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16
    metrics, _ = tr.validate()
    assert all(math.isfinite(v) for v in metrics.values())


# -- GLASS: the hard-search branch under bf16 ----------------------------------------------------------------
def test_glass_gate_and_retrieved_attention_stay_fp32_under_bf16_autocast():
    """The learned gate is built to stay strictly inside (0, 1) so both attentions keep a gradient; in bf16 a
    saturated gate rounds to exactly 1 (next to 1 bf16 steps by 2^-8 > GATE_EPS). The hard-search branch
    therefore runs in fp32 under autocast while the rest of the decoder runs in bf16."""
    from tests.glass.conftest import tiny_model
    from tests.glass.test_glass_model import histories

    model = tiny_model(seed=1)
    with torch.no_grad():
        for lin in model.gates:
            lin.weight.mul_(1e4)  # pre-activations far into saturation, where a trained gate ends up
    out: dict[str, set[torch.dtype]] = {"retrieved": set(), "self": set()}
    for attn in model.ret_attn:
        attn.o.register_forward_hook(lambda m, i, o: out["retrieved"].add(o.dtype))
    for layer in model.decoder:
        layer.self_attn.o.register_forward_hook(lambda m, i, o: out["self"].add(o.dtype))
    model.gate_log = []
    inp = model.encoder_inputs(histories())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model.teacher_logits(inp, model.item_sids[torch.tensor([1, 2, 3])])
    g = torch.cat([x.flatten() for x in model.gate_log])
    assert bool((g > 0).all()) and bool((g < 1).all()), f"{int((g == 1).sum())} of {g.numel()} gates are 1"
    assert g.dtype == torch.float32
    assert float(g.max()) > 0.99 and float(g.min()) < 0.01  # saturated both ways, yet inside the interval
    assert out == {"retrieved": {torch.float32}, "self": {torch.bfloat16}}
    assert not bool(torch.isnan(logits).any())  # (codes outside the table are -inf by design)


def test_glass_trains_finite_in_bf16_on_the_cpu(tmp_path, native_bf16):
    """A few bf16 steps of GLASS with hard search, SID-Tier and neighbours at lr 0.01: every loss and gradient
    finite, the steps really autocast."""
    import numpy as np

    from genrec.train.generator import GeneratorTrainer
    from tests.glass.conftest import tiny_cfg, toy_dataset, toy_table, toy_vectors

    np.save(tmp_path / "emb.npy", toy_vectors())
    cfg = tiny_cfg(str(tmp_path / "emb.npy"), {"neighbour_codes": 1, "dropout": 0.1}, lr=0.01, batch_size=8,
                   precision="bf16")
    tr = GeneratorTrainer(cfg, tmp_path / "run", toy_dataset(), toy_table())
    assert tr.precision == "bf16"
    for rows in tr.epoch_batches(0)[:6]:
        value, rec = recorded_step(tr, rows)
        assert math.isfinite(value) and rec.autocast_on == [True]
        assert any(d == {torch.bfloat16} for _, d in rec.seen)
        assert all(bool(torch.isfinite(p.grad).all()) for p in tr.model.parameters() if p.grad is not None)


def test_the_precision_benchmark_measures_both_dtypes_in_one_run(native_bf16):
    """benchmarks/precision_speed.py's quick path on the synthetic data: both trainers step, the record says
    the ratio, each dtype's fraction of its matmul rate and the Amdahl bound, with provenance fields."""
    from tests.conftest import load_benchmark

    bench = load_benchmark("precision_speed")
    rec = bench.measure("configs/sasrec-beauty.yaml", "", ["model.num_layers=1", "train.batch_size=32"], steps=2,
                        warmup=1, matmul_n=64, profile_steps=1)
    m = rec["metrics"]
    assert m["ms_per_step_fp32"] > 0 and m["ms_per_step_bf16"] > 0 and m["train_gflop_per_step"] > 0
    assert m["speedup_bf16_over_fp32"] == pytest.approx(m["ms_per_step_fp32"] / m["ms_per_step_bf16"])
    share, ratio = m["matmul_share_of_step_fp32"], m["matmul_gflops_fp32"] / m["matmul_gflops_bf16"]
    assert 0 < share < 1 and m["bf16_speedup_bound"] == pytest.approx(1 / (1 - share + share * ratio))
    for p in ("fp32", "bf16"):
        assert m[f"fraction_of_matmul_rate_{p}"] == pytest.approx(m[f"train_gflops_{p}"] / m[f"matmul_gflops_{p}"])
    assert {"dataset", "model", "recipe", "protocol", "metrics", "seeds"} <= set(rec)
    assert rec["protocol"]["interleaved"] and set(rec["_profiles"]) == {"fp32", "bf16"}
    assert "bf16 is" in bench.report(rec) and "Amdahl" in bench.report(rec)
