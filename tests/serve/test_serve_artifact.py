"""Artifacts: export, exact rankings (vs. evaluation, the training-time API and the CLI), clear load errors."""

from __future__ import annotations

import json
import pickle
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

import genrec
from genrec.cli import main
from genrec.data.splits import EvalSamples
from genrec.errors import GenrecError
from genrec.eval.retrieval import rank_targets
from genrec.serve.artifact import (
    MANIFEST,
    Artifact,
    ArtifactError,
    NotARankerError,
    RequestError,
    export_run,
    load_artifact,
)
from genrec.train.run import recommend as run_recommend

ROWS = [0, 3, 7, 11, 42]


def _copy(served, tmp_path):
    dst = tmp_path / "art"
    shutil.copytree(served.art_dir, dst)
    return dst


def _rewrite_manifest(path, **changes):
    man = json.loads((path / MANIFEST).read_text())
    man.update(changes)
    (path / MANIFEST).write_text(json.dumps(man))
    return man


def _refresh_sha(path, name):
    from genrec.data.schema import sha256_file

    man = json.loads((path / MANIFEST).read_text())
    man["sha256"][name] = sha256_file(path / name)
    (path / MANIFEST).write_text(json.dumps(man))


def _one_line_error(exc_info, *needles):
    msg = str(exc_info.value)
    assert "\n" not in msg, msg
    for n in needles:
        assert n in msg, (n, msg)


# -- export --------------------------------------------------------------------------------------------


def test_export_is_self_contained(served, art, monkeypatch):
    man = json.loads((served.art_dir / MANIFEST).read_text())
    assert man["format_version"] == 1 and man["genrec_version"] == genrec.__version__
    assert man["files"]["sid_table"] is None
    assert man["data_fingerprint"] == json.loads((served.data_dir / "manifest.json").read_text())["fingerprint"]
    assert {p.name for p in served.art_dir.iterdir()} == {MANIFEST, "model.safetensors", "config.json", "items.json",
                                                        "README.md"}
    assert art.title("i7") == "Toy item 7" and art.kinds == ("retriever",)
    assert art.metadata()["test_metrics"]["hr@10"] >= 0

    def no_dataset(*a, **k):
        raise AssertionError("loading an artifact must not read the dataset")

    monkeypatch.setattr("genrec.data.schema.load_dataset", no_dataset)
    monkeypatch.setattr("genrec.runs.record.load_dataset", no_dataset)
    assert load_artifact(served.art_dir).recommend(["i1", "i2"], k=3)


def test_export_refuses_a_non_run_folder_and_an_occupied_target(served, tmp_path):
    with pytest.raises(GenrecError) as e:
        export_run(tmp_path, tmp_path / "out")
    _one_line_error(e, "not a genrec run folder")
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    with pytest.raises(ArtifactError) as e:
        export_run(served.run_dir, tmp_path / "busy")
    _one_line_error(e, "busy", "not empty")
    with pytest.raises(ArtifactError) as e:
        export_run(served.run_dir, tmp_path / "busy", overwrite=True)
    _one_line_error(e, "not a genrec artifact")
    assert (tmp_path / "busy" / "notes.txt").read_text() == "mine"


# -- exactness -------------------------------------------------------------------------------------


def test_rankings_equal_the_evaluation_ranking(art, run, user_history):
    """The held-out item's position in the full list is its evaluation rank; lists equal open_run's."""
    ext = run.dataset.item_external_ids()
    hist_end = np.array([run.seqs.lengths[r] - 1 for r in ROWS])
    ranks = rank_targets(run.model, run.seqs, EvalSamples(np.array(ROWS), hist_end))
    for row, want_rank in zip(ROWS, ranks):
        hist, times, target, qt = user_history(row)
        recs = art.recommend(hist, k=art.num_items, timestamps=times, query_time=qt)
        assert [i for i, _ in recs].index(target) == want_rank
        assert not set(hist) & {i for i, _ in recs}
        internal = [int(e[1:]) for e in hist]  # toy ids are "i<internal id>"
        ref = run_recommend(run, internal, times, k=art.num_items, query_time=qt)
        assert recs == [(ext[i], s) for i, s in ref]


def test_batch_equals_one_by_one(art, user_history):
    hists, times = zip(*[user_history(r)[:2] for r in ROWS])
    batch = art.recommend_batch(list(hists), k=15, timestamps=list(times))
    for h, t, b in zip(hists, times, batch):
        one = art.recommend(h, k=15, timestamps=t)
        assert [i for i, _ in b] == [i for i, _ in one]
        assert np.allclose([s for _, s in b], [s for _, s in one], atol=1e-5)
        assert b.truncated == one.truncated and b.history_used == one.history_used


