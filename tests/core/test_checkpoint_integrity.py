"""Checkpoints are never trusted blindly: checksums written with them, verified on resume, a damaged or missing
latest checkpoint falls back to the previous good one (saying so in one line), and a folder with none left is a
one-line error naming it. Checkpoints written before checksums existed still resume."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
import torch

from genrec.config import config_from_dict
from genrec.data.schema import sha256_file
from genrec.errors import CheckpointError
from genrec.runs.checkpoint import load_checkpoint
from genrec.train.trainer import Trainer
from tests.conftest import assert_same_weights, latest_weights, tiny_cfg

pytestmark = pytest.mark.reliability

FULL = tiny_cfg("hstu", train={"epochs": 3, "checkpoint_every": 2})
STOP = tiny_cfg("hstu", train={"epochs": 3, "checkpoint_every": 2, "max_steps": 5})


@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
    """An uninterrupted run: the weights every recovered run must end with."""
    from tests.conftest import make_toy

    out = tmp_path_factory.mktemp("full") / "run"
    Trainer(config_from_dict(FULL), out, make_toy()).fit()
    return latest_weights(out)


def stopped(toy, tmp_path: Path) -> Path:
    """A run stopped at step 5 (an epoch is 4 steps): checkpoints epoch-00001 (previous) and step-000000005."""
    out = tmp_path / "part"
    Trainer(config_from_dict(STOP), out, toy).fit()
    return out / "checkpoints"


def notices(capsys) -> list[str]:
    return [line for line in capsys.readouterr().err.splitlines() if line.startswith("genrec:")]


def flip_last_bit(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x01  # inside the tensor data: the file still parses
    path.write_bytes(bytes(data))


def test_each_checkpoint_carries_checksums_and_the_previous_one_is_kept(toy, tmp_path):
    ck = stopped(toy, tmp_path)
    assert (ck / "latest").read_text() == "step-000000005"
    assert sorted(p.name for p in ck.iterdir() if p.is_dir()) == ["epoch-00001", "step-000000005"]
    for folder in ("epoch-00001", "step-000000005"):
        sums = json.loads((ck / folder / "checksums.json").read_text())["sha256"]
        assert sums == {n: sha256_file(ck / folder / n) for n in ("model.safetensors", "optimizer.pt", "state.json")}


def test_bit_flip_in_latest_weights_falls_back_to_the_previous_checkpoint(toy, tmp_path, capsys, full_run):
    ck = stopped(toy, tmp_path)
    flip_last_bit(ck / "step-000000005" / "model.safetensors")
    capsys.readouterr()
    tr = Trainer(config_from_dict(FULL), tmp_path / "part", toy)
    lines = notices(capsys)
    assert len(lines) == 1 and "step-000000005" in lines[0] and "model.safetensors" in lines[0], lines
    assert "resuming from epoch-00001" in lines[0]
    assert tr.resumed_from == ck / "epoch-00001" and tr.state["global_step"] == 4 and tr.state["epoch"] == 1
    tr.fit()
    assert_same_weights(latest_weights(tmp_path / "part"), full_run)


@pytest.mark.parametrize("name", ["state.json", "optimizer.pt"])
def test_truncated_file_in_latest_checkpoint_falls_back(toy, tmp_path, capsys, full_run, name):
    ck = stopped(toy, tmp_path)
    path = ck / "step-000000005" / name
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    capsys.readouterr()
    tr = Trainer(config_from_dict(FULL), tmp_path / "part", toy)
    lines = notices(capsys)
    assert len(lines) == 1 and name in lines[0] and "resuming from epoch-00001" in lines[0], lines
    tr.fit()
    assert_same_weights(latest_weights(tmp_path / "part"), full_run)


@pytest.mark.parametrize("name", ["state.json", "optimizer.pt", "model.safetensors"])
def test_truncated_files_without_checksums_fall_back_too(toy, tmp_path, capsys, name):
    """An old checkpoint (no checksums) is still checked as far as it can be: a torn file is no traceback."""
    ck = stopped(toy, tmp_path)
    for folder in ("epoch-00001", "step-000000005"):
        (ck / folder / "checksums.json").unlink()
    path = ck / "step-000000005" / name
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    capsys.readouterr()
    tr = Trainer(config_from_dict(FULL), tmp_path / "part", toy)
    assert tr.resumed_from == ck / "epoch-00001"
    assert any(name in line and "epoch-00001" in line for line in notices(capsys))


def test_no_good_checkpoint_left_is_one_line_naming_the_folder(toy, tmp_path):
    ck = stopped(toy, tmp_path)
    for folder in ("epoch-00001", "step-000000005"):
        flip_last_bit(ck / folder / "model.safetensors")
    with pytest.raises(CheckpointError) as err:
        Trainer(config_from_dict(FULL), tmp_path / "part", toy)
    msg = str(err.value)
    assert "\n" not in msg and str(ck) in msg and "--no-resume" in msg


def test_checkpoints_without_checksums_resume_unverified_once(toy, tmp_path, capsys, full_run):
    """Run folders written before checksums existed still resume exactly, with one line saying so."""
    ck = stopped(toy, tmp_path)
    for folder in ("epoch-00001", "step-000000005"):
        (ck / folder / "checksums.json").unlink()
    capsys.readouterr()
    tr = Trainer(config_from_dict(FULL), tmp_path / "part", toy)
    lines = notices(capsys)
    assert len(lines) == 1 and "unverified" in lines[0] and "step-000000005" in lines[0], lines
    assert tr.state["global_step"] == 5
    tr.fit()
    assert notices(capsys) == []  # said once: the checkpoints written since carry checksums
    assert_same_weights(latest_weights(tmp_path / "part"), full_run)


def test_missing_latest_pointer_resumes_from_the_newest_checkpoint_and_says_so(toy, tmp_path, capsys, full_run):
    ck = stopped(toy, tmp_path)
    (ck / "latest").unlink()
    capsys.readouterr()
    tr = Trainer(config_from_dict(FULL), tmp_path / "part", toy)
    lines = notices(capsys)
    assert len(lines) == 1 and "latest" in lines[0] and "step-000000005" in lines[0], lines
    assert tr.resumed_from == ck / "step-000000005" and tr.state["global_step"] == 5
    tr.fit()
    assert_same_weights(latest_weights(tmp_path / "part"), full_run)


class _Payload:
    """A pickle that would create a file when unpickled."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_a_malicious_optimizer_pickle_never_runs_and_is_one_line(toy, tmp_path):
    import torch

    ck = stopped(toy, tmp_path)
    marker = tmp_path / "pwned"
    bad = ck / "step-000000005" / "optimizer.pt"
    torch.save({"optimizer": _Payload(marker)}, bad, pickle_module=pickle)
    (ck / "step-000000005" / "checksums.json").unlink()  # as an old checkpoint: only the load can refuse it
    model = Trainer(config_from_dict(STOP), tmp_path / "other", toy)
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(ck / "step-000000005", model.model, model.optimizer)
    assert not marker.exists()
    assert "\n" not in str(err.value) and str(bad) in str(err.value)


