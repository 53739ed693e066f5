"""Every registered model keeps its kind's contract: capabilities declared as class attributes (never probed), and
one loss convention, ``(sum, count)``, whose loop-side division trains exactly as the models' old means did."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

import genrec.models  # noqa: F401  (registers the built-in models)
from genrec.config import ObjectiveConfig
from genrec.data.sequences import SeqBatch
from genrec.models.base import (
    GENERATOR,
    MULTI_BEHAVIOR,
    NEXT_ITEM,
    RANKER,
    RETRIEVER,
    Generator,
    GeneratorBatch,
    Model,
    Ranker,
    Retriever,
)
from genrec.models.registry import MODELS, build_model
from genrec.objectives import ctr_bce, next_sid_loss
from genrec.objectives.next_item import SampledSoftmax
from genrec.train.base import TrainerBase
from genrec.train.trainer import _LossModule

BUILT_IN = sorted(n for n, c in MODELS.items() if c.__module__.startswith("genrec."))
CAPABILITIES = {RETRIEVER: (Retriever, ("packs",)), RANKER: (Ranker, ("needs_features", "accepts_pretrained", "packs")),
                GENERATOR: (Generator, ("protocol", "needs_item_vectors", "needs_behavior_levels", "user_token"))}
B, L, V = 3, 6, 30
SMALL = {"d_model": 16, "num_layers": 1, "num_heads": 2}
RANKERS = {"hstu_ranker": SMALL, "hpgr": {**SMALL, "top_k": 2}, "mtgr": {**SMALL, "feat_dim": 4}}


@pytest.mark.parametrize("name", sorted(MODELS))
def test_kinds_and_capabilities_come_from_the_base_classes(name):
    cls = MODELS[name]
    assert issubclass(cls, Model) and cls.registry_name == name and isinstance(cls.trainable, bool)
    assert "kinds" not in vars(cls) and vars(cls)["registry_name"] == name  # the base and @register set them
    (kind,) = cls.kinds
    base, caps = CAPABILITIES[kind]
    assert issubclass(cls, base)
    for cap in caps:
        assert any(cap in vars(k) for k in cls.__mro__ if issubclass(k, base)), cap  # declared, with a default
    if kind == GENERATOR:
        assert cls.protocol in (NEXT_ITEM, MULTI_BEHAVIOR)


def _batch(seed: int = 0) -> SeqBatch:
    g = torch.Generator().manual_seed(seed)
    lengths = torch.tensor([L, 3, 1])
    items = torch.randint(1, V + 1, (B, L), generator=g) * (torch.arange(L)[None] < lengths[:, None])
    times = torch.cumsum(torch.randint(1, 500, (B, L), generator=g), 1)
    return SeqBatch(items, times, lengths, times[:, -1] + 10, behaviors=torch.randint(1, 4, (B, L), generator=g))


def _loop_grads(model: Model, loss_fn) -> dict[str, torch.Tensor]:
    """Gradients of the loss the training loop differentiates, from a step's (sum, count)."""
    model.zero_grad()
    total, count = loss_fn()
    loop = SimpleNamespace(world=1, skip_empty_steps=False, fixed_denominator=None)
    TrainerBase._reduce(loop, total, count)[0].backward()
    return {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}


