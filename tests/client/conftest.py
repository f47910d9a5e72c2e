"""Fixtures of the sender tests: a real receiver behind httpx.WSGITransport, journals."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Iterator

import httpx
import pytest

from chttp_client import Journal, RetryPolicy
from tests.client.receiver import make_receiver

BASE = "http://receiver.test"


class FakeClock:
    """A clock that only moves when told to (or when the sender "sleeps")."""

    def __init__(self) -> None:
        self.now = datetime.now(timezone.utc)
        self.sleeps: list[float] = []

    def __call__(self) -> datetime:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += timedelta(seconds=seconds)


@pytest.fixture
def receiver(tmp_path):
    """A certified receiver on its own SQLite file (the journal under test is db_url)."""
    app = make_receiver(f"sqlite:///{tmp_path / 'receiver.db'}")
    yield app
    app.engine.dispose()


@pytest.fixture
def fake_clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def make_journal(db_url, receiver, fake_clock) -> Iterator:
    journals: list[Journal] = []

    def make(**options) -> Journal:
        options.setdefault("transport", httpx.WSGITransport(app=receiver))
        options.setdefault("clock", fake_clock)
        options.setdefault("sleep", fake_clock.sleep)
        options.setdefault("retry", RetryPolicy(jitter=False))
        journal = Journal(db_url, **options)
        journals.append(journal)
        return journal

    yield make
    for journal in journals:
        journal.close()


@pytest.fixture
def journal(make_journal) -> Journal:
    return make_journal()


class Crash(BaseException):
    """A simulated crash: not an Exception, so no code path records it as an outcome."""


def crash_at(point: str, step: int):
    """A fault hook raising :class:`Crash` at ``point`` of step ``step``."""

    def hook(event) -> None:
        if event.point == point and event.step == step:
            raise Crash(point, step)

    return hook
