"""Runs fine-tuned from a stage-1 artifact carry everything they need: trained with a relative ``--out``, exported,
their run folder deleted, the served artifact (loaded from elsewhere) scores exactly as the run did; a run folder
reopens without the stage-1 artifact; a run recorded before ``model.stage1`` existed still opens (reading it once)."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

import genrec
from genrec.cli import main
from genrec.data.schema import Dataset, load_dataset, write_dataset
from genrec.data.sequences import UserSequences, make_history_batch
from genrec.errors import ConfigError
from genrec.eval.evaluate import evaluate_run
from genrec.models.pretrained import STAGE1_KEY
from genrec.runs.open import open_run
from genrec.serve.format import ArtifactError, sha256
from genrec.train.run import recommend
from tests.conftest import make_toy, tiny_cfg
from tests.hpgr.conftest import make_ctr_toy

PRETRAIN = {"sem": {"d_model": 16, "num_heads": 2, "intra_layers": 1, "inter_layers": 1}, "max_len": 20,
            "epochs": 1, "max_steps": 3, "batch_size": 32, "probe_rows": 8, "device": "cpu"}
TRAIN = {"epochs": 1, "batch_size": 64, "device": "cpu", "progress": False, "tensorboard": False, "num_threads": 1}
HPGR = {"model": {"name": "hpgr", "d_model": 16, "num_layers": 1, "num_heads": 2, "top_k": 4, "use_sem": True},
        "data": {"max_len": 16}, "ranking": {"labels": "ratings"}, "train": TRAIN}


def _two_stage_run(tmp_path: Path, monkeypatch, recipe: dict, ds: Dataset) -> tuple[Path, Dataset]:
    """``genrec train RECIPE --out run`` (relative) in ``tmp_path/work`` with stages [pretrain, finetune]."""
    data = write_dataset(tmp_path / "data", ds.interactions, ds.items, ds.manifest)
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump({**recipe, "pretrain": PRETRAIN, "stages": ["pretrain", "finetune"]}))
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    assert main(["train", str(path), "--data", str(data), "--out", "run"]) == 0
    model = json.loads((work / "run" / "finetune" / "config.json").read_text())["config"]["model"]
    assert model["pretrained"] == str(Path("run") / "pretrain")  # relative, as --out was
    assert model[STAGE1_KEY]["sem"]["d_model"] == 16  # the stage-1 SEM's architecture, recorded
    return work, load_dataset(data)


def _history(ds: Dataset, row: int = 3) -> tuple[list[str], list[int], list[str]]:
    """One user's history (external ids, times) and a few candidate items."""
    seqs = UserSequences.from_interactions(ds.interactions)
    ext = ds.item_external_ids()
    sl = seqs.row(row)
    return [ext[i] for i in seqs.items[sl]], seqs.timestamps[sl].tolist(), [ext[i] for i in (1, 5, 9, 12, 30)]


def _export_delete_load(tmp_path: Path, monkeypatch, work: Path, before: dict[str, float],
                        served: Callable[[genrec.Artifact], dict[str, float]]) -> None:
    """Export the fine-tuning run (relative paths), delete the run folder, load the artifact from elsewhere."""
    assert main(["export", "run/finetune", "--out", "art"]) == 0
    shutil.rmtree(work / "run")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    after = served(genrec.load(work / "art"))
    assert after == before  # exactly the run's scores


