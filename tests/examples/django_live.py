"""The Django order service as a real process: ``migrate``, then ``serve`` under waitress.

Django's settings are global to a process, so every Django project in the tests runs in
a subprocess of its own (``python -m chttp_examples.django_orders``, the example's
``manage.py``) with its settings chosen by environment variables; nothing configures
Django inside the pytest process.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from sqlalchemy import text

from chttp_core.db import make_engine
from tests.server.live import REPO_ROOT

__all__ = ["django_env", "manage", "DjangoServer", "scalar", "runs"]

TEST_SETTINGS = "tests.examples.django_test_settings"


def django_env(db_url: str, test_dir: Path, **extra: str) -> dict[str, str]:
    """The environment of a Django process on ``db_url`` (journal and markers in test_dir)."""
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": TEST_SETTINGS, "CHTTP_ORDERS_DB": db_url,
           "CHTTP_TEST_DIR": str(test_dir), "PYTHONPATH": str(REPO_ROOT)}
    if db_url.startswith("sqlite"):
        env["CHTTP_ORDERS_JOURNAL"] = f"sqlite:///{test_dir / 'journal.db'}"
    env.update(extra)
    return env


def manage(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """Run a management command to its end; fail loudly if it fails."""
    done = subprocess.run([sys.executable, "-m", "chttp_examples.django_orders", *args], check=False,
                          cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"manage {args} failed:\n{done.stdout}\n{done.stderr}"
    return done


class DjangoServer:
    """``serve`` as a child process; ``url`` once it listens. ``kill()`` is SIGKILL."""

    def __init__(self, env: dict[str, str], *, threads: int = 8) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "chttp_examples.django_orders", "serve", "--port", "0",
             "--threads", str(threads)],
            cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        line = self.process.stdout.readline() if self.process.stdout else ""
        if "serving on" not in line:
            self.process.kill()
            _, err = self.process.communicate(timeout=10)
            raise AssertionError(f"the Django server did not start: {line}{err}")
        self.url = line.strip().rsplit(" ", 1)[-1]

    def kill(self) -> str:
        """SIGKILL the server; return what it wrote to stderr."""
        if self.process.poll() is None:
            self.process.kill()
        _, err = self.process.communicate(timeout=10)
        return err

    def __enter__(self) -> DjangoServer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.kill()


def scalar(db_url: str, sql: str, **params: object) -> Any:
    """One value read from the project's database with a connection of the test's own."""
    engine = make_engine(db_url)
    try:
        with engine.connect() as connection:
            return connection.execute(text(sql), params).scalar_one()
    finally:
        engine.dispose()


def runs(test_dir: Path) -> list[str]:
    """The test views' runs so far, in order (``name message-id``)."""
    path = test_dir / "runs"
    return path.read_text().splitlines() if path.exists() else []
