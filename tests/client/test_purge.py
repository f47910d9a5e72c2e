"""Journal retention: Journal.purge and ``chttp-client purge`` (chttp_client.retention).

Ages come from the journal's clock: the tests move the fake clock forward instead of
waiting, so "three days later" is exact and instant. Leases run out by the database's
clock, which the fake one does not move (chttp_client.leases): where days pass over a
handler's lease, the test ends it there (``expire_leases``).
"""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import event, func, select, text

from chttp_client import Journal, resumable
from chttp_client.cli import main as cli_main
from chttp_client.incoming import (
    close_incoming_context,
    incoming_oplog_id,
    open_incoming_context,
)
from chttp_client.testing import expire_leases, set_fault_hook
from chttp_core.db import make_engine
from chttp_core.schema import oplog_steps, oplogs
from tests.client.conftest import BASE, Crash, crash_at

DAY = timedelta(days=1)


def counts(journal: Journal) -> tuple[int, int]:
    """(oplogs, steps) rows in the journal."""
    with journal.engine.connect() as connection:
        return (
            int(connection.execute(select(func.count()).select_from(oplogs)).scalar_one()),
            int(connection.execute(select(func.count()).select_from(oplog_steps)).scalar_one()),
        )


def ids(journal: Journal) -> set[str]:
    return {info.id for info in journal.list()}


def make_functions(journal: Journal):
    @resumable(journal)
    def send(tag, *, chttp_context):
        chttp_context.persist(tag)
        return chttp_context.post(f"{BASE}/escrow", json={"tag": tag}).status_code

    @resumable(journal)
    def fail(*, chttp_context):
        chttp_context.persist(1)
        raise ValueError("recorded failure")

    return send, fail


def test_finished_oplogs_older_than_the_limit_go_with_their_steps(journal, fake_clock):
    send, fail = make_functions(journal)
    send("old")
    with pytest.raises(ValueError):
        fail()
    journal.wait_for_acknowledgements()
    old = ids(journal)
    set_fault_hook(journal, crash_at("send-answered", 2))
    with pytest.raises(Crash):
        send("open")  # left open by a crash: unfinished work, never purged
    set_fault_hook(journal, None)
    [open_oplog] = ids(journal) - old
    fake_clock.now += 3 * DAY
    send("young")
    journal.wait_for_acknowledgements()
    before = counts(journal)

    assert journal.purge(older_than=2 * DAY) == 2
    assert not ids(journal) & old
    assert {info.state for info in journal.list()} == {"open", "done"}
    assert open_oplog in ids(journal)
    # the two purged oplogs had 2 + 1 steps, and no step is left without its oplog
    assert counts(journal) == (before[0] - 2, before[1] - 3)
    with journal.engine.connect() as connection:
        orphans = connection.execute(
            select(func.count()).select_from(oplog_steps)
            .where(oplog_steps.c.oplog_id.not_in(select(oplogs.c.id)))).scalar_one()
    assert orphans == 0

    fake_clock.now += 300 * DAY
    assert journal.purge(older_than=2 * DAY) == 1  # the young one; the open one stays
    assert ids(journal) == {open_oplog}
    assert journal.get(open_oplog).state == "open"


def test_an_unacknowledged_answer_is_kept_until_the_horizon(make_journal, fake_clock):
    journal = make_journal(acknowledge=False)
    send, _fail = make_functions(journal)
    send("unacked")
    [unacked_id] = ids(journal)
    acknowledged = make_journal()
    send_acked, _ = make_functions(acknowledged)
    send_acked("acked")
    acknowledged.wait_for_acknowledgements()
    [acked_id] = ids(journal) - {unacked_id}
    assert [s.acknowledged_at is None for s in journal.get(acked_id).steps if s.kind == "send"] == [False]

    fake_clock.now += 2 * DAY
    assert journal.purge(older_than=DAY) == 1  # only the acknowledged one
    assert ids(journal) == {unacked_id}
    assert [s.acknowledged_at for s in journal.get(unacked_id).steps if s.kind == "send"] == [None]

    fake_clock.now += 12 * DAY  # 14 days: the receiver may still remember the message
    assert journal.purge(older_than=DAY) == 0
    fake_clock.now += 2 * DAY  # 16 days: it has forgotten it, a DELETE would meet a 404
    assert journal.purge(older_than=DAY) == 1
    assert journal.list() == []


