"""The two-stage HPGR pipeline: stage-1 settings, the leakage-safe cut, resumable pre-training, and the
hand-over to fine-tuning (``model.pretrained``), end to end on a tiny ratings log."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pytest
import torch

import genrec.train.ranker as ranker
from genrec.config import config_from_dict
from genrec.data.schema import Dataset, Interactions, load_dataset, write_dataset
from genrec.data.sequences import UserSequences
from genrec.errors import ConfigError
from genrec.models.hpgr import HPGRRanker
from genrec.models.pretrained import load_pretrained
from genrec.runs.open import open_run
from genrec.runs.ranking_data import build_ranking_data
from genrec.train.pretrain import parse_pretrain_config, pretrain_batch, pretraining_events
from genrec.train.stages import run_stages, training_cutoff

USERS, ITEMS = 30, 25
TINY_PRETRAIN = {"sem": {"d_model": 16, "num_heads": 2, "intra_layers": 1, "inter_layers": 1},
                 "max_len": 20, "epochs": 1, "max_steps": 2, "batch_size": 16, "probe_rows": 8, "device": "cpu"}


def _dataset(seed: int = 0, relabel_from: int | None = None) -> Dataset:
    """A ratings log; with ``relabel_from``, every event at or after that time gets another item and rating."""
    rng = np.random.default_rng(seed)
    n = rng.integers(12, 30, USERS)
    user = np.repeat(np.arange(1, USERS + 1), n)
    ts = np.concatenate([1_500_000_000 + np.sort(rng.integers(0, 30 * 86400, k)) for k in n])
    item = rng.integers(1, ITEMS + 1, len(ts))
    rating = rng.integers(1, 6, len(ts)).astype(np.float32)
    if relabel_from is not None:
        late = ts >= relabel_from
        item[late] = (item[late] % ITEMS) + 1
        rating[late] = 6 - rating[late]
    inter = Interactions(user_id=user, item_id=item, timestamp=ts, rating=rating)
    items = pa.table({"item_id": np.arange(1, ITEMS + 1), "external_id": [str(i) for i in range(1, ITEMS + 1)]})
    fp = f"tiny-{seed}-{relabel_from}"
    return Dataset(inter, items, None, {"name": "tiny", "counts": {"items": ITEMS, "users": USERS}, "fingerprint": fp})


def _cfg(stages, **model):
    return config_from_dict({
        "model": {"name": "hpgr", "d_model": 16, "num_layers": 1, "num_heads": 2, "top_k": 4, **model},
        "data": {"max_len": 20},
        "ranking": {"labels": "ratings", "valid_frac": 0.15, "test_frac": 0.15},
        "train": {"epochs": 1, "batch_size": 64, "device": "cpu", "progress": False, "tensorboard": False},
        "pretrain": TINY_PRETRAIN,
        "stages": stages,
    })


def test_pretrain_section_is_parsed_strictly():
    p = parse_pretrain_config({"sem": {"d_model": 32, "use_sessions": False}, "mim": {"mask_ratio": 0.3},
                               "session_gap": 1800, "max_session_len": None, "epochs": 3})
    assert (p.sem.d_model, p.sem.use_sessions, p.mim.mask_ratio, p.session_gap, p.max_session_len, p.epochs) == (
        32, False, 0.3, 1800, None, 3)
    for bad in ({"epoch": 3}, {"sem": {"dmodel": 3}}, {"mim": {"ratio": 0.1}}, {"session_gap": "1h"}):
        with pytest.raises(ConfigError):
            parse_pretrain_config(bad)


def test_stage_one_only_sees_events_before_the_ranking_cut():
    base = _dataset()
    cfg = _cfg(["pretrain"])
    cut = training_cutoff(cfg, base)
    data = build_ranking_data(cfg, base)
    assert cut == data.t_valid
    assert (data.imps.timestamp[data.split.train] < cut).all()
    assert (data.imps.timestamp[np.concatenate([data.split.valid, data.split.test])] >= cut).all()
    # changing every event at or after the cut (items and labels) moves neither the cut nor stage 1's inputs
    other = _dataset(relabel_from=cut)
    assert training_cutoff(cfg, other) == cut
    batches = []
    for ds in (base, other):
        ev = pretraining_events(UserSequences.from_interactions(ds.interactions), cut, 3600, 50)
        assert ev.timestamps.max() < cut and len(ev.items) == int((base.interactions.timestamp < cut).sum())
        b = pretrain_batch(ev, np.flatnonzero(ev.lengths > 0), max_len=20, max_sessions=64)
        batches.append([b.items, b.timestamps, b.session_ids, b.lengths])
    assert all(torch.equal(a, b) for a, b in zip(*batches))
    assert not np.array_equal(base.interactions.item_id, other.interactions.item_id)


def test_pretrain_stage_is_leak_free_written_once_and_checked(tmp_path):
    base = _dataset()
    cfg = _cfg(["pretrain"])
    cut = training_cutoff(cfg, base)
    rec = run_stages(cfg, tmp_path / "a", dataset=base)
    art = tmp_path / "a" / "pretrain"
    assert rec["stages"] == ["pretrain"] and "finetune" not in rec and not rec["pretrain"]["skipped"]
    assert rec["pretrain"]["cutoff"] == {"kind": "time", "t": cut}
    assert rec["pretrain"]["num_events"] == int((base.interactions.timestamp < cut).sum())
    assert json.loads((art / "pretrain.json").read_text())["packed"] is False  # provenance: train.packed
    assert load_pretrained(art, num_items=ITEMS).item_table.shape == (ITEMS + 1, 16)
    assert json.loads((tmp_path / "a" / "stages.json").read_text())["pretrain"]["path"] == str(art)
    stamp = (art / "pretrain.json").stat().st_mtime_ns
    again = run_stages(cfg, tmp_path / "a", dataset=base)
    assert again["pretrain"]["skipped"] and (art / "pretrain.json").stat().st_mtime_ns == stamp
    # the same run on a log that differs only at or after the cut learns the very same stage-1 model
    other = _dataset(relabel_from=cut)
    rec_o = run_stages(cfg, tmp_path / "b", dataset=other)
    assert rec_o["pretrain"]["events_fingerprint"] == rec["pretrain"]["events_fingerprint"]
    assert torch.equal(load_pretrained(tmp_path / "b" / "pretrain").item_table, load_pretrained(art).item_table)
    # an artifact written with other settings is never silently reused; resume=False rewrites it
    changed = _cfg(["pretrain"])
    changed.pretrain = {**TINY_PRETRAIN, "max_steps": 1}
    with pytest.raises(ConfigError, match="differs"):
        run_stages(changed, tmp_path / "a", dataset=base)
    assert not run_stages(changed, tmp_path / "a", resume=False, dataset=base)["pretrain"]["skipped"]
    assert json.loads((art / "pretrain.json").read_text())["steps"] == 1
    packed = _cfg(["pretrain"])
    packed.train.packed = True
    run_stages(packed, tmp_path / "c", dataset=base)
    assert json.loads((tmp_path / "c" / "pretrain" / "pretrain.json").read_text())["packed"] is True


def test_finetune_gets_the_artifact(tmp_path, monkeypatch):
    calls = []

    def fake(cfg, out, resume=True, dataset=None):
        calls.append((cfg, out, resume, dataset))
        return {"metrics": {"auc": 0.5}}

    monkeypatch.setattr(ranker, "train_ranker_run", fake)
    base = _dataset()
    rec = run_stages(_cfg(["pretrain", "finetune"]), tmp_path, dataset=base)
    (cfg, out, resume, ds), = calls
    assert out == tmp_path / "finetune" and resume is True and ds is base
    assert cfg.model["pretrained"] == str(tmp_path / "pretrain") and cfg.stages == ["finetune"]
    assert rec["metrics"] == {"auc": 0.5} and rec["finetune"]["dir"] == str(tmp_path / "finetune")
    assert not rec["pretrain"]["skipped"]
    assert json.loads((tmp_path / "stages.json").read_text())["finetune"]["metrics"] == {"auc": 0.5}
    # fine-tuning alone trains in OUT itself with the recipe's own model.pretrained
    run_stages(_cfg(["finetune"], pretrained=""), tmp_path / "solo", dataset=base)
    assert calls[-1][1] == tmp_path / "solo" and calls[-1][0].model["pretrained"] == ""
    with pytest.raises(ConfigError, match="pretrained"):
        run_stages(config_from_dict({"model": {"name": "hstu_ranker"}, "stages": ["pretrain", "finetune"]}),
                   tmp_path / "x", dataset=base)


@pytest.mark.parametrize("model,match", [({"relevance": "items"}, "model.relevance must be one of"),
                                         ({"relevance": "sem", "use_sem": False}, "model.relevance='sem'"),
                                         ({"top_k": 0}, "top_k >= 1")])
def test_a_bad_model_key_fails_before_stage_one(tmp_path, model, match):
    """The fine-tuning model's own checks run before pre-training, which can take an hour at real size."""
    with pytest.raises(ConfigError, match=match):
        run_stages(_cfg(["pretrain", "finetune"], **model), tmp_path, dataset=_dataset())
    assert not (tmp_path / "pretrain").exists()
    run_stages(_cfg(["pretrain"], relevance="sem"), tmp_path / "s1", dataset=_dataset())  # sem + stage 1: fine


def test_two_stages_end_to_end(tmp_path):
    tiny = _dataset()
    base = load_dataset(write_dataset(tmp_path / "data", tiny.interactions, tiny.items, tiny.manifest))
    rec = run_stages(_cfg(["pretrain", "finetune"]), tmp_path, dataset=base)
    res = json.loads((tmp_path / "finetune" / "results" / "test.json").read_text())
    assert rec["metrics"] == res["metrics"] == rec["finetune"]["metrics"] and 0.0 <= res["metrics"]["auc"] <= 1.0
    assert res["train"]["finished"] and rec["pretrain"]["steps"] == 2
    assert res["config"]["model"]["pretrained"] == str(tmp_path / "pretrain")
    # the fine-tuned run re-opens (its model rebuilds from the artifact, then loads its own weights)
    trainer = open_run(tmp_path / "finetune")
    assert isinstance(trainer.model, HPGRRanker) and trainer.model.sem is not None
