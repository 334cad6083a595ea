"""The main job runs with outbound network blocked: nothing is downloaded implicitly."""
from __future__ import annotations

import json
import subprocess
import sys

from conftest import run_cli

GUARD = """
import socket
def _blocked(*a, **k):
    raise OSError("network blocked by test_offline")
socket.socket.connect = _blocked
socket.socket.connect_ex = _blocked
socket.create_connection = _blocked
socket.getaddrinfo = _blocked
"""


def _no_network_prefix(tmp_path) -> tuple[list[str], dict]:
    """A network namespace with no interfaces when we may make one (root), else a socket guard in sitecustomize."""
    if subprocess.run(["unshare", "-n", "true"], capture_output=True).returncode == 0:
        return ["unshare", "-n"], {}
    (tmp_path / "sitecustomize.py").write_text(GUARD)
    return [], {"PYTHONPATH": str(tmp_path)}


def test_network_really_blocked(tmp_path):
    prefix, env = _no_network_prefix(tmp_path)
    probe = "import socket; socket.create_connection(('93.184.216.34', 80), timeout=2)"
    r = subprocess.run(prefix + [sys.executable, "-c", probe], capture_output=True, text=True,
                       env={**__import__("os").environ, **env}, timeout=30)
    assert r.returncode != 0 and ("unreachable" in r.stderr.lower() or "blocked" in r.stderr.lower())


def test_main_job_offline(tmp_path):
    prefix, env = _no_network_prefix(tmp_path)
    r = run_cli("train", "train.epochs=3", "train.progress=false", f"out_dir={tmp_path / 'runs'}", prefix=prefix,
                env={**env, "HOME": str(tmp_path)})            # a fresh HOME: no cache from earlier runs either
    assert r.returncode == 0, r.stderr
    run_dir = tmp_path / "runs" / "mnist5k"
    assert r.stdout.strip().splitlines()[-1] == str(run_dir)
    assert json.loads((run_dir / "summary.json").read_text())["test/acc"] > 0.93
