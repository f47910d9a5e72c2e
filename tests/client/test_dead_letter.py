"""Dead-lettered oplogs (issue 15): abandoned with a reason, never retried, reported once.

An oplog that diverges from its record in ``resume_all()`` (the code changed), or that
was resumed more than ``max_resume_attempts`` times without progress (a crash loop),
or that an operator abandons, is stored as failed with its reason; it shows as
``abandoned`` in ``list``/``show`` and is purged like a failed oplog.
"""

from __future__ import annotations

import logging
import uuid
from datetime import timedelta

import pytest
from sqlalchemy import text

from chttp_client import JournalError, OplogAbandonedError, resumable
from chttp_client.testing import expire_leases, set_fault_hook
from chttp_core import migrate
from chttp_core.db import make_engine
from tests.client.conftest import BASE, Crash, crash_at

DAY = timedelta(days=1)


def crashed_oplog(journal, body, point: str, step: int, name: str | None = None) -> str:
    """Run ``body`` as a new resumable function until a simulated crash; its oplog id."""
    name = name or f"dead-{uuid.uuid4()}"
    set_fault_hook(journal, crash_at(point, step))
    with pytest.raises(Crash):
        resumable(journal, name=name)(body)()
    set_fault_hook(journal, None)
    [oplog] = [info for info in journal.list_open() if info.function == name]
    return oplog.id


def test_non_determinism_in_resume_all_abandons_once_and_for_good(journal, fake_clock, caplog):
    target = {"url": f"{BASE}/escrow"}

    def body(*, chttp_context):
        chttp_context.post(target["url"], json={})

    name = f"nondet-{uuid.uuid4()}"
    oplog_id = crashed_oplog(journal, body, "send-recorded", 1, name)
    target["url"] = f"{BASE}/status/201"  # the code changed between crash and resume
    assert expire_leases(journal, oplog_id) == 1  # our lease lapsed (by the database's clock)

    with caplog.at_level(logging.WARNING, logger="chttp_client"):
        [outcome] = journal.resume_all()
        assert journal.resume_all() == []  # not tried again …
    assert outcome.status == "abandoned" and isinstance(outcome.error, OplogAbandonedError)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and f"oplog {oplog_id} ({name} v1) abandoned" in warnings[0]  # … reported once

    info = journal.get(oplog_id)
    assert info.state == "abandoned" and "diverged from its record" in info.abandoned_reason
    assert [i.id for i in journal.list(state="abandoned")] == [oplog_id]
    assert journal.list(state="failed") == [] and journal.list_open() == []
    with pytest.raises(OplogAbandonedError, match="abandoned: oplog .* diverged"):
        journal.resume(oplog_id)

    fake_clock.now += 3 * DAY
    assert journal.purge(older_than=2 * DAY) == 1  # purged like a failed oplog
    assert journal.list() == []


def test_a_crash_loop_is_abandoned_after_max_resume_attempts(make_journal):
    journal = make_journal(lease=timedelta(0), max_resume_attempts=2)

    def body(*, chttp_context):
        chttp_context.post(f"{BASE}/escrow", json={"n": 1})
        chttp_context.persist("between")
        chttp_context.post(f"{BASE}/escrow", json={"n": 2})
        return "finished"

    oplog_id = crashed_oplog(journal, body, "send-recorded", 1)
    # Every resume dies at its first attempt, before it commits anything.
    set_fault_hook(journal, crash_at("send-attempt", 1))
    for attempts in (1, 2):
        with pytest.raises(Crash):
            journal.resume(oplog_id)
        assert journal.get(oplog_id).resume_attempts == attempts
    set_fault_hook(journal, None)
    [outcome] = journal.resume_all()
    assert outcome.status == "abandoned" and "2 resumes made no progress" in str(outcome.error)
    assert journal.get(oplog_id).state == "abandoned"


def test_a_resume_that_makes_progress_starts_counting_again(make_journal):
    journal = make_journal(lease=timedelta(0), max_resume_attempts=1)

    def body(*, chttp_context):
        chttp_context.post(f"{BASE}/escrow", json={"n": 1})
        chttp_context.post(f"{BASE}/escrow", json={"n": 2})
        return "finished"

    oplog_id = crashed_oplog(journal, body, "send-recorded", 1)
    set_fault_hook(journal, crash_at("send-recorded", 2))  # after the commit of step 2's intent
    with pytest.raises(Crash):
        journal.resume(oplog_id)
    set_fault_hook(journal, None)
    assert journal.get(oplog_id).resume_attempts == 0
    assert journal.resume(oplog_id) == "finished"


def test_an_operator_abandons_an_oplog_and_its_answer_is_still_acknowledged(make_journal):
    journal = make_journal(acknowledge=False)

    def body(*, chttp_context):
        chttp_context.post(f"{BASE}/escrow", json={"n": 1})
        chttp_context.post(f"{BASE}/escrow", json={"n": 2})

    oplog_id = crashed_oplog(journal, body, "send-recorded", 2)
    journal.abandon(oplog_id, "the transfer was cancelled by hand")
    info = journal.get(oplog_id)
    assert (info.state, info.abandoned_reason) == ("abandoned", "the transfer was cancelled by hand")
    with pytest.raises(JournalError, match="not open"):
        journal.abandon(oplog_id, "again")

    answered, unanswered = info.steps
    assert answered.acknowledged_at is None and unanswered.state == "recorded"
    journal.acknowledge = True
    assert journal.resume_all() == []  # nothing resumed …
    answered, unanswered = journal.get(oplog_id).steps
    assert answered.acknowledged_at is not None  # … but the answer was acknowledged
    assert unanswered.state == "recorded"


def test_max_resume_attempts_must_be_positive(db_url):
    from chttp_client import Journal

    with pytest.raises(JournalError, match="max_resume_attempts"):
        Journal(db_url, max_resume_attempts=0)


def test_migration_0004_keeps_existing_oplogs_and_downgrades(db_url):
    from importlib.resources import files

    from alembic import command
    from alembic.config import Config

    engine = make_engine(db_url)
    try:
        migrate.upgrade(engine, "0003_oplog_activity")
        with engine.begin() as connection:
            connection.execute(text(
                "INSERT INTO chttp_oplogs (id, function, version, arguments, state, created_at, updated_at) "
                "VALUES ('o', 'f', 1, '{\"args\": [], \"kwargs\": {}}', 'open', "
                "'2026-01-02 00:00:00+00:00', '2026-01-02 00:00:00+00:00')"))
            connection.execute(text(
                "INSERT INTO chttp_oplog_steps (oplog_id, number, kind, name, state) "
                "VALUES ('o', 1, 'persist', 'value', 'done')"))
        migrate.upgrade(engine)
        with engine.connect() as connection:
            assert connection.execute(text(
                "SELECT resume_attempts, abandoned_reason FROM chttp_oplogs")).one() == (0, None)
            assert connection.execute(text("SELECT ack_claimed_until FROM chttp_oplog_steps")).one() == (None,)
        config = Config()
        config.set_main_option("script_location", str(files("chttp_core.migrations")))
        with engine.connect() as connection:
            config.attributes["connection"] = connection
            command.downgrade(config, "0003_oplog_activity")
            connection.commit()
        assert migrate.current_revision(engine) == "0003_oplog_activity"
        with engine.connect() as connection:  # the rows survived
            assert connection.execute(text("SELECT count(*) FROM chttp_oplogs")).scalar_one() == 1
            assert connection.execute(text("SELECT count(*) FROM chttp_oplog_steps")).scalar_one() == 1
    finally:
        engine.dispose()
