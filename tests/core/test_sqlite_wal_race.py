"""The first connections to a new SQLite file, all at once (CI failure of stop 29).

Each new connection switches the file to WAL (chttp_core.db). On a new file the first
connections race to switch it, and SQLite answers the loser "database is locked" at once,
without waiting out the busy timeout: before the switch was retried, about one race in
twenty of four connections failed (a sender's journal and a second journal opening one
new file together made CI red). Here a hundred new files each get several engines
connecting and writing at the same moment, threads and asyncio alike: every write must
succeed and every file must end in WAL.
"""

from __future__ import annotations

import asyncio
import threading

from sqlalchemy import create_engine, text
from sqlalchemy.ext.asyncio import create_async_engine

from chttp_core.db import begin_immediately, configure_sqlite, make_engine

FILES = 100
ENGINES_PER_FILE = 6


def journal_mode(path) -> str:
    engine = create_engine(f"sqlite:///{path}")
    try:
        with engine.connect() as connection:
            return connection.exec_driver_sql("PRAGMA journal_mode").scalar_one()
    finally:
        engine.dispose()


def test_threads_opening_a_new_file_together_all_write_it(tmp_path):
    failures: list[BaseException] = []
    for n in range(FILES):
        path = tmp_path / f"new-{n}.db"
        engines = [make_engine(f"sqlite:///{path}") for _ in range(ENGINES_PER_FILE)]
        start = threading.Barrier(len(engines))

        def write(engine):
            start.wait()
            try:
                with engine.begin() as connection:
                    connection.execute(text("CREATE TABLE IF NOT EXISTS t (a int)"))
                    connection.execute(text("INSERT INTO t VALUES (1)"))
            except Exception as error:  # collected: the assertion below names it
                failures.append(error)

        threads = [threading.Thread(target=write, args=(engine,)) for engine in engines]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        for engine in engines:
            engine.dispose()
        assert not failures, f"file {n}: {failures[0]!r}"
        assert journal_mode(path) == "wal"


def test_async_engines_opening_a_new_file_together_all_write_it(tmp_path):
    asyncio.run(open_new_files_together(tmp_path))


async def open_new_files_together(tmp_path) -> None:
    for n in range(FILES):
        path = tmp_path / f"new-{n}.db"
        engines = [create_async_engine(f"sqlite+aiosqlite:///{path}") for _ in range(ENGINES_PER_FILE)]
        for engine in engines:
            configure_sqlite(engine.sync_engine, dispose=False)

        async def write(engine):
            async with engine.connect() as connection:
                # As a store's transaction does: a writer that first reads must hold
                # the write lock from BEGIN (a DEFERRED one may fail its upgrade).
                begin_immediately(connection.sync_connection)
                async with connection.begin():
                    await connection.execute(text("CREATE TABLE IF NOT EXISTS t (a int)"))
                    await connection.execute(text("INSERT INTO t VALUES (1)"))

        results = await asyncio.gather(*(write(engine) for engine in engines), return_exceptions=True)
        for engine in engines:
            await engine.dispose()
        errors = [result for result in results if isinstance(result, BaseException)]
        assert not errors, f"file {n}: {errors[0]!r} {getattr(errors[0], 'statement', None)}"
        assert journal_mode(path) == "wal"
