"""The ASGI front end: exactly-once processing for Starlette, FastAPI and any ASGI app.

::

    from chttp_server.asgi import CertifiedMiddleware, current_message
    app.add_middleware(CertifiedMiddleware, engine=engine, sessions=Session)

See :mod:`chttp_server.asgi.middleware` for the flow and
:mod:`chttp_server.async_transaction` for how the one transaction core is driven from
the event loop.
"""

from __future__ import annotations

from chttp_server.asgi.context import AsyncCertifiedContext, current_message
from chttp_server.asgi.engines import make_async_engine
from chttp_server.asgi.middleware import CertifiedMiddleware, require_for_methods, user_scope

__all__ = [
    "AsyncCertifiedContext",
    "CertifiedMiddleware",
    "current_message",
    "make_async_engine",
    "require_for_methods",
    "user_scope",
]
