"""The order service: ``POST /orders`` records an order and ships it, exactly once.

The view writes the order through the application's own session (joined to the
message's transaction), then ships it with ``await message.post(...)``: a certified
send whose id derives from the incoming message, journaled before it leaves. If the
view fails after the send — or the process dies — the order's write is rolled back with
the message, and the sender's retry runs the view again: the order is written again
(once, since the first write never committed) and the shipment is *re-sent with the
same id*, so the shipping service answers it from its store instead of booking twice.

Configured by ``ORDERS_DB`` (async URL), ``ORDERS_JOURNAL`` (the journal of the view's
sends: a SQLite file of its own, since the orders file is locked by the message's
transaction while the view runs) and ``SHIPPING_URL``.
"""

from __future__ import annotations

import os
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator

from fastapi import FastAPI, HTTPException
from pydantic import BaseModel
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine

from chttp_client import Journal
from chttp_examples.fastapi_orders.models import Order, OrdersBase
from chttp_server.asgi import CertifiedMiddleware, current_message, require_for_methods

engine = create_async_engine(os.environ.get("ORDERS_DB", "sqlite+aiosqlite:///orders.db"))
Session = async_sessionmaker(engine, expire_on_commit=False)
SHIPPING_URL = os.environ.get("SHIPPING_URL", "http://127.0.0.1:8001")


class NewOrder(BaseModel):
    item: str


@asynccontextmanager
async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
    async with engine.begin() as connection:
        await connection.run_sync(OrdersBase.metadata.create_all)
    yield
    await engine.dispose()


app = FastAPI(lifespan=lifespan)


@app.post("/orders", status_code=201)
async def create_order(new: NewOrder, fail_after_shipping: bool = False) -> dict[str, Any]:
    message = current_message()
    assert message is not None  # require_id: POST carries an id, or is refused with 400
    async with Session() as session:
        order = Order(item=new.item)
        session.add(order)
        # The body must be the same on every retry of this message (the send is replayed
        # by its derived id): name the order by its message, not by a generated key.
        answer = await message.post(f"{SHIPPING_URL}/shipments",
                                    json={"order_message": message.message_id, "item": new.item})
        if answer.status_code != 201:
            raise HTTPException(502, f"shipping answered {answer.status_code}")
        order.shipment = answer.json()["shipment"]
        await session.commit()                      # durable with the stored response
    if fail_after_shipping:
        raise HTTPException(503, "failing after the shipment, as a crash would")
    return {"order": order.id, "item": order.item, "shipment": order.shipment}


@app.get("/orders/count")
async def count() -> dict[str, int]:
    async with Session() as session:
        return {"count": int(await session.scalar(select(func.count()).select_from(Order)) or 0)}


app.add_middleware(
    CertifiedMiddleware, engine=engine, sessions=Session, upgrade_schema=True,
    require_id=require_for_methods("POST"),
    journal=Journal(os.environ.get("ORDERS_JOURNAL", "sqlite:///orders-outgoing.db")),
)