def test_cli_recommend_equals_python_api(served, art, capsys):
    hist = ["i3", "i5", "i7", "i9"]
    assert main(["recommend", str(served.run_dir), "--history", ",".join(hist), "-k", "10", "--json"]) == 0
    cli = json.loads(capsys.readouterr().out)
    recs = art.recommend(hist, k=10)
    assert [r["item"] for r in cli] == [i for i, _ in recs]
    assert [r["score"] for r in cli] == [s for _, s in recs]


# -- request handling --------------------------------------------------------------------------------


def test_unknown_ids_truncation_and_k(art):
    long = [f"i{1 + j % 60}" for j in range(45)]
    recs = art.recommend(["zz", *long, "i2", "zz", 999], k=5)
    assert recs.ignored_unknown == ["zz", "999"]
    assert recs.truncated and recs.history_used == art.max_len
    with pytest.raises(RequestError) as e:
        art.recommend(["i1", "nope"], unknown="reject")
    _one_line_error(e, "unknown item id", "'nope'")
    assert e.value.details["unknown_items"] == ["nope"]
    for bad in (0, art.num_items + 1, 10**30):
        with pytest.raises(RequestError, match="out of range"):
            art.recommend(["i1"], k=bad)
    with pytest.raises(RequestError, match="empty history"):
        art.recommend([])
    with pytest.raises(RequestError, match="no known item id"):
        art.recommend(["x", "y"])
    with pytest.raises(RequestError, match="timestamps has 1 entries"):
        art.recommend(["i1", "i2"], timestamps=[5])
    with pytest.raises(RequestError, match="timestamps\\[1\\] must be an integer"):
        art.recommend(["i1", "i2"], timestamps=[5, 6.5])
    # with the history excluded, fewer than k items may remain: the list is cut, as `genrec recommend` does
    assert len(art.recommend([f"i{j}" for j in range(1, 56)], k=60)) == 5


def test_integer_ids_compare_as_strings(art):
    ids = ["", *[str(100 + j) for j in range(1, art.num_items + 1)]]
    numeric = Artifact(art.root, art.manifest, art.config, art.model, ids, None)
    assert numeric.recommend([101, "102", 103], k=5) == numeric.recommend(["101", "102", "103"], k=5)
    with pytest.raises(RequestError, match="history\\[1\\]"):
        numeric.recommend([101, True])


def test_score_dispatches_on_kinds(art, ranker_art):
    with pytest.raises(NotARankerError) as e:
        art.score(["i1"], ["i2", "i3"])
    _one_line_error(e, "model 'hstu' is not a ranker")

    ranker = ranker_art
    out = ranker.score(["i1", "i2"], ["i3", "i9", "nope", "i5"])
    assert [i for i, _ in out] == ["i9", "i5", "i3"] and out[0][1] == 2 + 4.5
    assert out.ignored_unknown == ["nope"]
    with pytest.raises(RequestError, match="not a retriever"):
        ranker.recommend(["i1"])


# -- loading: no pickle, clear errors ----------------------------------------------------------------


def test_loading_never_unpickles(served, monkeypatch):
    def forbidden(*a, **k):
        raise AssertionError("unpickling during artifact load")

    monkeypatch.setattr(torch, "load", forbidden)
    monkeypatch.setattr(pickle, "load", forbidden)
    monkeypatch.setattr(pickle, "loads", forbidden)
    monkeypatch.setattr(pickle, "Unpickler", forbidden)
    a = genrec.load(str(served.art_dir))
    assert len(a.recommend(["i1", "i2"], k=4)) == 4