def test_older_than_bounds_even_the_horizon(make_journal, fake_clock):
    journal = make_journal(acknowledge=False)
    send, _fail = make_functions(journal)
    send("unacked")
    fake_clock.now += 20 * DAY
    assert journal.purge(older_than=30 * DAY) == 0
    assert journal.purge(older_than=30 * DAY, horizon=DAY) == 0
    assert journal.purge(older_than=10 * DAY, horizon=DAY) == 1


def handler_oplog(journal: Journal, message_id: str) -> str:
    """What a receiver handler leaves behind when its request rolled back: an open oplog."""
    sends = open_incoming_context(journal, scope="", message_id=message_id)
    sends.persist("drawn")
    close_incoming_context(sends)
    return incoming_oplog_id("", message_id)


def test_handler_oplogs_go_after_the_horizon_since_their_last_activity(journal, fake_clock):
    first = handler_oplog(journal, "in-1")
    fake_clock.now += 10 * DAY
    second = handler_oplog(journal, "in-2")
    # a retry of in-1's incoming message ran its handler again: that is activity
    again = open_incoming_context(journal, scope="", message_id="in-1")
    assert again.persist("other") == "drawn"  # replayed
    close_incoming_context(again)
    assert {i.function for i in journal.list_open()} == {"chttp.incoming"}

    fake_clock.now += 14 * DAY  # in-1: 14 days since its retry; in-2: 14 days
    assert expire_leases(journal) == 2  # their handlers' leases ran out long ago
    assert journal.purge(older_than=DAY) == 0
    fake_clock.now += 2 * DAY
    assert journal.purge(older_than=DAY) == 2
    assert ids(journal) == set()
    assert counts(journal) == (0, 0)
    assert first != second


def test_a_shorter_horizon_for_a_receiver_with_a_shorter_retention(journal, fake_clock):
    handler_oplog(journal, "in-short")
    fake_clock.now += 4 * DAY
    assert expire_leases(journal) == 1  # the handler's lease ran out long ago
    assert journal.purge(older_than=DAY) == 0
    assert journal.purge(older_than=DAY, horizon=3 * DAY) == 1


def test_a_handler_oplog_leased_by_a_live_run_is_kept(journal, fake_clock):
    handler_oplog(journal, "in-live")
    fake_clock.now += 20 * DAY
    live = open_incoming_context(journal, scope="", message_id="in-live")  # takes the lease now …
    fake_clock.now += journal.lease / 2  # … and still holds it (by the database's clock)
    with journal.engine.begin() as connection:  # even if its last activity looked old
        connection.execute(oplogs.update().values(updated_at=fake_clock.now - 30 * DAY))
    assert journal.purge(older_than=DAY) == 0
    assert expire_leases(journal, incoming_oplog_id("", "in-live")) == 1  # its lease ran out
    assert journal.purge(older_than=DAY) == 1
    close_incoming_context(live)


def test_batches_are_separate_transactions(journal, fake_clock):
    _send, fail = make_functions(journal)
    for _ in range(5):
        with pytest.raises(ValueError):
            fail()
    fake_clock.now += 2 * DAY
    commits = []
    event.listen(journal.engine, "commit", lambda _conn: commits.append(1))
    assert journal.purge(older_than=DAY, batch_size=2) == 5
    assert len(commits) == 3  # 2 + 2 + 1
    assert journal.purge(older_than=DAY, batch_size=2) == 0
    with pytest.raises(ValueError, match="batch_size"):
        journal.purge(older_than=DAY, batch_size=0)


