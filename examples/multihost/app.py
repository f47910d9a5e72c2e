"""The certified application every receiver host serves: one effect row per handler run.

``POST /effects`` inserts a row into ``mh_effects`` through the request's own
transaction (``req.chttp.connection``) and answers with a fresh random ``nonce``. The
nonce is what makes the history checkable: if the handler ever ran twice for one id and
both runs committed, there would be two rows; if an answer a client saw were lost, the
row holding its nonce would be missing. The table deliberately has no unique constraint
on the message id — it must be able to show a duplicate, not prevent it.
"""

from __future__ import annotations

import json
import os
import socket
import uuid
from typing import Any

import webob.exc
from sqlalchemy import text

from chttp_server import Request, Resource

__all__ = ["INSERT_EFFECT", "linger_seconds", "EffectsApp", "Effects", "EFFECTS_DDL", "HOST_ENV"]

#: The environment variable naming the host a receiver runs on (recorded with each effect).
HOST_ENV = "CHTTP_MH_HOST"

EFFECTS_DDL = (
    "CREATE TABLE IF NOT EXISTS mh_effects ("
    " id bigserial PRIMARY KEY,"
    " scope text NOT NULL,"
    " message_id text NOT NULL,"
    " nonce text NOT NULL,"
    " host text NOT NULL,"
    " payload text NOT NULL,"
    " created_at timestamptz NOT NULL DEFAULT clock_timestamp())"
)

INSERT_EFFECT = text(
    "INSERT INTO mh_effects (scope, message_id, nonce, host, payload) "
    "VALUES (:scope, :message_id, :nonce, :host, :payload)"
)


class Effects(Resource):
    """``POST``: write the effect row in the message's transaction, answer with its nonce."""

    def handle_post(self, req: Request) -> dict[str, Any]:
        context = req.chttp
        if context is None:
            raise webob.exc.HTTPBadRequest("POST /effects must be certified (send X-Message-ID)")
        nonce = uuid.uuid4().hex
        host = os.environ.get(HOST_ENV) or socket.gethostname()
        context.connection.execute(INSERT_EFFECT, {
            "scope": context.scope, "message_id": context.message_id, "nonce": nonce,
            "host": host, "payload": req.text,
        })
        # A request may ask the handler to linger inside its transaction, so that a fault
        # can be injected while it is certainly mid-request (visible in pg_stat_activity).
        linger = linger_seconds(req.text)
        if linger:
            context.connection.execute(text("SELECT pg_sleep(:seconds)"), {"seconds": linger})
        return {"message_id": context.message_id, "nonce": nonce, "host": host}


def linger_seconds(body: str) -> float:
    try:
        value = json.loads(body)
    except ValueError:
        return 0.0
    linger = value.get("linger", 0) if isinstance(value, dict) else 0
    return float(linger) if isinstance(linger, (int, float)) and 0 < linger <= 30 else 0.0


class EffectsApp(Resource):
    """The root: ``/effects`` is :class:`Effects`."""

    def child(self, segment: str) -> Resource | None:
        return Effects() if segment == "effects" else None
