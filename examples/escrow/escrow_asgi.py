"""The escrow as an ASGI application, driven by an ``async def`` resumable function.

The twin of :mod:`~chttp_examples.escrow.escrow` for ``chttp-server demo --asgi``: the
same routes, tables and rules (accepting and claiming a transfer, the reads), served by
uvicorn through :class:`chttp_server.asgi.CertifiedMiddleware`. The driver is the same
rule too — :func:`~chttp_examples.escrow.escrow.transfer_steps` — performed by an
``async def`` resumable function: ``await chttp_context.post(...)`` for each claim,
withdraw, deposit and refund, ``await chttp_context.persist(...)`` for each state write
(an ``async`` one, on the escrow's ``AsyncEngine``). Transfers are driven by tasks on the
server's own event loop instead of a thread pool; at start-up ``await
journal.resume_all_async()`` first finishes every oplog a SIGKILL cut off, as the WSGI
driver's ``resume_all()`` does. Neither the journal's SQL (worker threads) nor HTTP
(``httpx.AsyncClient``) nor the store (aiosqlite, asyncpg) blocks the loop that serves
the claims.

The async function is journaled under its own name (``…drive_transfer_async``): an
oplog is replayed by the kind of code that wrote it.
"""

from __future__ import annotations

import asyncio
import logging
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator, Callable, Mapping

from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from chttp_examples.escrow.escrow import (
    Send,
    accept_transfer,
    claim_transfer,
    count_states,
    metadata,
    set_state,
    show_transfer,
    transfer_steps,
    unclaimed_transfers,
)
from chttp_examples.escrow.ledger_asgi import EXCEPTION_HANDLERS
from chttp_examples.escrow.steps import run_sql_async
from chttp_server.asgi import CertifiedMiddleware, current_message, make_async_engine, require_for_methods

__all__ = ["AsyncTransferStore", "AsyncDriver", "make_async_driver_function", "make_app",
           "DRIVER_NAME"]

log = logging.getLogger("chttp_examples.escrow")

#: The journal name of the async driver function.
DRIVER_NAME = "chttp_examples.escrow.drive_transfer_async"


