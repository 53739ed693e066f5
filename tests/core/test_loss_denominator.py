"""``train.loss_denominator``: ``epoch_mean`` divides every step's summed loss by the epoch's mean number of
targets per batch, so under length bucketing each target weighs the same (as with random batches) instead of each
batch; the logged loss stays the per-target mean."""

from __future__ import annotations

import pytest

from genrec.config import config_from_dict
from genrec.errors import ConfigError
from genrec.train.trainer import Trainer
from tests.conftest import tiny_cfg


def _trainer(toy, tmp_path, **train) -> Trainer:
    # max_len 6: most toy rows are longer, so the window cut is part of the count
    raw = tiny_cfg("sasrec", data={"max_len": 6}, train={"batch_size": 16, "num_threads": 1, **train})
    return Trainer(config_from_dict(raw), tmp_path / "run", toy)


def test_epoch_mean_is_the_mean_number_of_targets_in_an_epochs_batches(toy, tmp_path):
    tr = _trainer(toy, tmp_path, loss_denominator="epoch_mean")
    batches = tr.epoch_batches(0)
    counts = [int((tr.train_batch(rows).targets > 0).sum()) for rows in batches]
    assert len(set(counts)) > 1  # the batches differ, so a fixed denominator is not each batch's own count
    assert tr.fixed_denominator == pytest.approx(sum(counts) / len(batches))
    assert _trainer(toy, tmp_path / "b").fixed_denominator is None  # the default: each batch's own count


def test_epoch_mean_divides_by_the_fixed_count_and_logs_the_mean(toy, tmp_path):
    tr = _trainer(toy, tmp_path, loss_denominator="epoch_mean")
    rows = tr.epoch_batches(0)[0]
    loss, count = tr.step_loss(rows)
    scaled, logged = tr._reduce(loss, count)
    loss = float(loss.detach())
    assert float(scaled.detach()) == pytest.approx(loss / tr.fixed_denominator, rel=1e-6)
    assert logged == pytest.approx(loss / float(count), rel=1e-6)
    tr.cfg.train.epochs = 1  # a whole epoch trains under it
    tr.fit()
    assert tr.state["global_step"] == len(tr.epoch_batches(0))


def test_other_trainers_refuse_epoch_mean_and_bad_values_name_the_key(tmp_path):
    from genrec.train.ranker import RankerTrainer
    from tests.hpgr.conftest import make_ctr_toy
    from tests.hpgr.test_ranker_trainer import raw_cfg

    with pytest.raises(ConfigError, match="train.loss_denominator"):
        RankerTrainer(config_from_dict(raw_cfg(train={"epochs": 1, "loss_denominator": "epoch_mean"})),
                      tmp_path / "r", make_ctr_toy())
    assert not (tmp_path / "r" / "config.json").exists()  # refused before the run folder is written
    with pytest.raises(ConfigError, match="train.loss_denominator"):
        config_from_dict(tiny_cfg("sasrec", train={"loss_denominator": "rows"}))
