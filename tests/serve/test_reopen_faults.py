"""Reopening the wrong folder or a damaged run record: one line saying what the folder is, never a KeyError or a
JSON traceback (issue 21: `genrec evaluate` / `recommend` on an artifact, a truncated config.json)."""

from __future__ import annotations

import shutil

import pytest

from genrec.cli import main
from genrec.errors import CheckpointError
from genrec.runs.open import open_run
from genrec.runs.record import ARTIFACT_MANIFEST
from genrec.serve.format import MANIFEST

pytestmark = pytest.mark.reliability


def one_line(capsys) -> str:
    err = [x for x in capsys.readouterr().err.splitlines() if x.strip()]
    assert len(err) == 1 and err[0].startswith("genrec: error:"), err
    return err[0]


def test_the_runs_room_knows_the_artifact_manifest_name():
    assert ARTIFACT_MANIFEST == MANIFEST


@pytest.mark.parametrize("argv", [["evaluate"], ["recommend", "--history", "i1,i2"], ["export", "--out", "x"]])
def test_an_artifact_folder_is_named_for_what_it_is(served, capsys, tmp_path, argv):
    cmd, *rest = argv
    rest = [str(tmp_path / r) if r == "x" else r for r in rest]
    assert main([cmd, str(served.art_dir), *rest]) == 2
    msg = one_line(capsys)
    assert str(served.art_dir) in msg and "exported serving artifact, not a run folder" in msg
    assert "genrec serve" in msg


@pytest.mark.parametrize("damage", ["truncated", "empty", "not_utf8", "a_list", "no_config"])
def test_a_damaged_run_record_is_one_line_naming_it(served, capsys, tmp_path, damage):
    run = tmp_path / "run"
    shutil.copytree(served.run_dir, run)
    rec = run / "config.json"
    text = rec.read_bytes()
    rec.write_bytes({"truncated": text[: len(text) // 2], "empty": b"", "not_utf8": b"\xff\xfe{",
                     "a_list": b"[1, 2]", "no_config": b'{"model": "hstu"}'}[damage])
    with pytest.raises(CheckpointError, match="config.json"):
        open_run(run)
    for argv in (["evaluate", str(run)], ["recommend", str(run), "--history", "i1"],
                 ["train", "--out", str(run), "--data", str(served.data_dir), "--set", "model.name=hstu",
                  "train.progress=false"]):
        assert main(argv) == 2, argv
        msg = one_line(capsys)
        assert str(rec) in msg and ("not valid JSON" in msg or "not a genrec run record" in msg), msg
