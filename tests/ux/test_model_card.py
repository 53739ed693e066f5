"""The model card: `genrec export` writes README.md into the artifact, checksummed; `genrec.load(DIR).card` reads it."""

from __future__ import annotations

import json
import shutil

import pytest
import yaml

import genrec
from genrec.data.schema import sha256_file
from genrec.serve.artifact import MANIFEST, ArtifactError, export_run


@pytest.fixture(scope="module")
def exported(runs, tmp_path_factory):
    return export_run(runs.hstu, tmp_path_factory.mktemp("card") / "art")


def test_export_writes_a_checksummed_card_that_load_returns(runs, exported):
    man = json.loads((exported / MANIFEST).read_text())
    assert man["files"]["card"] == "README.md"
    assert man["sha256"]["README.md"] == sha256_file(exported / "README.md")
    text = (exported / "README.md").read_text()
    assert genrec.load(exported).card == text


def test_the_card_says_model_data_protocol_metrics_recipe_and_version(runs, exported):
    text = (exported / "README.md").read_text()
    data = json.loads((runs.data_dir / "manifest.json").read_text())
    res = json.loads((runs.hstu / "results" / "test.json").read_text())
    cfg = res["config"]
    assert text.startswith("# hstu (retriever)\n")
    assert f"genrec {genrec.__version__}" in text and f"run `{runs.hstu.name}`" in text
    for key, value in (("d_model", cfg["model"]["d_model"]), ("num_layers", cfg["model"]["num_layers"]),
                       ("fingerprint", data["fingerprint"]), ("dataset", "toy"),
                       ("interactions", data["counts"]["interactions"]), ("users", data["counts"]["users"]),
                       ("split", "leave_one_out"), ("exclude_history", True), ("candidates", "full catalogue"),
                       ("best_epoch", res["protocol"]["best_epoch"]),
                       ("ndcg@10", f"{res['metrics']['ndcg@10']:.4f}"), ("mrr", f"{res['metrics']['mrr']:.4f}")):
        assert f"| {key} | {value} |" in text, key
    recipe = text.split("```yaml\n", 1)[1].split("```", 1)[0]
    parsed = yaml.safe_load(recipe)
    assert parsed["train"] == cfg["train"] and parsed["model"] == cfg["model"]


def test_an_edited_card_fails_to_load(exported, tmp_path):
    art = shutil.copytree(exported, tmp_path / "art")
    with (art / "README.md").open("a") as f:
        f.write("\nbest model ever\n")
    with pytest.raises(ArtifactError) as e:
        genrec.load(art)
    assert "README.md" in str(e.value) and "sha256" in str(e.value)


def test_an_artifact_exported_before_cards_has_none(exported, tmp_path):
    art = shutil.copytree(exported, tmp_path / "old")
    man = json.loads((art / MANIFEST).read_text())
    del man["files"]["card"], man["sha256"]["README.md"]
    (art / MANIFEST).write_text(json.dumps(man))
    (art / "README.md").unlink()
    loaded = genrec.load(art)
    assert loaded.card is None and loaded.recommend(["i1", "i2"], k=3)
