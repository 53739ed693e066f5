"""`genrec export` / `genrec serve`: one-line errors, and one real server process end to end."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

import httpx
import pytest

from genrec.cli import main


def run_cli(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code, err, *needles):
    assert code == 2, err
    lines = [x for x in err.strip().splitlines() if x]
    assert len(lines) == 1 and lines[0].startswith("genrec: error:"), err
    for n in needles:
        assert n in lines[0], (n, err)


def test_export_cli(capsys, served, tmp_path):
    code, out, _ = run_cli(capsys, "export", served.run_dir, "--out", tmp_path / "a")
    assert code == 0 and "exported hstu" in out and "genrec serve" in out
    code, _, err = run_cli(capsys, "export", served.run_dir, "--out", tmp_path / "a")
    assert_one_line_error(code, err, "not empty", "--force")
    code, _, _ = run_cli(capsys, "export", served.run_dir, "--out", tmp_path / "a", "--force", "--weights", "latest")
    assert code == 0 and json.loads((tmp_path / "a" / "artifact.json").read_text())["weights_from"] == "latest"
    code, _, err = run_cli(capsys, "export", tmp_path / "nothing-here", "--out", tmp_path / "b")
    assert_one_line_error(code, err, "not a genrec run folder")


def test_serve_without_extras_says_what_to_install(capsys, served, monkeypatch):
    monkeypatch.setitem(sys.modules, "uvicorn", None)
    code, _, err = run_cli(capsys, "serve", served.art_dir)
    assert_one_line_error(code, err, "pip install 'genrec[serve]'", "uvicorn")


def test_serve_argument_errors(capsys, served):
    code, _, err = run_cli(capsys, "serve", served.run_dir)
    assert_one_line_error(code, err, "training run folder", "genrec export")
    code, _, err = run_cli(capsys, "serve", served.art_dir, "--max-batch-size", "0")
    assert_one_line_error(code, err, "max_batch_size=0")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        code, _, err = run_cli(capsys, "serve", served.art_dir, "--port", s.getsockname()[1])
    assert_one_line_error(code, err, "cannot listen on 127.0.0.1")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def assert_oversized_bodies_get_their_413(base: str) -> None:
    """A 10 MB body (declared, or streamed without a length) is answered 413 in a way a send-then-read client
    sees: urllib sends the whole body before it reads, and used to meet a connection reset instead."""
    body = b'{"history": [' + b'"i1",' * 2_000_000 + b'"i1"]}'
    req = urllib.request.Request(f"{base}/recommend", data=body, headers={"content-type": "application/json"})
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(req, timeout=30)
    assert err.value.code == 413 and "exceeds the limit" in json.loads(err.value.read())["detail"]

    def chunks():
        for i in range(0, len(body), 1 << 16):
            yield body[i:i + (1 << 16)]

    r = httpx.post(f"{base}/recommend", content=chunks(), headers={"content-type": "application/json"}, timeout=30)
    assert r.status_code == 413 and "exceeds the limit" in r.json()["detail"]
    assert httpx.get(f"{base}/health", timeout=5).status_code == 200


@pytest.mark.slow
def test_real_server_process(served):
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "genrec.cli", "serve", str(served.art_dir), "--port", str(port),
                             "--no-access-log", "--log-level", "warning"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env={**os.environ})
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.time() + 60
        while True:
            assert proc.poll() is None, proc.stdout.read()
            try:
                if httpx.get(f"{base}/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.time() < deadline, "server did not come up"
            time.sleep(0.2)
        r = httpx.post(f"{base}/recommend", json={"history": ["i1", "i2"], "k": 3}, timeout=10)
        assert r.status_code == 200 and len(r.json()["items"]) == 3
        r = httpx.post(f"{base}/recommend", content=b"\x00\xff{{", timeout=10)
        assert r.status_code == 400
        assert_oversized_bodies_get_their_413(base)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            out, _ = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
    # SIGTERM is how a service is asked to stop: it drains, runs the lifespan shutdown and exits 0
    assert proc.returncode == 0, out
    assert "Traceback" not in out
