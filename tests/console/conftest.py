"""Fixtures of the console tests: filled stores, a console serving them, a real browser.

The browser is Debian's chromium driven by selenium through the system chromedriver,
passed by path so that selenium-manager never runs (nothing is downloaded at test time).
Without chromium the browser tests are skipped, saying so; ``.ci/run`` installs it.
"""

from __future__ import annotations

import itertools
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import pytest

from chttp_core import migrate
from chttp_server import CertifiedMiddleware
from chttp_server.console.cli import build_console
from tests.console.fill import TOKEN, Filled, fill_journal, fill_receiver, shop
from tests.server.live import REPO_ROOT, serve_in_thread

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
#: Screenshots of every page the browser tests visit (gitignored).
ARTIFACTS = REPO_ROOT / "tests" / "artifacts"

_numbers = itertools.count(1)


@contextmanager
def filled_store(kind: str, request: Any) -> Iterator[Filled]:
    """A database of ``kind`` filled by :mod:`tests.console.fill`, its receiver still serving."""
    if kind == "sqlite":
        directory = Path(tempfile.mkdtemp(prefix="chttp-console-"))
        url = f"sqlite:///{directory / 'store.db'}"
    else:
        directory = None
        url = request.getfixturevalue("pg_cluster").create_database(f"console_{next(_numbers)}")
    migrate.upgrade(url)
    receiver = CertifiedMiddleware(shop, db_url=url)
    try:
        with serve_in_thread(receiver) as base:
            filled = Filled(url, base)
            fill_receiver(url, receiver, filled)
            fill_journal(url, filled)
            yield filled
    finally:
        receiver.engine.dispose()
        if directory is not None:
            shutil.rmtree(directory, ignore_errors=True)


@contextmanager
def console_for(filled: Filled, **options: Any) -> Iterator[str]:
    """``chttp-server console`` over ``filled`` (one database for both halves), served."""
    options.setdefault("refresh", 0)
    app = build_console(db=filled.db_url, journal=filled.db_url, **options)
    try:
        with serve_in_thread(app, threads=4) as url:
            yield url
    finally:
        app.close()


KINDS = [pytest.param("sqlite", id="sqlite"), pytest.param("postgresql", id="postgresql")]


@pytest.fixture(scope="module", params=KINDS)
def store(request) -> Iterator[Filled]:
    """A filled store shared by a module's read-only tests (they must not change it)."""
    with filled_store(request.param, request) as filled:
        yield filled


@pytest.fixture(params=KINDS)
def fresh_store(request) -> Iterator[Filled]:
    """A filled store of the test's own, for tests that act on it."""
    with filled_store(request.param, request) as filled:
        yield filled


@pytest.fixture(scope="module")
def console(store) -> Iterator[str]:
    """A read-only console over :func:`store`."""
    with console_for(store) as url:
        yield url


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        pytest.skip(f"no Debian chromium ({CHROMIUM}, {CHROMEDRIVER}): apt-get install "
                    "chromium chromium-driver (.ci/run does)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="chttp-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", "--window-size=1280,900",
                 f"--user-data-dir={profile}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=options)
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture(scope="session")
def artifacts() -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS


__all__ = ["TOKEN", "console_for", "filled_store"]