def test_max_batches_stops_early(journal, fake_clock):
    _send, fail = make_functions(journal)
    for _ in range(3):
        with pytest.raises(ValueError):
            fail()
    fake_clock.now += 2 * DAY
    assert journal.purge(older_than=DAY, batch_size=1, max_batches=2) == 2
    assert len(journal.list()) == 1


def test_postgresql_purge_skips_a_locked_oplog_instead_of_waiting(pg_url, fake_clock):
    # lock_timeout: a purge that waited for the lock would fail here instead of hanging
    engine = make_engine(pg_url, connect_args={"options": "-c lock_timeout=5000"})
    journal = Journal(engine=engine, clock=fake_clock, sleep=fake_clock.sleep)
    try:
        _send, fail = make_functions(journal)
        for _ in range(2):
            with pytest.raises(ValueError):
                fail()
        locked_id = min(ids(journal))
        fake_clock.now += 2 * DAY
        with engine.connect() as other:
            other.execute(text("SELECT id FROM chttp_oplogs WHERE id = :id FOR UPDATE"), {"id": locked_id})
            assert journal.purge(older_than=DAY) == 1
            assert ids(journal) == {locked_id}
            other.rollback()
        assert journal.purge(older_than=DAY) == 1
        assert ids(journal) == set()
    finally:
        journal.close()
        engine.dispose()


def test_cli_purge(make_journal, fake_clock, db_url, capsys):
    journal = make_journal()
    _send, fail = make_functions(journal)
    fake_clock.now -= 3 * DAY  # the CLI's journal runs on the real clock
    with pytest.raises(ValueError):
        fail()
    fake_clock.now += 3 * DAY
    with pytest.raises(ValueError):
        fail()
    assert cli_main(["purge", "--db", db_url, "--older-than-days", "2"]) == 0
    assert capsys.readouterr().out.strip() == "1 oplog(s) purged"
    assert len(journal.list()) == 1


def test_migration_0003_backfills_the_last_activity_and_downgrades(db_url):
    from importlib.resources import files

    from alembic import command
    from alembic.config import Config

    from chttp_core import migrate

    engine = make_engine(db_url)
    try:
        migrate.upgrade(engine, "0002_oplogs")
        with engine.begin() as connection:
            connection.execute(text(
                "INSERT INTO chttp_oplogs (id, function, version, arguments, state, created_at, finished_at) "
                "VALUES ('done', 'f', 1, '{}', 'done', '2026-01-01 00:00:00+00:00', '2026-01-03 00:00:00+00:00'),"
                "       ('open', 'f', 1, '{}', 'open', '2026-01-02 00:00:00+00:00', NULL)"))
            connection.execute(text(
                "INSERT INTO chttp_oplog_steps (oplog_id, number, kind, name, state) "
                "VALUES ('open', 1, 'persist', 'value', 'done')"))
        migrate.upgrade(engine)
        with engine.connect() as connection:
            rows = dict(connection.execute(select(oplogs.c.id, oplogs.c.updated_at)).all())
        assert {k: (v.month, v.day) for k, v in rows.items()} == {"done": (1, 3), "open": (1, 2)}
        config = Config()
        config.set_main_option("script_location", str(files("chttp_core.migrations")))
        with engine.connect() as connection:
            config.attributes["connection"] = connection
            command.downgrade(config, "0002_oplogs")
            connection.commit()
        assert migrate.current_revision(engine) == "0002_oplogs"
        with engine.connect() as connection:  # the steps table and the rows survived
            assert connection.execute(text("SELECT count(*) FROM chttp_oplogs")).scalar_one() == 2
            assert connection.execute(text("SELECT count(*) FROM chttp_oplog_steps")).scalar_one() == 1
    finally:
        engine.dispose()
