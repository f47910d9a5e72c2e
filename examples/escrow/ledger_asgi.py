"""The ledger as an ASGI application: Starlette, async SQLAlchemy, the same rules.

The twin of :mod:`~chttp_examples.escrow.ledger` for ``chttp-server demo --asgi``: the
same routes, the same tables and the same rules (:func:`~chttp_examples.escrow.ledger.apply_leg`
and the reads, run by :func:`~chttp_examples.escrow.steps.run_sql_async`), served by
uvicorn. Still naive: no unique constraint, no "seen this transfer?" query. The
handler's writes go through ``current_message().connection`` — the ``AsyncConnection``
of the transaction that also stores the response — so exactly-once comes from
:class:`chttp_server.asgi.CertifiedMiddleware` alone, as it does from the WSGI
middleware in the twin.

The store is reached through an ``AsyncEngine`` (aiosqlite on SQLite, asyncpg on
PostgreSQL): no blocking database call on the event loop.
"""

from __future__ import annotations

import json
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator

from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from chttp_examples.escrow.ledger import (
    OPERATIONS,
    apply_leg,
    list_accounts,
    metadata,
    problem,
    show_account,
)
from chttp_examples.escrow.steps import BadRequest, NotFound, run_sql_async
from chttp_server.asgi import CertifiedMiddleware, current_message, make_async_engine, require_for_methods

__all__ = ["make_app", "problem_response", "EXCEPTION_HANDLERS"]


def make_app(db_url: str, *, engine: AsyncEngine | None = None) -> CertifiedMiddleware:
    """The ledger as an ASGI application; every POST must carry a message id.

    ``db_url`` is written as for the WSGI twin (``sqlite:///…``, ``postgresql://…``);
    the async driver is chosen for it (:func:`chttp_server.asgi.make_async_engine`).
    """
    engine = engine or make_async_engine(db_url)

    @asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        async with engine.begin() as connection:
            await connection.run_sync(metadata.create_all)
        yield
        await engine.dispose()

    async def root(_request: Request) -> Response:
        return JSONResponse({"service": "ledger"})

    async def accounts(_request: Request) -> Response:
        async with engine.connect() as connection:
            return JSONResponse(await run_sql_async(list_accounts(), connection))

    async def account(request: Request) -> Response:
        async with engine.connect() as connection:
            return JSONResponse(await run_sql_async(show_account(request.path_params["name"]),
                                                    connection))

    async def operation(request: Request) -> Response:
        """``POST /accounts/<name>/<kind>``: one leg of a transfer, applied exactly once."""
        kind = request.path_params["kind"]
        if kind not in OPERATIONS:
            raise HTTPException(404)
        message = current_message()
        assert message is not None   # require_id: a POST without an id is refused with 400
        status, body = await run_sql_async(
            apply_leg(request.path_params["name"], kind, await request.body(), message.message_id),
            message.connection)   # the message's own transaction
        if status == 200:
            return JSONResponse(body)
        return Response(json.dumps(body), status_code=status, media_type="application/problem+json")

    app = Starlette(
        routes=[
            Route("/", root),
            Route("/accounts", accounts),
            Route("/accounts/{name}", account),
            Route("/accounts/{name}/{kind}", operation, methods=["POST"]),
        ],
        lifespan=lifespan,
        exception_handlers=EXCEPTION_HANDLERS,
    )
    return CertifiedMiddleware(app, engine=engine, upgrade_schema=True,
                               require_id=require_for_methods("POST"))


def problem_response(status: int, type_: str, title: str, detail: str) -> Response:
    """An RFC 9457 problem document (a 4xx is stored and replayed like any answer)."""
    return Response(json.dumps(problem(type_, title, detail, status)), status_code=status,
                    media_type="application/problem+json")


async def _bad_request(_request: Request, error: Exception) -> Response:
    return problem_response(400, "bad-request", "Bad request", str(error))


async def _not_found(_request: Request, error: Exception) -> Response:
    return problem_response(404, "not-found", "Not found", str(error))


#: The rules' errors (:mod:`~chttp_examples.escrow.steps`) as Starlette renders them.
EXCEPTION_HANDLERS: Any = {BadRequest: _bad_request, NotFound: _not_found}
