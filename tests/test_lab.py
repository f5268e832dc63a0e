"""`make lab` starts JupyterLab on the chapters from the venv: start it headless, request the tree, stop it."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
VENV = Path(sys.executable).parent.parent   # the venv this test runs in is the one `make lab` uses


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_make_lab_serves_the_chapters(tmp_path):
    if not (VENV / "bin" / "jupyter").exists():
        pytest.fail(f"no jupyter in {VENV}/bin: the book stack (requirements.txt) installs jupyterlab")
    port, token = _free_port(), "xreg-test-token"
    args = (f"--no-browser --port={port} --ServerApp.ip=127.0.0.1 --IdentityProvider.token={token} "
            f"--ServerApp.port_retries=0")
    env = {**os.environ, "JUPYTER_RUNTIME_DIR": str(tmp_path / "runtime"), "JUPYTER_CONFIG_DIR": str(tmp_path / "cfg"),
           "JUPYTERLAB_WORKSPACES_DIR": str(tmp_path / "ws")}
    # -o install: the venv exists already; do not (re)install into it from a test
    proc = subprocess.Popen(["make", "--no-print-directory", "-o", "install", "lab", f"VENV={VENV}",
                             f"LAB_ARGS={args}"], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline, listing = time.monotonic() + 90, None
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                with urllib.request.urlopen(f"{base}/api/contents?token={token}", timeout=5) as r:
                    listing = json.load(r)
                break
            except OSError:
                time.sleep(1)
        if listing is None:
            out = proc.stdout.read() if proc.poll() is not None else ""
            pytest.fail(f"JupyterLab did not answer on {base}; exit {proc.poll()}:\n{out[-2000:]}")
        names = {item["name"] for item in listing["content"]}
        chapters = {p.name for p in (ROOT / "book").glob("[0-9][0-9]_*.ipynb")}
        assert chapters and chapters <= names, f"the lab's tree lacks chapters: {sorted(chapters - names)}"
        with urllib.request.urlopen(f"{base}/lab/tree/{sorted(chapters)[0]}?token={token}", timeout=10) as r:
            assert r.status == 200 and b"JupyterLab" in r.read()
        with urllib.request.urlopen(f"{base}/api/kernelspecs?token={token}", timeout=10) as r:
            assert "python3" in json.load(r)["kernelspecs"], "no python3 kernel in the venv"
    finally:
        try:
            os.killpg(proc.pid, signal.SIGTERM)   # make and the lab it started (their own session)
            proc.wait(timeout=20)
        except ProcessLookupError:
            pass
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.poll() is not None
