"""The shipping service: ``POST /shipments`` books one shipment per certified message.

Configured by ``SHIPPING_DB`` (an async URL; default ``sqlite+aiosqlite:///shipping.db``).
"""

from __future__ import annotations

import os
from contextlib import asynccontextmanager
from typing import AsyncIterator

from fastapi import FastAPI
from pydantic import BaseModel
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine

from chttp_examples.fastapi_orders.models import Shipment, ShippingBase
from chttp_server.asgi import CertifiedMiddleware, require_for_methods

engine = create_async_engine(os.environ.get("SHIPPING_DB", "sqlite+aiosqlite:///shipping.db"))
Session = async_sessionmaker(engine, expire_on_commit=False)


class NewShipment(BaseModel):
    order_message: str
    item: str


@asynccontextmanager
async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
    async with engine.begin() as connection:
        await connection.run_sync(ShippingBase.metadata.create_all)
    yield
    await engine.dispose()


app = FastAPI(lifespan=lifespan)


@app.post("/shipments", status_code=201)
async def ship(new: NewShipment) -> dict[str, int]:
    async with Session() as session:
        shipment = Shipment(order_message=new.order_message, item=new.item)
        session.add(shipment)
        await session.commit()
    return {"shipment": shipment.id}


@app.get("/shipments/count")
async def count() -> dict[str, int]:
    async with Session() as session:
        return {"count": int(await session.scalar(select(func.count()).select_from(Shipment)) or 0)}


app.add_middleware(CertifiedMiddleware, engine=engine, sessions=Session, upgrade_schema=True,
                   require_id=require_for_methods("POST"))
