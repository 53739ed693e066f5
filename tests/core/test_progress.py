"""What a run shows while it works (issue 20, defect 1): every kind of trainer prints one line per epoch with its
validation metric, terminal or log; a log also gets plain step lines; `sid build` reports its stages with timings.
"""

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import genrec.progress
from genrec.cli import main
from genrec.config import config_from_dict
from genrec.data.schema import write_dataset
from genrec.progress import Progress, duration
from genrec.train.trainer import Trainer
from tests.conftest import tiny_cfg

ROOT = Path(__file__).resolve().parents[2]
EPOCH_LINE = r"^epoch (\d+)/(\d+)  loss [0-9.]+  valid {metric} [0-9.]+ \(best [0-9.]+ @ epoch \d+\)  [0-9.]+ s$"


def epoch_lines(err: str, metric: str) -> list[tuple[int, int]]:
    pat = re.compile(EPOCH_LINE.format(metric=re.escape(metric)))
    return [(int(m[1]), int(m[2])) for m in map(pat.match, err.splitlines()) if m]


def _retriever(toy, tmp_path):
    Trainer(config_from_dict(tiny_cfg("sasrec", train={"epochs": 3})), tmp_path / "r", toy).fit()
    return "ndcg@10", 3


def _ranker(toy, tmp_path):
    from genrec.train.ranker import RankerTrainer
    from tests.hpgr.conftest import make_ctr_toy

    raw = tiny_cfg("hstu_ranker", ranking={"labels": "ratings"}, train={"batch_size": 64})
    RankerTrainer(config_from_dict(raw), tmp_path / "r", make_ctr_toy()).fit()
    return "auc", 2


def _generator(toy, tmp_path):
    from genrec.config import GeneratorConfig
    from genrec.train.generator import GeneratorTrainer
    from tests.tiger.conftest import tiny_cfg as tiger_cfg
    from tests.tiger.conftest import toy_sequences, toy_table

    opts = GeneratorConfig(beam_size=5, test_other_decoding=False)
    GeneratorTrainer(tiger_cfg(epochs=2), tmp_path / "r", toy_sequences(), toy_table(), opts).fit()
    return "ndcg@5", 2


def _gamer(toy, tmp_path):
    from genrec.data.multibehavior import MultiBehaviorConfig
    from genrec.train.gamer import GamerTrainer
    from tests.gamer.conftest import TINY, cycle_events, make_dataset, toy_table

    raw = tiny_cfg("gamer", data={"max_len": 10}, eval={"ks": [1, 5]}, generator={"beam_size": 5},
                   train={"batch_size": 16})
    cfg = config_from_dict({**raw, "model": {"name": "gamer", **TINY}})
    ds = make_dataset(cycle_events(num_users=10, seed=2))
    GamerTrainer(cfg, tmp_path / "r", ds, toy_table(), MultiBehaviorConfig(session_gap=1800, augment=1)).fit()
    return "loss", 2


@pytest.mark.parametrize("kind", [_retriever, _ranker, _generator, _gamer], ids=lambda f: f.__name__[1:])
def test_every_kind_prints_one_line_per_epoch_with_its_validation_metric(toy, tmp_path, capsys, kind):
    """Before: only a tqdm bar (retrievers first, then every kind), erased after each epoch and off in a log,
    and no line with the validation metric at all."""
    metric, epochs = kind(toy, tmp_path)
    err = capsys.readouterr().err
    assert epoch_lines(err, metric) == [(e, epochs) for e in range(1, epochs + 1)], err


def test_a_logged_run_shows_step_lines_and_epoch_lines(toy_dir, tmp_path):
    """`genrec train ... > log.txt 2>&1`: stderr is no terminal, so plain lines replace the bar."""
    log = tmp_path / "log.txt"
    sets = ["model.d_model=16", "model.num_layers=1", "data.max_len=20", "train.epochs=2", "train.batch_size=32",
            "train.tensorboard=false", "objective.num_negatives=8", "train.progress_interval=0.000001",
            f"data.path={toy_dir}"]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
    with open(log, "w") as f:
        r = subprocess.run([sys.executable, "-m", "genrec.cli", "train", "--out", str(tmp_path / "r"), "--set", *sets],
                           env=env, stdout=f, stderr=subprocess.STDOUT, timeout=300)
    text = log.read_text()
    assert r.returncode == 0, text[-3000:]
    assert epoch_lines(text, "ndcg@10") == [(1, 2), (2, 2)], text
    steps = re.findall(r"^epoch 1/2  step (\d+)/(\d+) \(\d+%\)  loss [0-9.]+  [0-9.]+ s, [0-9.]+ s left$", text, re.M)
    assert steps and steps[-1][0] == steps[-1][1], text  # the last step of the epoch has its line
    assert text.index("step") < text.index("epoch 1/2  loss") < text.index("ndcg@10")  # in order, flushed


