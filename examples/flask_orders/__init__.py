"""An order service in Flask + Flask-SQLAlchemy, made exactly-once by one line.

The views are written the way the Flask-SQLAlchemy tutorial writes them —
``db.session.add(order); db.session.commit()`` — and know nothing of certified HTTP
except :func:`~chttp_server.flask.current_message` in the one view that calls another
service. ``Certified(app, db)`` makes every request that carries ``X-Message-ID`` (or
``Idempotency-Key``) run once: a retry gets the stored answer, and a view that fails
leaves nothing written (docs/protocol.rst §2).

* ``POST /orders`` ``{"item": "tea", "quantity": 2}`` → 201 ``{"id": …}``
* ``GET /orders`` → every order
* ``POST /orders/<id>/ship`` → asks the shipping service (``SHIPPING_URL``) for a
  shipment with a certified send, records its tracking number on the order.

Run it: ``python -m chttp_examples.flask_orders --db sqlite:///orders.db``.
"""

from __future__ import annotations

from typing import Any

from flask import Flask, abort, request
from flask_sqlalchemy import SQLAlchemy
from sqlalchemy import Integer, String
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from chttp_core.db import normalize_url
from chttp_server.flask import Certified, current_message

__all__ = ["create_app", "db", "Order"]


class Base(DeclarativeBase):
    pass


db = SQLAlchemy(model_class=Base)


class Order(db.Model):  # type: ignore[name-defined,misc]
    __tablename__ = "orders"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    item: Mapped[str] = mapped_column(String(100))
    quantity: Mapped[int] = mapped_column(Integer)
    tracking: Mapped[str | None] = mapped_column(String(100), nullable=True)

    def as_json(self) -> dict[str, Any]:
        return {"id": self.id, "item": self.item, "quantity": self.quantity,
                "tracking": self.tracking}


def create_app(db_url: str, *, shipping_url: str = "", **certified_options: Any) -> Flask:
    """The order service on ``db_url``; ``certified_options`` go to :class:`Certified`."""
    app = Flask(__name__)
    # A bare postgresql:// means psycopg 3 to SQLAlchemy 2.1; this project uses psycopg2.
    app.config["SQLALCHEMY_DATABASE_URI"] = normalize_url(db_url).render_as_string(
        hide_password=False)
    app.config["SHIPPING_URL"] = shipping_url
    db.init_app(app)
    with app.app_context():
        db.create_all()
    certified_options.setdefault("upgrade_schema", True)
    Certified(app, db, **certified_options)

    @app.post("/orders")
    def create_order() -> tuple[dict[str, Any], int]:
        payload = request.get_json(force=True)
        order = Order(item=str(payload["item"]), quantity=int(payload.get("quantity", 1)))
        db.session.add(order)
        db.session.commit()
        return order.as_json(), 201

    @app.get("/orders")
    def list_orders() -> dict[str, Any]:
        orders = db.session.scalars(db.select(Order).order_by(Order.id))
        return {"orders": [order.as_json() for order in orders]}

    @app.post("/orders/<int:order_id>/ship")
    def ship_order(order_id: int) -> dict[str, Any]:
        order = db.session.get(Order, order_id) or abort(404)
        message = current_message()
        if message is None:
            abort(400, "shipping needs an X-Message-ID, so that it happens once")
        # A certified send: if this view fails and the request is retried, the same
        # shipment request (same derived id) is sent again and answered from the store.
        shipment = message.post(f"{app.config['SHIPPING_URL']}/shipments",
                                json={"order": order.id, "item": order.item})
        shipment.raise_for_status()
        order.tracking = shipment.json()["tracking"]
        db.session.commit()
        return order.as_json()

    return app
