"""Learning-rate schedule and per-parameter rates for retrievers and rankers (``train.lr_schedule``,
``train.lr_scales``): what the recipe searches tune (issue 17) and HPGR's gentle fine-tuning of its transferred
item table (issue 18)."""

import pytest

from genrec.config import config_from_dict
from genrec.errors import ConfigError
from genrec.nn.optim import cosine_lr, lr_schedule
from genrec.train.trainer import Trainer
from tests.conftest import tiny_cfg


def trainer(toy, tmp_path, **train):
    cfg = config_from_dict(tiny_cfg("sasrec", train={"epochs": 2, **train}))
    return Trainer(cfg, tmp_path / "run", toy, resume=False)


def test_the_default_is_one_group_at_the_constant_rate(toy, tmp_path):
    t = trainer(toy, tmp_path)
    t.fit()
    (group,) = t.optimizer.param_groups
    assert group["lr"] == 1e-3 and "lr_scale" not in group and t.schedule is None


def test_cosine_decays_over_the_planned_steps(toy, tmp_path):
    t = trainer(toy, tmp_path, lr_schedule="cosine", warmup_ratio=0.25)
    per_epoch = len(t.epoch_batches(0))
    t.fit()
    total = 2 * per_epoch
    assert t.schedule.total_steps == total and t.state["global_step"] == total
    last = cosine_lr(total - 1, total, 1e-3, 0.25)
    assert t.optimizer.param_groups[0]["lr"] == pytest.approx(last) and last < 1e-4


def test_scaled_item_table_moves_less_then_takes_the_full_rate(toy, tmp_path):
    t = trainer(toy, tmp_path / "a", lr_scales={"item_emb": 1e-6}, lr_scale_epochs=1, epochs=1)
    before = {n: p.detach().clone() for n, p in t.model.named_parameters()}
    t.fit()
    moved = {n: float((p.detach() - before[n]).abs().max()) for n, p in t.model.named_parameters()}
    assert moved["item_emb.weight"] < 1e-6 < min(v for n, v in moved.items() if not n.startswith("item_emb"))
    groups = t.optimizer.param_groups
    assert [g["lr_scale"] for g in groups] == [1e-6, 1.0] and groups[0]["lr"] == pytest.approx(1e-9)
    t2 = trainer(toy, tmp_path / "b", lr_scales={"item_emb": 1e-6}, lr_scale_epochs=1, epochs=2)
    t2.fit()  # the second epoch runs at the full rate for every parameter
    assert [g["lr"] for g in t2.optimizer.param_groups] == [1e-3, 1e-3]


def test_scales_under_a_schedule_keep_their_ratio(toy, tmp_path):
    t = trainer(toy, tmp_path, lr_schedule="cosine", lr_scales={"item_emb": 0.1})
    t.fit()
    a, b = (g["lr"] for g in t.optimizer.param_groups)
    assert a == pytest.approx(0.1 * b) and b < 1e-3


def test_a_prefix_that_names_no_parameter_is_refused(toy, tmp_path):
    with pytest.raises(ConfigError, match=r"train.lr_scales: 'item_embs' names no parameter.*item_emb"):
        trainer(toy, tmp_path, lr_scales={"item_embs": 0.1})


@pytest.mark.parametrize("train", [{"lr_schedule": "linear"}, {"warmup_ratio": 1.0}, {"lr_scales": {"item_emb": 0}},
                                   {"lr_scales": ["item_emb"]}, {"lr_scale_epochs": -1}])
def test_bad_values_are_refused_when_the_config_loads(train):
    key = next(iter(train))
    with pytest.raises(ConfigError, match=f"train.{key}"):
        config_from_dict(tiny_cfg("sasrec", train=train))


def test_a_trainer_with_its_own_schedule_refuses_the_key(toy, tmp_path):
    t = trainer(toy, tmp_path, lr_schedule="cosine")
    t.schedule = lr_schedule("inverse_sqrt", 1e-3, warmup_steps=10)  # as the generators set theirs
    with pytest.raises(ConfigError, match="train.lr_schedule=cosine: this trainer has its own"):
        t.fit()


def test_a_generator_recipe_with_lr_schedule_is_refused_before_its_run_folder_opens(tmp_path):
    from genrec.train.run import train_run

    cfg = config_from_dict(tiny_cfg("tiger", train={"lr_schedule": "cosine"}))
    with pytest.raises(ConfigError, match="train.lr_schedule=cosine: the generator 'tiger' has its own"):
        train_run(cfg, tmp_path / "run")
    assert not (tmp_path / "run").exists()