def _mean_grads(model: Model, mean_fn) -> dict[str, torch.Tensor]:
    model.zero_grad()
    mean_fn().backward()
    return {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("name", sorted(RANKERS))
def test_ranker_loss_is_sum_and_count_and_trains_as_the_old_mean(name):
    torch.manual_seed(0)
    model = build_model({"name": name, **RANKERS[name]}, V, L).eval()
    batch = _batch()
    cands = torch.tensor([[4, 9], [7, 0], [2, 5]])  # one padding candidate
    labels = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    s, n = ctr_bce(model.score(batch, cands), cands, labels)
    real = cands > 0
    assert int(n) == 5 and torch.allclose(s / n, F.binary_cross_entropy_with_logits(
        model.score(batch, cands)[real], labels[real]))

    def old_mean():  # what HSTURanker.loss / MTGR.loss returned
        w = real.float()
        per = F.binary_cross_entropy_with_logits(model.score(batch, cands).float(), labels, reduction="none")
        return (per * w).sum() / w.sum().clamp(min=1.0)

    new, old = _loop_grads(model, lambda: ctr_bce(model.score(batch, cands), cands, labels)), _mean_grads(model, old_mean)
    assert new.keys() == old.keys() and all(torch.equal(new[k], old[k]) for k in new)


def _generator(name: str) -> Generator:
    from tests.gamer.conftest import tiny_model as gamer
    from tests.glass.conftest import tiny_model as glass
    from tests.tiger.conftest import tiny_model as tiger

    return {"tiger": tiger, "glass": glass, "gamer": gamer}[name](seed=1).train()


def _generator_batch(model: Generator) -> GeneratorBatch:
    items = torch.tensor([[3, 7, 1, 2], [4, 0, 0, 0], [5, 6, 0, 0]])
    if model.protocol == MULTI_BEHAVIOR:
        return GeneratorBatch(items, behaviors=torch.tensor([[0, 3, 1, 3], [3, 0, 0, 0], [2, 3, 0, 0]]))
    return GeneratorBatch(items, users=torch.tensor([1, 2, 3]), targets=torch.tensor([9, 2, 7]))


@pytest.mark.parametrize("name", ["gamer", "glass", "tiger"])
def test_generator_loss_is_sum_and_count_and_trains_as_the_old_mean(name):
    model = _generator(name)
    model.eval()
    inputs = model.training_inputs(_generator_batch(model))
    out = model.sid_logits(inputs)
    s, n = next_sid_loss(out)
    mask = torch.ones_like(out.targets, dtype=torch.bool) if out.mask is None else out.mask
    assert int(n) == int(mask.sum()) > 0
    assert torch.allclose(s / n, F.cross_entropy(out.logits[mask].float(), out.targets[mask]))

    def old_mean():  # what the generator trainers computed: the model's summed CE over the count
        o = model.sid_logits(inputs)
        ce = F.cross_entropy(o.logits[mask].float(), o.targets[mask], reduction="sum")
        return ce / (mask.sum().clamp(min=1) if o.mask is not None else o.targets.numel())

    new = _loop_grads(model, lambda: next_sid_loss(model.sid_logits(inputs)))
    old = _mean_grads(model, old_mean)
    assert new.keys() == old.keys() and all(torch.equal(new[k], old[k]) for k in new)


@pytest.mark.parametrize("name", ["hstu", "sasrec"])
def test_retriever_loss_is_sum_and_count(name):
    torch.manual_seed(0)
    model = build_model({"name": name, **SMALL}, V, L).eval()
    batch = _batch()
    batch.targets = torch.roll(batch.items, -1, 1) * (torch.arange(L)[None] < batch.lengths[:, None] - 1)
    objective = SampledSoftmax(ObjectiveConfig(num_negatives=8, temperature=0.05, shared_negatives=True))
    s, n = _LossModule(model, objective)(batch, torch.Generator().manual_seed(3))
    assert int(n) == int((batch.targets > 0).sum()) == 7 and torch.isfinite(s) and s > 0


def test_every_built_in_trainable_model_is_covered_here():
    covered = {"hstu", "sasrec", "gamer", "glass", "tiger", *RANKERS}
    assert {n for n in BUILT_IN if MODELS[n].trainable} == covered


def test_train_eval_serve_never_probe_a_capability():
    """Capabilities are read as attributes; a getattr/hasattr default would hide a model that forgot its base."""
    import ast
    from pathlib import Path

    caps = {c for _, names in CAPABILITIES.values() for c in names} | {"trainable", "set_behavior_levels",
                                                                      "set_item_vectors"}
    pkg = Path(genrec.models.__file__).resolve().parents[1]
    bad = []
    for room in ("train", "eval", "serve"):
        for path in sorted((pkg / room).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text())):
                if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in (
                        "getattr", "hasattr") and len(node.args) > 1 and isinstance(node.args[1], ast.Constant)
                        and node.args[1].value in caps):
                    bad.append(f"{path.relative_to(pkg)}:{node.lineno} {node.func.id}(..., {node.args[1].value!r})")
    assert not bad, "\n".join(bad)
