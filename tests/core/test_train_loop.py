"""The shared training loop's parts: the optimiser and schedule factory, the one family of optimiser knobs and the
train/ import order (what the loop shows while it runs: test_progress.py)."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from genrec.config import OptimConfig, TrainConfig, config_from_dict
from genrec.errors import ConfigError
from genrec.nn.optim import adamw, build_optimizer, lr_schedule
from genrec.train.pretrain import PretrainConfig, parse_pretrain_config
from genrec.train.rerank import RerankConfig, parse_rerank_config


def test_schedules_are_pure_functions_of_the_step():
    assert not lr_schedule("constant", 0.1).varies and lr_schedule("constant", 0.1)(999) == 0.1
    tiger = lr_schedule("inverse_sqrt", 0.01, warmup_steps=100, linear_warmup_steps=4)
    assert tiger.varies and tiger(0) == pytest.approx(0.0025) and tiger(99) == 0.01
    assert tiger(399) == pytest.approx(0.005)  # 0.01 * sqrt(100 / 400)
    gamer = lr_schedule("cosine", 1.0, total_steps=100, warmup_ratio=0.1)
    assert [gamer(s) for s in (0, 9, 55, 100)] == pytest.approx([0.1, 1.0, 0.5, 0.0])
    with pytest.raises(ConfigError, match="schedule"):
        lr_schedule("linear", 0.1)


def test_optimizer_knobs_are_one_family_across_sections():
    for cls in (TrainConfig, PretrainConfig, RerankConfig):
        assert issubclass(cls, OptimConfig)
    assert (TrainConfig().grad_clip, PretrainConfig().grad_clip, RerankConfig().grad_clip) == (0.0, 1.0, 1.0)
    sections = [config_from_dict({"train": {"lr": 0.002, "betas": [0.9, 0.99], "weight_decay": 0.1}}).train,
                parse_pretrain_config({"lr": 0.002, "betas": [0.9, 0.99], "weight_decay": 0.1}),
                parse_rerank_config({"lr": 0.002, "betas": [0.9, 0.99], "weight_decay": 0.1})]
    for section in sections:
        group = build_optimizer([torch.nn.Parameter(torch.zeros(2))], section).param_groups[0]
        assert (group["lr"], group["betas"], group["weight_decay"]) == (0.002, (0.9, 0.99), 0.1)
    assert adamw([torch.nn.Parameter(torch.zeros(2))], 0.1).param_groups[0]["betas"] == (0.9, 0.999)  # torch's


def test_stages_do_not_import_the_run_entry_points():
    code = "import sys, genrec.train.stages; print('genrec.train.run' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env={"PYTHONPATH": str(Path(__file__).resolve().parents[2] / "src")})
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "False"