def test_two_stage_hpgr_export_is_self_contained(tmp_path, monkeypatch):
    work, ds = _two_stage_run(tmp_path, monkeypatch, HPGR, make_ctr_toy())
    hist, times, cands = _history(ds)
    index = {e: i for i, e in enumerate(ds.item_external_ids())}
    run = open_run("run/finetune")  # the run's own evaluation path
    model = run.model.eval()
    assert model.sem is not None and "sem.item_emb.weight" in model.state_dict()  # the frozen SEM is a weight
    batch = make_history_batch([np.array([index[h] for h in hist])], [np.array(times)], np.array([times[-1]]),
                               run.cfg.data.max_len)
    with torch.no_grad():
        s = model.score_candidates(batch, torch.tensor([[index[c] for c in cands]]))[0]
    before = {c: float(v) for c, v in zip(cands, s)}
    # the run folder evaluates without the stage-1 artifact: its weights hold the SEM and the tables
    shutil.move(work / "run" / "pretrain", work / "pretrain-away")
    want = json.loads((work / "run" / "finetune" / "results" / "test.json").read_text())["metrics"]
    assert evaluate_run("run/finetune")["metrics"] == want
    _export_delete_load(tmp_path, monkeypatch, work, before,
                        lambda art: dict(art.score(hist, cands, timestamps=times)))


def test_two_stage_retriever_export_is_self_contained(tmp_path, monkeypatch):
    recipe = tiny_cfg("hstu", train={**TRAIN, "epochs": 1})
    work, ds = _two_stage_run(tmp_path, monkeypatch, recipe, make_toy())
    hist, times, _ = _history(ds)
    index = {e: i for i, e in enumerate(ds.item_external_ids())}
    run = open_run("run/finetune")
    ext = ds.item_external_ids()
    before = {ext[i]: s for i, s in recommend(run, [index[h] for h in hist], times, k=10)}
    _export_delete_load(tmp_path, monkeypatch, work, before,
                        lambda art: dict(art.recommend(hist, k=10, timestamps=times)))


def _strip_stage1(run_dir: Path) -> None:
    """Rewrite a run's config.json as runs were recorded before model.stage1 existed."""
    path = run_dir / "config.json"
    rec = json.loads(path.read_text())
    del rec["config"]["model"][STAGE1_KEY]
    path.write_text(json.dumps(rec))


def _strip_stage1_from_artifact(art: Path) -> None:
    """Rewrite an exported artifact as earlier genrec versions wrote it (without model.stage1)."""
    path = art / "config.json"
    cfg = json.loads(path.read_text())
    del cfg["model"][STAGE1_KEY]
    path.write_text(json.dumps(cfg))
    man = json.loads((art / "artifact.json").read_text())
    man["sha256"]["config.json"] = sha256(path)
    (art / "artifact.json").write_text(json.dumps(man))


def test_a_run_recorded_without_stage1_still_opens(tmp_path, monkeypatch):
    work, ds = _two_stage_run(tmp_path, monkeypatch, HPGR, make_ctr_toy(num_users=80))
    run_dir = work / "run" / "finetune"
    want = json.loads((run_dir / "results" / "test.json").read_text())["metrics"]
    _strip_stage1(run_dir)
    assert evaluate_run(run_dir)["metrics"] == want  # reads the stage-1 artifact's description once
    assert main(["export", str(run_dir), "--out", "art"]) == 0
    assert STAGE1_KEY in json.loads((work / "art" / "config.json").read_text())["model"]  # now self-contained
    hist, times, cands = _history(ds)
    scores = dict(genrec.load(work / "art").score(hist, cands, timestamps=times))
    _strip_stage1_from_artifact(work / "art")  # an earlier export loads while its stage-1 artifact is there
    assert dict(genrec.load(work / "art").score(hist, cands, timestamps=times)) == scores
    # re-running the recipe finds the finished run (the missing record is no other model setting)
    assert main(["train", str(tmp_path / "recipe.yaml"), "--data", str(tmp_path / "data"), "--out", "run"]) == 0
    assert json.loads((run_dir / "results" / "test.json").read_text())["metrics"] == want
    assert STAGE1_KEY not in json.loads((run_dir / "config.json").read_text())["config"]["model"]  # record kept
    shutil.rmtree(work / "run" / "pretrain")
    with pytest.raises(ConfigError, match="needs that artifact once"):
        evaluate_run(run_dir)
    with pytest.raises(ArtifactError, match="needs that artifact once"):
        genrec.load(work / "art")
