"""The tables of both services (each service creates only its own)."""

from __future__ import annotations

from sqlalchemy import String
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class OrdersBase(DeclarativeBase):
    pass


class Order(OrdersBase):
    __tablename__ = "orders"
    id: Mapped[int] = mapped_column(primary_key=True)
    item: Mapped[str] = mapped_column(String(100))
    shipment: Mapped[int | None] = mapped_column(default=None)


class ShippingBase(DeclarativeBase):
    pass


class Shipment(ShippingBase):
    __tablename__ = "shipments"
    id: Mapped[int] = mapped_column(primary_key=True)
    #: The incoming message that ordered it: stable across the order service's retries.
    order_message: Mapped[str] = mapped_column(String(200))
    item: Mapped[str] = mapped_column(String(100))
