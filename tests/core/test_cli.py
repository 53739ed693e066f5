"""The CLI turns every user error into one line on stderr and exit code 2, never a traceback."""

import json

import pytest

from genrec.cli import main


def run_cli(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code, err, *needles):
    assert code == 2
    assert "Traceback" not in err
    lines = [x for x in err.strip().splitlines() if x]
    assert len(lines) == 1 and lines[0].startswith("genrec: error:"), err
    for n in needles:
        assert n in lines[0], (n, err)


FAST = ["model.d_model=16", "model.num_layers=1", "data.max_len=20", "train.epochs=2", "train.batch_size=32",
        "train.progress=false", "train.tensorboard=false", "objective.num_negatives=8"]


def test_unknown_config_key(capsys, tmp_path):
    code, _, err = run_cli(capsys, "train", "--out", str(tmp_path / "r"), "--set", "train.lrr=0.1")
    assert_one_line_error(code, err, "train.lrr", "did you mean 'train.lr'")


def test_unknown_section_and_bad_value(capsys, tmp_path):
    code, _, err = run_cli(capsys, "train", "--set", "trian.lr=0.1")
    assert_one_line_error(code, err, "trian")
    code, _, err = run_cli(capsys, "train", "--set", "train.epochs=many")
    assert_one_line_error(code, err, "train.epochs", "expected int")


def test_missing_and_invalid_config_files(capsys, tmp_path):
    code, _, err = run_cli(capsys, "train", str(tmp_path / "nope.yaml"))
    assert_one_line_error(code, err, "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: {name: hstu\ntrain: [")
    code, _, err = run_cli(capsys, "train", str(bad))
    assert_one_line_error(code, err, "bad.yaml", "invalid YAML")


def test_missing_dataset_folder(capsys, tmp_path):
    code, _, err = run_cli(capsys, "train", "--data", str(tmp_path / "absent"), "--set", *FAST)
    assert_one_line_error(code, err, "absent")


def test_not_a_run_folder(capsys, tmp_path):
    code, _, err = run_cli(capsys, "evaluate", str(tmp_path))
    assert_one_line_error(code, err, "not a genrec run folder")


def test_train_evaluate_recommend_round_trip(capsys, tmp_path, toy_dir):
    run = tmp_path / "run"
    code, out, err = run_cli(capsys, "train", "--data", str(toy_dir), "--out", str(run), "--set", "model.name=hstu", *FAST)
    assert code == 0, err
    assert "ndcg@10" in out
    code, out, _ = run_cli(capsys, "evaluate", str(run), "--json")
    assert code == 0
    res = json.loads(out)
    saved = json.loads((run / "results" / "test.json").read_text())
    assert res["metrics"] == saved["metrics"]
    code, out, _ = run_cli(capsys, "recommend", str(run), "--user", "u1", "-k", "5", "--json")
    assert code == 0 and len(json.loads(out)) == 5
    code, out, _ = run_cli(capsys, "recommend", str(run), "--history", "i1,i2,i3", "-k", "3")
    assert code == 0 and "Toy item" in out
    code, _, err = run_cli(capsys, "recommend", str(run), "--history", "i1,zzz")
    assert_one_line_error(code, err, "zzz")
    code, _, err = run_cli(capsys, "recommend", str(run), "--user", "nobody")
    assert_one_line_error(code, err, "nobody")
    code, _, err = run_cli(capsys, "recommend", str(run), "--user", "u1", "-k", "0")
    assert_one_line_error(code, err, "k=0")
    code, _, err = run_cli(capsys, "recommend", str(run), "--history", " , ")
    assert_one_line_error(code, err, "empty history")


def test_models_lists_registry_and_recipes(capsys):
    code, out, _ = run_cli(capsys, "models")
    assert code == 0
    assert "hstu" in out and "sasrec" in out and "retriever" in out and "hstu-ml1m" in out


def test_debug_shows_traceback(tmp_path):
    from genrec.errors import ConfigError

    with pytest.raises(ConfigError):
        main(["--debug", "train", "--set", "train.lrr=1"])


def test_models_lists_every_recipe_under_its_model(capsys):
    """`genrec models` resolves `extends:`, so every recipe in configs/ is listed under a registered model."""
    from genrec.cli import main
    from genrec.config import recipe_names

    assert main(["models"]) == 0
    listed = set()
    for line in capsys.readouterr().out.splitlines()[1:]:
        parts = line.split(None, 2)
        if len(parts) == 3 and parts[2] != "-":
            listed.update(r.strip() for r in parts[2].split(","))
    assert set(recipe_names()) <= listed, sorted(set(recipe_names()) - listed)


def _options_without_help(parser, name: str) -> list[str]:
    import argparse

    out = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub, sp in action.choices.items():
                if sub != "serve":  # serve/cli.py: its own room
                    out += _options_without_help(sp, f"{name} {sub}")
        elif not action.help and not isinstance(action, argparse._HelpAction):
            out.append(f"{name} {'/'.join(action.option_strings) or action.dest}")
    return out


def test_every_option_says_what_it_does():
    """Before: `genrec evaluate --help` and `genrec recommend --help` described none of their options."""
    from genrec.cli import build_parser

    assert _options_without_help(build_parser(), "genrec") == []


def test_json_into_a_reader_that_left_ends_quietly(toy_dir, tmp_path):
    """`genrec evaluate RUN --json | head -c 0`: before, a BrokenPipeError traceback and exit code 120."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    assert main(["train", "--data", str(toy_dir), "--out", str(tmp_path / "run"), "--set", *FAST,
                 "train.epochs=1"]) == 0
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2] / "src"), "OMP_NUM_THREADS": "1"}
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before genrec writes a byte
    try:
        r = subprocess.run([sys.executable, "-m", "genrec.cli", "evaluate", str(tmp_path / "run"), "--json"],
                           stdout=write_end, stderr=subprocess.PIPE, env=env, text=True, timeout=300)
    finally:
        os.close(write_end)
    assert r.returncode == 141 and r.stderr == "", r.stderr[-2000:]
