"""What a dead connection raises after it died is 503, not a bare 500 (issue 23, item 3).

``store_errors`` (chttp_server.transaction) is the receiver's one translation of store
failures into answers. Besides the statement that meets the disconnect (covered by
tests/server/test_fault_matrix.py on every front end), the *next* call on the dead
connection raises something else: SQLAlchemy's ``PendingRollbackError`` /
``ResourceClosedError`` / ``InvalidRequestError``, or a driver's own error where
SQLAlchemy is not in between (psycopg 3 under Django's ORM, asyncpg). Each is produced
here for real, on a real PostgreSQL connection that the server has terminated.
"""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy import exc as sa_exc

from chttp_server.errors import StoreUnavailable
from chttp_server.transaction import store_errors


def terminated_pid(admin_url: str, pid: int) -> None:
    import psycopg2

    with psycopg2.connect(admin_url) as admin, admin.cursor() as cursor:
        cursor.execute("SELECT pg_terminate_backend(%s, 10000)", (pid,))


def raised(action) -> BaseException:
    try:
        action()
    except BaseException as error:  # noqa: BLE001 - the error itself is the subject
        return error
    raise AssertionError("nothing was raised")


def mapped(error: BaseException, lost=None) -> BaseException:
    def reraise() -> None:
        with store_errors(retry_after=3, message_id="m", lost=lost):
            raise error
    return raised(reraise)


def test_sqlalchemy_errors_after_a_disconnect_are_503(pg_url):
    engine = create_engine(pg_url.replace("postgresql://", "postgresql+psycopg2://"))
    try:
        connection = engine.connect()
        connection.begin()
        terminated_pid(pg_url, connection.connection.dbapi_connection.get_backend_pid())
        first = raised(lambda: connection.execute(text("SELECT 1")))
        assert isinstance(first, sa_exc.DBAPIError) and first.connection_invalidated
        after = raised(lambda: connection.execute(text("SELECT 1")))
        assert isinstance(after, sa_exc.PendingRollbackError)
        for error in (first, after):
            answer = mapped(error, lost=lambda: connection.invalidated)
            assert isinstance(answer, StoreUnavailable) and answer.retry_after == 3
        connection.rollback()
        connection.close()
        closed = raised(lambda: connection.execute(text("SELECT 1")))
        assert isinstance(closed, sa_exc.ResourceClosedError)
        # A connection its user closed is a bug, not an outage: it propagates.
        assert mapped(closed, lost=lambda: False) is closed
        # Raised later, on the way out of a disconnect: 503.
        try:
            try:
                raise first
            except sa_exc.DBAPIError:
                raise sa_exc.InvalidRequestError("This transaction is inactive")
        except sa_exc.InvalidRequestError as inactive:
            assert isinstance(mapped(inactive), StoreUnavailable)
    finally:
        engine.dispose()


def test_an_invalid_request_on_a_live_connection_is_the_applications_bug():
    bug = sa_exc.InvalidRequestError("This session is in 'prepared' state")
    assert mapped(bug, lost=lambda: False) is bug


def test_psycopg3_disconnect_errors_are_503(pg_url):
    import psycopg

    connection = psycopg.connect(pg_url.replace("postgresql+psycopg2://", "postgresql://"))
    try:
        terminated_pid(pg_url, connection.info.backend_pid)
        first = raised(lambda: connection.execute("SELECT 1"))
        assert isinstance(first, psycopg.OperationalError)
        after = raised(lambda: connection.execute("SELECT 1"))  # "the connection is closed"
        for error in (first, after):
            assert isinstance(mapped(error), StoreUnavailable), error
        # psycopg's OperationalError also means "lock timeout": that is no disconnect.
        locked = psycopg.errors.LockNotAvailable("canceling statement due to lock timeout")
        assert mapped(locked) is locked
    finally:
        connection.close()


def test_asyncpg_disconnect_errors_are_503(pg_url):
    import asyncpg

    async def scenario() -> list[BaseException]:
        connection = await asyncpg.connect(pg_url.replace("postgresql+psycopg2://", "postgresql://"))
        try:
            terminated_pid(pg_url, connection.get_server_pid())
            errors = []
            for _ in range(2):
                try:
                    await connection.execute("SELECT 1")
                except BaseException as error:  # noqa: BLE001
                    errors.append(error)
            return errors
        finally:
            connection.terminate()

    errors = asyncio.run(scenario())
    assert len(errors) == 2
    for error in errors:
        assert isinstance(mapped(error), StoreUnavailable), repr(error)
    busy = asyncpg.exceptions.InterfaceError("cannot perform operation: another operation is in progress")
    assert mapped(busy) is busy


@pytest.mark.parametrize("driver", ["psycopg", "asyncpg"])
def test_through_sqlalchemy_the_async_drivers_disconnects_are_503(pg_url, driver):
    """The same drivers under SQLAlchemy's async engine (the ASGI front end's)."""
    from sqlalchemy.ext.asyncio import create_async_engine

    async def scenario() -> list[BaseException]:
        engine = create_async_engine(pg_url.replace("postgresql://", f"postgresql+{driver}://"))
        errors: list[BaseException] = []
        try:
            async with engine.connect() as connection:
                await connection.begin()
                raw = await connection.get_raw_connection()
                pid = (await connection.execute(text("SELECT pg_backend_pid()"))).scalar_one()
                assert raw is not None
                terminated_pid(pg_url, pid)
                for _ in range(2):
                    try:
                        await connection.execute(text("SELECT 1"))
                    except BaseException as error:  # noqa: BLE001
                        errors.append(error)
                await connection.rollback()
        finally:
            await engine.dispose()
        return errors

    errors = asyncio.run(scenario())
    assert len(errors) == 2
    for error in errors:
        assert isinstance(mapped(error), StoreUnavailable), repr(error)
