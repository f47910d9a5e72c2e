"""Fixtures of the receiver tests."""

from __future__ import annotations

import pytest

from chttp_core.db import make_engine
from chttp_core.migrate import upgrade

from .apps import host_metadata


@pytest.fixture
def engine(db_url):
    """A fresh database with the host's tables and the chttp schema at head."""
    engine = make_engine(db_url)
    host_metadata.create_all(engine)
    upgrade(engine)
    yield engine
    engine.dispose()