def test_import_genrec_stays_light():
    code = ("import sys, genrec; assert callable(genrec.load); "
            "assert 'torch' not in sys.modules and 'genrec.serve.artifact' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_wrong_shapes(served, tmp_path):
    dst = _copy(served, tmp_path)
    w = load_file(str(dst / "model.safetensors"))
    w["item_emb.weight"] = torch.zeros(62, w["item_emb.weight"].shape[1])
    save_file(w, str(dst / "model.safetensors"))
    with pytest.raises(ArtifactError) as e:
        load_artifact(dst)
    _one_line_error(e, "model.safetensors", "sha256")
    _refresh_sha(dst, "model.safetensors")
    with pytest.raises(ArtifactError) as e:
        load_artifact(dst)
    _one_line_error(e, "model.safetensors", "item_emb.weight", "(62, 16)", "artifact.json says (61, 16)")
    man = json.loads((dst / MANIFEST).read_text())
    man["tensors"]["item_emb.weight"] = [62, 16]
    (dst / MANIFEST).write_text(json.dumps(man))
    with pytest.raises(ArtifactError) as e:
        load_artifact(dst)
    _one_line_error(e, "model.safetensors", "item_emb.weight", "expects (61, 16)")


def test_wrong_format_version_and_missing_files(served, tmp_path):
    dst = _copy(served, tmp_path)
    _rewrite_manifest(dst, format_version=99, genrec_version="9.0.0")
    with pytest.raises(ArtifactError) as e:
        load_artifact(dst)
    _one_line_error(e, MANIFEST, "format version 99", "genrec 9.0.0", "upgrade genrec")
    _rewrite_manifest(dst, format_version=1)
    (dst / "items.json").unlink()
    with pytest.raises(ArtifactError) as e:
        load_artifact(dst)
    _one_line_error(e, "items.json", "missing")
    (dst / MANIFEST).unlink()
    with pytest.raises(ArtifactError) as e:
        load_artifact(dst)
    _one_line_error(e, MANIFEST, "genrec export")
    with pytest.raises(ArtifactError) as e:
        load_artifact(served.run_dir)
    _one_line_error(e, "training run folder", "genrec export")
    with pytest.raises(ArtifactError) as e:
        load_artifact(tmp_path / "absent")
    _one_line_error(e, "absent", "not found")


def test_corrupt_files(served, tmp_path):
    dst = _copy(served, tmp_path)
    (dst / "model.safetensors").write_bytes(b"\x00garbage" * 10)
    _refresh_sha(dst, "model.safetensors")
    with pytest.raises(ArtifactError) as e:
        load_artifact(dst)
    _one_line_error(e, "model.safetensors", "not a readable safetensors file")
    dst = _copy(served, tmp_path / "b")
    (dst / "items.json").write_text(json.dumps({"external_ids": ["", "a"], "titles": None}))
    _refresh_sha(dst, "items.json")
    with pytest.raises(ArtifactError) as e:
        load_artifact(dst)
    _one_line_error(e, "items.json", "61 strings")
    (dst / MANIFEST).write_text("{not json")
    with pytest.raises(ArtifactError) as e:
        load_artifact(dst)
    _one_line_error(e, MANIFEST, "not valid JSON")


def test_sid_table_slot_is_loaded(served, tmp_path):
    dst = _copy(served, tmp_path)
    save_file({"codes": torch.arange(61 * 3).reshape(61, 3)}, str(dst / "sid_table.safetensors"))
    man = json.loads((dst / MANIFEST).read_text())
    man["files"]["sid_table"] = "sid_table.safetensors"
    (dst / MANIFEST).write_text(json.dumps(man))
    _refresh_sha(dst, "sid_table.safetensors")
    a = load_artifact(dst)
    assert a.sid_table is not None and a.sid_table["codes"].shape == (61, 3)
    man["files"]["sid_table"] = "../escape.safetensors"
    (dst / MANIFEST).write_text(json.dumps(man))
    with pytest.raises(ArtifactError, match="plain file name"):
        load_artifact(dst)


@pytest.mark.parametrize("lost", ["map", "entry", "not_a_map"])
def test_a_missing_checksum_is_an_error_not_a_pass(served, tmp_path, lost):
    """An artifact.json that lost its sha256 map (or one file's entry) would load unchecked: a flipped weights
    byte would go unnoticed. It is refused in one line naming the file."""
    dst = _copy(served, tmp_path)
    man = json.loads((dst / MANIFEST).read_text())
    if lost == "map":
        del man["sha256"]
    elif lost == "entry":
        del man["sha256"]["model.safetensors"]
    else:
        man["sha256"] = ["model.safetensors"]
    (dst / MANIFEST).write_text(json.dumps(man))
    data = bytearray((dst / "model.safetensors").read_bytes())
    data[-1] ^= 0x01
    (dst / "model.safetensors").write_bytes(bytes(data))
    with pytest.raises(ArtifactError) as e:
        load_artifact(dst)
    _one_line_error(e, "sha256", MANIFEST if lost != "entry" else "model.safetensors")