def test_a_step_saved_twice_still_keeps_the_checkpoint_before_it(toy, tmp_path):
    """max_steps on a checkpoint_every step writes that checkpoint twice: the one before must survive it."""
    raw = tiny_cfg("hstu", train={"epochs": 3, "checkpoint_every": 2, "max_steps": 6})
    Trainer(config_from_dict(raw), tmp_path / "r", toy).fit()
    ck = tmp_path / "r" / "checkpoints"
    assert sorted(p.name for p in ck.iterdir() if p.is_dir()) == ["epoch-00001", "step-000000006"]


def test_evaluation_and_export_of_the_latest_weights_verify_them(toy_dir, tmp_path, capsys):
    from genrec.cli import main

    out = tmp_path / "r"
    sets = ["model.name=sasrec", "model.d_model=16", "model.num_layers=1", "data.max_len=20", "train.epochs=1",
            "train.progress=false", "train.tensorboard=false", f"data.path={toy_dir}"]
    assert main(["train", "--out", str(out), "--set", *sets]) == 0
    ck = out / "checkpoints" / (out / "checkpoints" / "latest").read_text()
    flip_last_bit(ck / "model.safetensors")
    capsys.readouterr()
    assert main(["export", str(out), "--out", str(tmp_path / "art"), "--weights", "latest"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "model.safetensors: sha256 does not match" in err[0], err
    assert main(["export", str(out), "--out", str(tmp_path / "art")]) == 0  # the best weights are another file


def test_the_best_weights_carry_a_checksum_that_evaluation_checks(toy_dir, tmp_path, capsys):
    """``best/model.safetensors`` (what evaluation, export and the end of training read) is checksummed too: a
    bit flipped on disk is one line naming the file, not a silent evaluation of other weights."""
    from genrec.cli import main
    from genrec.runs.checkpoint import save_best_weights, verify_best_weights

    out = tmp_path / "r"
    sets = ["model.name=sasrec", "model.d_model=16", "model.num_layers=1", "data.max_len=20", "train.epochs=2",
            "train.progress=false", "train.tensorboard=false", f"data.path={toy_dir}"]
    assert main(["train", "--out", str(out), "--set", *sets]) == 0
    best = out / "best" / "model.safetensors"
    sums = json.loads((out / "best" / "checksums.json").read_text())
    assert sums == {"sha256": {"model.safetensors": sha256_file(best)}} and verify_best_weights(best)
    flip_last_bit(best)
    capsys.readouterr()
    for argv in (["evaluate", str(out)], ["export", str(out), "--out", str(tmp_path / "art")]):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and f"{best}: sha256 does not match checksums.json" in err[0], err
    assert main(["export", str(out), "--out", str(tmp_path / "art"), "--weights", "latest"]) == 0
    flip_last_bit(best)  # back as written
    (out / "best" / "checksums.json").unlink()  # a run written before best weights had checksums
    assert not verify_best_weights(best) and main(["evaluate", str(out)]) == 0
    # killed while replacing them: the sums name the new file and the one it replaces, so either verifies
    from genrec.runs.open import open_run

    model = open_run(out).model
    save_best_weights(model, best)
    old_bytes, old = best.read_bytes(), sha256_file(best)
    with torch.no_grad():
        next(model.parameters()).add_(1.0)
    save_best_weights(model, best)
    new = sha256_file(best)
    best.write_bytes(old_bytes)  # the rename of the new file never happened
    with pytest.raises(CheckpointError, match="sha256 does not match"):
        verify_best_weights(best)
    (out / "best" / "checksums.json").write_text(json.dumps({"sha256": {"model.safetensors": new}, "replacing": old}))
    assert verify_best_weights(best)


def test_a_key_added_after_a_run_was_recorded_is_unchanged_at_its_default():
    """Continuing a finished run made before a key existed: the key at its default is what that run did."""
    from genrec.config import config_from_dict
    from genrec.train.run_folder import record_changes
    from tests.conftest import tiny_cfg

    new = {"config": config_from_dict(tiny_cfg("sasrec")).to_dict()}
    old = {"config": {**new["config"], "train": {k: v for k, v in new["config"]["train"].items() if k != "packed"}}}
    assert record_changes(old, new) == []
    new["config"]["train"]["packed"] = True
    assert record_changes(old, new) == ["train.packed is True, recorded None"]
