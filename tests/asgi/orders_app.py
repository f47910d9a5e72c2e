"""A plain FastAPI + async SQLAlchemy order service, made exactly-once by two lines.

Served by uvicorn as a child process in the tests (``tests/asgi/live.py``), configured
by environment variables:

* ``CHTTP_TEST_DB`` — the async database URL of the application *and* its messages;
* ``CHTTP_TEST_MARKS`` — a directory where views leave marks (``entered-<item>``,
  ``committed-<item>``) so a test knows how far a view got, from outside the process;
* ``CHTTP_TEST_CREATE`` — ``0``: do not create the tables at start-up (the database
  may be down: the application must start anyway).
"""

from __future__ import annotations

import asyncio
import os
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, AsyncIterator

from fastapi import BackgroundTasks, FastAPI, Request
from fastapi.responses import StreamingResponse
from sqlalchemy import Integer, String, func, select
from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from chttp_server.asgi import CertifiedMiddleware, current_message

engine = create_async_engine(os.environ["CHTTP_TEST_DB"])
Session = async_sessionmaker(engine, expire_on_commit=False)
MARKS = Path(os.environ.get("CHTTP_TEST_MARKS", "."))


class Base(DeclarativeBase):
    pass


class Order(Base):
    __tablename__ = "orders"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    item: Mapped[str] = mapped_column(String(100))


class Event(Base):
    """Written by a background task, after the response was stored."""

    __tablename__ = "events"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    note: Mapped[str] = mapped_column(String(200))


@asynccontextmanager
async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
    if os.environ.get("CHTTP_TEST_CREATE", "1") == "1":
        async with engine.begin() as connection:
            await connection.run_sync(Base.metadata.create_all)
    yield
    await engine.dispose()


app = FastAPI(lifespan=lifespan)


def mark(name: str) -> None:
    (MARKS / name).write_text(str(os.getpid()))


async def record_event(note: str) -> None:
    async with Session() as session:
        session.add(Event(note=note))
        await session.commit()


@app.post("/orders", status_code=201)
async def create_order(request: Request, tasks: BackgroundTasks,
                       hold: float = 0.0, fail: int = 0) -> dict[str, Any]:
    body = await request.json()
    item = str(body["item"])
    mark(f"entered-{item}")
    async with Session() as session:
        order = Order(item=item)
        session.add(order)
        await session.commit()
    mark(f"committed-{item}")
    if hold:
        await asyncio.sleep(hold)
    if fail:
        raise RuntimeError("the view failed after its commit")
    message = current_message()
    tasks.add_task(record_event, f"after {item}")
    return {"id": order.id, "item": item,
            "message_id": message.message_id if message is not None else None}


@app.get("/orders/count")
async def count_orders(item: str | None = None) -> dict[str, int]:
    async with Session() as session:
        query = select(func.count()).select_from(Order)
        if item is not None:
            query = query.where(Order.item == item)
        return {"count": int(await session.scalar(query) or 0)}


@app.get("/events")
async def events() -> list[str]:
    async with Session() as session:
        return list(await session.scalars(select(Event.note).order_by(Event.id)))


@app.get("/ping")
async def ping() -> dict[str, str]:
    return {"pong": "yes"}


@app.post("/stream")
async def stream(size: int = 10) -> StreamingResponse:
    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(size):
            yield b"x" * 1000

    return StreamingResponse(chunks(), media_type="text/plain")


app.add_middleware(CertifiedMiddleware, engine=engine, sessions=Session, upgrade_schema=True,
                   max_response_bytes=int(os.environ.get("CHTTP_TEST_MAX_RESPONSE", 8 << 20)))