def test_a_terminal_gets_a_bar_per_epoch_and_the_epoch_lines(toy, tmp_path, monkeypatch, capsys):
    import tqdm.auto

    bars = []

    class Bar:
        def __init__(self, **kw):
            bars.append({**kw, "updates": 0})

        def update(self, n):
            bars[-1]["updates"] += n

        def set_postfix(self, **kw):
            bars[-1]["postfix"] = kw

        def close(self):
            bars[-1]["closed"] = True

    monkeypatch.setattr(tqdm.auto, "tqdm", Bar)
    monkeypatch.setattr(genrec.progress, "interactive", lambda: True)
    raw = tiny_cfg("sasrec", train={"progress": True, "progress_interval": 0.000001})
    tr = Trainer(config_from_dict(raw), tmp_path / "r", toy)
    tr.fit()
    steps = [len(tr.epoch_batches(e)) for e in range(2)]
    assert [(b["total"], b["updates"], b["closed"], b["leave"]) for b in bars] == [(n, n, True, False) for n in steps]
    err = capsys.readouterr().err
    assert epoch_lines(err, "ndcg@10") == [(1, 2), (2, 2)] and " step " not in err  # no plain lines beside a bar


def test_progress_off_keeps_the_epoch_lines(toy, tmp_path, capsys):
    Trainer(config_from_dict(tiny_cfg("sasrec", train={"progress": False, "progress_interval": 0.000001})),
            tmp_path / "r", toy).fit()
    err = capsys.readouterr().err
    assert epoch_lines(err, "ndcg@10") == [(1, 2), (2, 2)] and " step " not in err


def test_early_stop_says_why(toy, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(Trainer, "validate", lambda self: ({"ndcg@10": 0.5}, 0.5))  # never improves after epoch 1
    Trainer(config_from_dict(tiny_cfg("sasrec", train={"epochs": 9, "patience": 2})), tmp_path / "r", toy).fit()
    err = capsys.readouterr().err
    assert epoch_lines(err, "ndcg@10") == [(e, 9) for e in (1, 2, 3)]
    assert "early stop: valid ndcg@10 has not improved in 2 validations; the best weights are from epoch 1" in err


def test_plain_progress_lines_are_timed_and_deferred_until_the_fields_are_known(monkeypatch, capsys):
    clock = iter(range(1000))
    monkeypatch.setattr(genrec.progress.time, "time", lambda: float(next(clock)))
    monkeypatch.setattr(genrec.progress, "interactive", lambda: False)
    p = Progress("fit", 4, interval=2.0, unit="epoch")
    for k in range(4):
        p.update(1)
        p.set_postfix(loss=f"{k}.0")
    p.close()
    # the clock ticks once a call: due at updates 2, 3 and 4 (2 s since the last line), said with their loss
    assert capsys.readouterr().err.splitlines() == ["fit  epoch 2/4 (50%)  loss 1.0  3.0 s, 3.0 s left",
                                                    "fit  epoch 3/4 (75%)  loss 2.0  5.0 s, 1.7 s left",
                                                    "fit  epoch 4/4 (100%)  loss 3.0  7.0 s, 0.0 s left"]
    bare = Progress("x", 2, interval=1.0)
    bare.update(1)  # due; no fields follow, so the next update or close says it
    bare.close()
    assert capsys.readouterr().err == "x  step 1/2 (50%)  2.0 s, 2.0 s left\n"
    assert [duration(s) for s in (0.04, 59.5, 61, 3 * 3600 + 7 * 60)] == ["0.0 s", "59.5 s", "1m 01s", "3h 07m"]


def test_sid_build_reports_its_stages_with_timings(toy, tmp_path, capsys, monkeypatch):
    """Before: `genrec sid build` printed nothing until the end (almost 4 minutes on ML-100k)."""
    monkeypatch.setattr(genrec.progress, "INTERVAL", 0.000001)  # every RQ-VAE epoch gets its line
    data = write_dataset(tmp_path / "toy", toy.interactions, toy.items, toy.manifest, toy.users)
    emb = tmp_path / "emb.npy"
    np.save(emb, np.random.default_rng(0).normal(size=(toy.num_items, 8)).astype(np.float32))
    code = main(["sid", "build", str(ROOT / "configs" / "tiger-ml100k.yaml"), "--data", str(data), "--out",
                 str(tmp_path / "sid"), "--set", "sid.embeddings=file", f"sid.embeddings_file={emb}",
                 "sid.quantizer=rqvae", "sid.rqvae_epochs=3", "sid.levels=2", "sid.codebook_size=4"])
    err = capsys.readouterr().err
    assert code == 0, err
    for stage in ("load dataset", "item embeddings (file)", "rqvae on 60 x 8 (2 levels x 4 codes)", "unique SIDs"):
        assert f"sid build: {stage} ...\n" in err, err
        assert re.search(rf"^sid build: {re.escape(stage)}: [0-9.]+ s$", err, re.M), err
    assert re.findall(r"^rqvae  epoch (\d)/3 \(\d+%\)  loss [0-9.]+  usage [0-9. ]+  ", err, re.M) == ["1", "2", "3"]
    assert re.search(r"^sid build: done in [0-9.]+ s$", err, re.M), err
