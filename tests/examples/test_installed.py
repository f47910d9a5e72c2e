"""``chttp-server demo`` runs from an installed wheel, not only from the checkout.

The wheel is built from a copy of the tree, installed with ``pip --target`` into a
directory, and that directory put first on ``PYTHONPATH`` for the command and for every
process the demo starts; the test checks the demo's modules really came from there.
"""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile

import pytest


pytestmark = pytest.mark.slow


def test_the_demo_runs_from_the_installed_wheel(tmp_path, built_wheel):
    wheel = built_wheel
    names = set(zipfile.ZipFile(wheel).namelist())
    for module in ("__init__", "ledger", "escrow", "client", "serve", "demo", "audit", "chaos",
                   "cli", "progress", "steps", "ledger_asgi", "escrow_asgi", "serve_asgi"):
        assert f"chttp_examples/escrow/{module}.py" in names
    assert "chttp_examples/__init__.py" in names
    assert not any(name.startswith("examples/") for name in names)

    target = tmp_path / "installed"
    installed = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--no-compile", "--quiet",
         "--target", str(target), str(wheel)],
        capture_output=True, text=True, timeout=300,
    )
    assert installed.returncode == 0, installed.stdout + installed.stderr

    env = {**os.environ, "PYTHONPATH": str(target)}
    where = subprocess.run(
        [sys.executable, "-c", "import chttp_examples.escrow.serve as m; print(m.__file__)"],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120,
    )
    assert where.stdout.strip().startswith(str(target)), where.stdout + where.stderr

    demo = subprocess.run(
        [sys.executable, "-m", "chttp_server.cli", "demo", "--transfers", "2", "--kill-rate", "0",
         "--seed", "9", "--db-dir", str(tmp_path / "run")],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300,
    )
    assert demo.returncode == 0, demo.stdout + demo.stderr
    assert "PASSED" in demo.stdout