class AsyncTransferStore:
    """The rules on their own short transactions, awaited (the driver's and the reads')."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    async def set_state(self, transfer_id: str, state: str, detail: Any = None) -> str:
        async with self.engine.begin() as connection:
            return await run_sql_async(set_state(transfer_id, state, detail), connection)

    async def unclaimed(self, limit: int) -> list[str]:
        async with self.engine.connect() as connection:
            return await run_sql_async(unclaimed_transfers(limit), connection)

    async def counts(self) -> dict[str, Any]:
        async with self.engine.connect() as connection:
            return await run_sql_async(count_states(), connection)

    async def show(self, transfer_id: str) -> dict[str, Any]:
        async with self.engine.connect() as connection:
            return await run_sql_async(show_transfer(transfer_id), connection)


def make_async_driver_function(
    journal: Any, store: AsyncTransferStore, escrow_url: str, ledgers: Mapping[str, str]
) -> Callable[..., Any]:
    """Register the ``async def`` driver with ``journal``; ``ledgers`` maps names to URLs."""
    from chttp_client import resumable

    @resumable(journal, name=DRIVER_NAME)
    async def drive_transfer(transfer_id: str, *, chttp_context: Any) -> str:
        steps = transfer_steps(transfer_id, escrow_url, ledgers)
        value: Any = None
        while True:
            try:
                effect = steps.send(value)
            except StopIteration as stop:
                return str(stop.value)
            if isinstance(effect, Send):
                value = await chttp_context.post(effect.url, json=effect.json)
            else:
                value = await chttp_context.persist(store.set_state, effect.transfer_id,
                                                    effect.state, effect.detail)

    return drive_transfer


class AsyncDriver:
    """Resumes what a crash cut off, then drives new transfers as tasks of the loop."""

    def __init__(
        self,
        journal: Any,
        store: AsyncTransferStore,
        escrow_url: str,
        ledgers: Mapping[str, str],
        *,
        # Transfers driven at once; each is one task making certified sends.
        workers: int = 4,
        # Seconds between looks for new transfers when nobody rings.
        poll_interval: float = 0.2,
    ) -> None:
        self.journal = journal
        self.store = store
        self.drive = make_async_driver_function(journal, store, escrow_url, ledgers)
        self.workers = workers
        self.poll_interval = poll_interval
        self.wake = asyncio.Event()
        self._running: dict[str, asyncio.Task[None]] = {}
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start driving on the running loop (from the application's lifespan)."""
        self._task = asyncio.get_running_loop().create_task(self._loop(), name="escrow-driver")

    async def stop(self) -> None:
        """Cancel the loop and every drive; a cancelled oplog stays resumable, same ids."""
        tasks = [task for task in (self._task, *self._running.values()) if task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _loop(self) -> None:
        # First finish every oplog a crash left open: they hold claims nobody else can take.
        while True:
            try:
                for outcome in await self.journal.resume_all_async(timeout=None):  # a task of its own
                    log.warning("resumed oplog %s: %s %s", outcome.oplog_id, outcome.status,
                                outcome.error or outcome.value)
                break
            except Exception:  # a ledger may still be down; the sends retry, this retries too
                log.exception("resume_all_async failed; trying again")
                await asyncio.sleep(1.0)
        while True:
            room = self.workers - len(self._running)
            if room > 0:
                try:
                    fresh = [transfer for transfer in await self.store.unclaimed(self.workers * 2)
                             if transfer not in self._running]
                except Exception:  # the store is busy or restarting: look again soon
                    log.exception("looking for new transfers failed")
                    fresh = []
                for transfer_id in fresh[:room]:
                    self._running[transfer_id] = asyncio.create_task(self._drive_one(transfer_id))
            try:
                await asyncio.wait_for(self.wake.wait(), self.poll_interval)
            except asyncio.TimeoutError:
                pass
            self.wake.clear()

    async def _drive_one(self, transfer_id: str) -> None:
        try:
            outcome = await self.drive(transfer_id)
            log.info("transfer %s: %s", transfer_id, outcome)
        except Exception:
            log.exception("transfer %s: the driver raised", transfer_id)
        finally:
            self._running.pop(transfer_id, None)
            self.wake.set()


def make_app(
    db_url: str,
    ledgers: Mapping[str, str],
    *,
    # Where this escrow itself answers: the driver claims transfers through it.
    escrow_url: str,
    engine: AsyncEngine | None = None,
    # Transfers driven at once.
    workers: int = 4,
    # How the driver's sends retry (chttp_client.RetryPolicy); None: the default.
    retry_policy: Any = None,
    # The driver's journal; None: one in the escrow's own database (its synchronous URL:
    # the journal's SQL runs in worker threads).
    journal: Any = None,
) -> tuple[CertifiedMiddleware, AsyncDriver]:
    """The escrow's ASGI application and its driver, which the lifespan starts and stops."""
    from chttp_client import Journal

    engine = engine or make_async_engine(db_url)
    store = AsyncTransferStore(engine)
    if journal is None:
        journal = Journal(db_url) if retry_policy is None else Journal(db_url, retry=retry_policy)
    driver = AsyncDriver(journal, store, escrow_url, ledgers, workers=workers)

    @asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        async with engine.begin() as connection:
            await connection.run_sync(metadata.create_all)
        driver.start()
        try:
            yield
        finally:
            await driver.stop()
            await engine.dispose()

    async def root(_request: Request) -> Response:
        return JSONResponse({"service": "escrow"})

    async def counts(_request: Request) -> Response:
        return JSONResponse(await store.counts())

    async def accept(request: Request) -> Response:
        message = current_message()
        assert message is not None   # require_id: a POST without an id is refused with 400
        transfer_id = await run_sql_async(accept_transfer(await request.body(), ledgers),
                                          message.connection)
        driver.wake.set()   # early, but the driver only sees the row once it commits
        location = f"{request.scope.get('root_path', '')}/transfers/{transfer_id}"
        return JSONResponse({"id": transfer_id, "state": "accepted"}, status_code=201,
                            headers={"Location": location})

    async def show(request: Request) -> Response:
        return JSONResponse(await store.show(request.path_params["transfer_id"]))

    async def claim(request: Request) -> Response:
        """``POST /transfers/<id>/claim``: the first claimer's message id becomes the driver."""
        message = current_message()
        assert message is not None
        return JSONResponse(await run_sql_async(
            claim_transfer(request.path_params["transfer_id"], message.message_id),
            message.connection))

    app = Starlette(
        routes=[
            Route("/", root),
            Route("/transfers", counts, methods=["GET"]),
            Route("/transfers", accept, methods=["POST"]),
            Route("/transfers/{transfer_id}", show),
            Route("/transfers/{transfer_id}/claim", claim, methods=["POST"]),
        ],
        lifespan=lifespan,
        exception_handlers=EXCEPTION_HANDLERS,
    )
    middleware = CertifiedMiddleware(app, engine=engine, upgrade_schema=True,
                                     require_id=require_for_methods("POST"))
    return middleware, driver
