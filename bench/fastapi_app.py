"""The benchmarked application as a FastAPI app: ``fastapi-bare`` and ``fastapi-certified``.

The same ``POST /items`` as :mod:`bench.app` (one row into ``bench_items``) written as a
FastAPI user writes it — an ``AsyncSession`` from an ``async_sessionmaker`` over an
asyncpg engine, ``await session.commit()`` — and ``GET /pid``. The two modes differ
only by the line of issue 19::

    app.add_middleware(CertifiedMiddleware, engine=engine, sessions=Session)

so the rows measure what the ASGI front end costs in its own framework.
``fastapi-floor`` is the bare app whose view writes one more row in its transaction
(no chttp at all): what any design that keeps one row per message could cost at
least, the reference for the 0.8 target. uvicorn
(``--workers``) loads ``bench.fastapi_app:app``; ``BENCH_MODE``, ``BENCH_DB_URL`` and
``BENCH_POOL_SIZE`` come from the environment (each worker process imports this
module, so each has its own engine; no connection is opened until the first request).
"""

from __future__ import annotations

import os
from typing import Any

from fastapi import FastAPI, Request, Response
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine

__all__ = ["make_app", "app", "MODES"]

MODES = ("fastapi-bare", "fastapi-certified", "fastapi-floor")

_INSERT = text("INSERT INTO bench_items (message_id, payload) VALUES (:message_id, :payload)")
_CREATED_BODY = b'{"ok": true}'
#: fastapi-floor's second row: about what a stored answer holds.
_ANSWER = '{"status": 201, "headers": [["content-type", "application/json"]], "body": "{}"}'


def asyncpg_url(db_url: str) -> str:
    """``db_url`` (any PostgreSQL URL) with the asyncpg driver."""
    return make_url(db_url).set(drivername="postgresql+asyncpg").render_as_string(
        hide_password=False)


def make_app(mode: str, db_url: str, *, pool_size: int = 8) -> Any:
    """The FastAPI application of ``mode``, its engine sized for one uvicorn worker.

    (``Request``/``Response`` are imported at module level: FastAPI resolves the views'
    annotations, strings under ``from __future__ import annotations``, in this module.)
    """
    from chttp_server.asgi import CertifiedMiddleware, current_message

    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, not {mode!r}")
    # As bench/app.py: no pre-ping round trip in either mode.
    engine: AsyncEngine = create_async_engine(asyncpg_url(db_url), pool_size=pool_size,
                                              max_overflow=pool_size, pool_pre_ping=False)
    Session = async_sessionmaker(engine, expire_on_commit=False)
    floor = mode == "fastapi-floor"
    application = FastAPI()

    @application.post("/items", status_code=201)
    async def items(request: Request) -> Response:
        payload = (await request.body()).decode("utf-8") or "{}"
        message = current_message()  # None in the bare mode
        async with Session() as session:
            await session.execute(_INSERT, {"message_id": message.message_id if message else None,
                                            "payload": payload})
            if floor:
                await session.execute(_INSERT, {"message_id": request.headers.get("x-message-id"),
                                                "payload": _ANSWER})
            await session.commit()
        return Response(_CREATED_BODY, status_code=201, media_type="application/json")

    @application.get("/pid")
    async def pid() -> Response:
        return Response(str(os.getpid()).encode(), media_type="text/plain")

    if mode == "fastapi-certified":
        application.add_middleware(CertifiedMiddleware, engine=engine, sessions=Session)
    return application


def __getattr__(name: str) -> Any:
    # uvicorn imports ``app`` in each worker; built there, from the environment.
    if name == "app":
        built = make_app(os.environ.get("BENCH_MODE", "fastapi-bare"), os.environ["BENCH_DB_URL"],
                         pool_size=int(os.environ.get("BENCH_POOL_SIZE", "8")))
        globals()["app"] = built
        return built
    raise AttributeError(name)
